"""Image loading: EXIF orientation, every mode to RGB, and bad files named (also from DataLoader workers)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from promptmlr.data import ImageLoadError, MultiLabelDataset, load_image

RED, BLUE = (255, 0, 0), (0, 0, 255)
ORIENTATION = 0x0112


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))  # stored: red left half
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "sideways.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    top, bottom = np.asarray(loaded)[2, 10], np.asarray(loaded)[37, 10]
    assert top[0] > 200 and top[2] < 60  # the red half is on top once upright
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode, color, suffix, expected", [
    ("L", 128, ".png", (128, 128, 128)),
    ("1", 1, ".png", (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), ".jpg", (255, 0, 0)),
    ("CMYK", (255, 0, 255, 0), ".tif", (0, 255, 0)),
    ("I;16", 65535, ".png", (255, 255, 255)),
    ("RGBA", (10, 20, 30, 255), ".png", (10, 20, 30)),
    ("RGBA", (10, 20, 30, 0), ".png", (255, 255, 255)),  # fully transparent -> white, not the hidden colour
    ("LA", (0, 128), ".png", (127, 127, 127)),  # half-transparent black on white
])
def test_every_mode_becomes_rgb(tmp_path, make_image, mode, color, suffix, expected):
    path = make_image(tmp_path / f"image{suffix}", size=(8, 8), color=color, mode=mode)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (8, 8)
    np.testing.assert_allclose(np.asarray(loaded)[4, 4], expected, atol=3)


def test_palette_images_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0, 0, 0] * 254)
    palette.save(tmp_path / "opaque.png")
    palette.save(tmp_path / "transparent.png", transparency=1)
    assert np.asarray(load_image(tmp_path / "opaque.png"))[0, 0].tolist() == [200, 10, 10]
    assert np.asarray(load_image(tmp_path / "transparent.png"))[0, 0].tolist() == [255, 255, 255]


def test_truncated_image_is_named(tmp_path, make_image):
    path = make_image(tmp_path / "broken.jpg", size=(64, 64), color=(9, 99, 199))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageLoadError) as error:
        load_image(path)
    assert error.value.path == str(path)
    assert str(path) in str(error.value) and "corrupt" in error.value.reason


@pytest.mark.parametrize("content, reason", [(None, "file not found"), (b"not an image", "not an image file")])
def test_missing_and_non_image_files_are_named(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason) as error:
        load_image(path)
    assert error.value.path == str(path)


def test_error_survives_pickling_and_rebuilding_from_worker_text(tmp_path):
    original = ImageLoadError(tmp_path / "a b.jpg", "corrupt or unreadable (OSError: truncated)")
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.path, copy.reason) == (original.path, original.reason)
    worker_text = ("Caught ImageLoadError in DataLoader worker process 1.\n"
                   "Original Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                   "promptmlr.data.images.ImageLoadError: " + str(original) + "\n")
    rebuilt = ImageLoadError(worker_text)
    assert (rebuilt.path, rebuilt.reason) == (original.path, original.reason)
    assert str(rebuilt) == str(original)


def test_dataloader_worker_failure_names_the_file(tmp_path, make_image):
    paths = [make_image(tmp_path / f"{i}.png", size=(8, 8)) for i in range(4)]
    paths[2].write_bytes(paths[2].read_bytes()[:40])
    dataset = MultiLabelDataset("toy", "train", ["a"], paths, np.ones((4, 1)),
                                transform=lambda image: torch.from_numpy(np.asarray(image).copy()))
    error = first_error(DataLoader(dataset, batch_size=1, num_workers=2))
    assert isinstance(error, ImageLoadError) and error.path == str(paths[2])
    assert str(error).startswith(f"cannot load image {paths[2]}")
    assert "Traceback" not in str(error)


def first_error(loader: DataLoader) -> Exception | None:
    """Iterate ``loader`` and return what it raised, dropping the traceback so that the worker
    processes shut down now rather than whenever a kept traceback is collected."""
    try:
        for _ in loader:
            pass
    except Exception as error:  # noqa: BLE001 - the test inspects whatever comes out
        error.__traceback__ = None
        return error
    return None
