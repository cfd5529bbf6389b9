"""Loading one image file the same way everywhere: oriented, RGB, and named when it fails.

Every loader, ``data verify`` and every DataLoader worker reads pixels through :func:`load_image`:

* EXIF orientation is applied (``ImageOps.exif_transpose``): phone photos are stored sideways with
  an orientation tag, and a model shown the raw pixels learns from rotated images.
* Every mode becomes RGB. Grayscale (``1``, ``L``, 16-bit ``I;16``/``I`` scaled to 8 bits), CMYK,
  YCbCr and palette images are converted; images with transparency (``RGBA``, ``LA``, ``PA``,
  palette with a transparent colour) are *composited on white*, which is how a viewer shows them. A plain
  ``convert("RGB")`` would instead keep whatever colour the invisible pixels happen to store
  (often black), putting objects on a background nobody sees.
* Any failure raises :class:`ImageLoadError` naming the file and the reason, so a bad file in a
  dataset of 100,000 is found by name instead of through an opaque PIL trace.
* A JPEG whose scan data is damaged decodes without complaint in Pillow (libjpeg fills what it
  lost with grey and Pillow drops its warning). Where it matters, the entropy-coded data is also
  decoded by libjpeg-turbo through ``simplejpeg`` in strict mode, at 1/8 scale (the whole bitstream
  is still decoded; 0.25 ms against Pillow's 0.66 ms for a VOC image here): ``data verify`` reports
  such a file as corrupt (``damaged="error"``), building the feature cache and ``predict`` warn once
  per file and process (``"warn"``), and other reads skip the check (``"skip"``, the default: a
  loader without the cache would pay for it every epoch). libjpeg's "extraneous bytes before
  marker" is not counted: it is common in real collections and the image decodes whole.
"""

from __future__ import annotations

import os
import stat
import sys
import warnings
from pathlib import Path

from PIL import Image, ImageOps

try:  # a dependency, but promptmlr still imports on a platform without its wheel
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

from promptmlr.errors import PromptMLRError

WHITE = (255, 255, 255)
_PREFIX = "cannot load image "
_SEPARATOR = " — "
_ALPHA_MODES = ("RGBA", "LA", "PA")
LARGE_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # where Pillow would warn


class ImageLoadError(PromptMLRError, OSError):
    """An image file is missing, unreadable or corrupt; ``path`` and ``reason`` say which and why.

    PyTorch re-raises an exception from a DataLoader worker by calling its class with the worker's
    whole formatted traceback as the only argument. That case is recognised here and cut back to
    the original one-line message, so training stops with ``cannot load image <path> — <reason>``
    and the same ``path``/``reason`` attributes, never a trace from inside the worker.
    """

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None:  # rebuilt by torch.utils.data from a worker's traceback text
            path, reason = _parse_message(str(path))
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{_PREFIX}{self.path}{_SEPARATOR}{self.reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)

    def __str__(self) -> str:
        return f"{_PREFIX}{self.path}{_SEPARATOR}{self.reason}"


def _parse_message(text: str) -> tuple[str, str]:
    """Recover ``(path, reason)`` from a message that ends with this class's own one-line form."""
    last = text.rstrip().splitlines()[-1] if text.strip() else ""
    _, found, message = last.partition(_PREFIX)
    path, separator, reason = message.partition(_SEPARATOR)
    if found and separator:
        return path, reason
    return text, "unknown reason"


def load_image(path: str | Path, draft_size: int | None = None, damaged: str = "skip") -> Image.Image:
    """Decode ``path`` fully and return it upright and in RGB; raise :class:`ImageLoadError` if not.

    ``draft_size``: the side the caller resizes to. A JPEG whose short side is at least 4 times that
    is decoded at a reduced scale (libjpeg's DCT scaling, 1/2 to 1/8) that keeps at least twice
    ``draft_size``, so that random crops down to a quarter of the area are never upsampled and
    ordinary photos (COCO's 640 x 480 at 224 px) decode in full; a 12000 x 12000 photo
    costs megabytes instead of 430 MB. Pillow's DecompressionBombWarning for
    large images is replaced by one line per process; its error for absurd sizes still applies.
    ``damaged``: what a JPEG with damaged scan data does: ``skip`` the check, ``warn`` (once per file)
    or ``error``.
    """
    path = Path(path)
    try:
        _require_regular_file(path)
        if damaged == "error" or (damaged == "warn" and str(path) not in _SCANNED):
            _check_jpeg_scan(path, damaged)
            _SCANNED.add(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if draft_size and image.format == "JPEG" and min(image.size) >= 4 * draft_size:
                    original = image.size
                    image.draft("RGB", (2 * draft_size, 2 * draft_size))
                    _say_once("draft", f"note: decoding large JPEGs at reduced size (first: {path}, "
                                       f"{original[0]}x{original[1]} -> {image.size[0]}x{image.size[1]}, for "
                                       f"{draft_size} px)")
                elif image.width * image.height > LARGE_IMAGE_PIXELS:
                    _say_once("large", f"note: decoding a very large image in full: {path} ({image.width}x"
                                       f"{image.height}, ~{image.width * image.height * 3 / 2**20:.0f} MB); smaller "
                                       f"files load faster")
                image.load()  # decode every byte now: truncation shows here, not in a worker later
                image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a directory, not an image file") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file Pillow can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise ImageLoadError(path, f"corrupt or unreadable ({type(error).__name__}: {error})") from None


_SAID: set[str] = set()  # see _say_once
_SCANNED: set[str] = set()  # JPEGs checked (warn mode) by this process: once per file
_REGULAR: set[str] = set()  # paths seen to be regular files by this process: stat-ed once, not every epoch


def _require_regular_file(path: Path) -> None:
    """Refuse a pipe, socket or device given as an image: a FIFO would block the read forever, and
    a device (/dev/zero) would never end it. Directories pass (IsADirectoryError names them)."""
    if str(path) in _REGULAR:
        return
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ImageLoadError(path, "not a regular file (a pipe, socket or device); give an image file")
    if stat.S_ISREG(mode):
        _REGULAR.add(str(path))


def _check_jpeg_scan(path: Path, damaged: str) -> None:
    """Decode a JPEG's bitstream strictly (see the module docstring); files that are not JPEGs, and
    JPEGs libjpeg-turbo cannot read for other reasons, are left to Pillow."""
    if simplejpeg is None:
        return
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(b"\xff\xd8"):
        return
    try:
        simplejpeg.decode_jpeg(data, min_factor=8, strict=True)
    except ValueError as error:
        if "Corrupt JPEG data" not in str(error) or "extraneous bytes" in str(error):
            return
        if damaged == "error":
            raise ImageLoadError(path, f"damaged JPEG scan data ({error}); it would decode partly grey") from None
        _say_once(str(path), f"warning: {path}: damaged JPEG scan data ({error}); parts of it decode grey")


def _say_once(key: str, message: str) -> None:
    """Print ``message`` on stderr the first time this process meets ``key``."""
    if key not in _SAID:
        _SAID.add(key)
        print(message, file=sys.stderr)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white (see the module docstring)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grayscale (PNG, TIFF): map 0..65535 onto 0..255 instead of clipping at 255
        image = image.convert("I").point(lambda value: value / 257).convert("L")
    return image.convert("RGB")
