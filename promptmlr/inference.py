"""Label new images with learned prompts, and draw where each predicted label was found.

One unreadable image never stops the others: it is reported with its path and reason, and the
caller's exit status says that something failed. A heatmap that cannot be written (a read-only
folder, a full disk) does not stop them either: the image keeps its labels, and a warning line
names it and the reason.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from promptmlr.cache import encode
from promptmlr.data.images import ImageLoadError, load_image
from promptmlr.errors import UsageError
from promptmlr.files import NAME_MAX, atomic_write, shorten_name
from promptmlr.metrics import logit, sigmoid
from promptmlr.models import MultiLabelMethod
from promptmlr.scoring import FeatureBatch, method_outputs

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HEATMAP_ALPHA = 0.55


@dataclass
class Prediction:
    image: Path
    labels: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), most probable first
    probabilities: dict[str, float] = field(default_factory=dict)
    logits: dict[str, float] = field(default_factory=dict, repr=False)  # the raw scores; as_dict leaves them out
    error: str | None = None
    heatmap: Path | None = None
    heatmap_error: str | None = None  # why a heatmap asked for was not written; the labels stand

    def as_dict(self) -> dict:
        record = {"image": str(self.image), "labels": [{"class": c, "probability": p} for c, p in self.labels],
                  "probabilities": self.probabilities, "error": self.error,
                  "heatmap": str(self.heatmap) if self.heatmap else None}
        return {**record, "heatmap_error": self.heatmap_error} if self.heatmap_error else record


def expand_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the image files inside any directory (sorted, recursively)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(item)
    return paths


def choose_labels(logits: np.ndarray, class_names: Sequence[str], threshold: float | Sequence[float] | None,
                  top_k: int | None) -> list[tuple[str, float]]:
    """Labels whose probability reaches the (per-class) threshold, or the ``top_k`` most probable,
    most probable first, with their probabilities. Ordered and thresholded on the logits, which
    float32 probabilities would tie at 1.0 (see :func:`promptmlr.metrics.evaluate`)."""
    order = np.argsort(-logits, kind="stable")
    if top_k is not None:
        chosen = order[:top_k]
    else:
        cut = np.broadcast_to(logit(threshold if threshold is not None else 0.5), logits.shape)
        chosen = [i for i in order if logits[i] >= cut[i]]
    probabilities = sigmoid(logits)
    return [(class_names[i], float(probabilities[i])) for i in chosen]


def predict_images(method: MultiLabelMethod, images: Sequence[Path], threshold: float | Sequence[float] | None = None,
                   top_k: int | None = None, heatmap_dir: Path | None = None, batch_size: int = 32) -> list[Prediction]:
    """Predictions for each image path, in order; unreadable images carry an ``error``. Scored
    through :func:`promptmlr.scoring.method_outputs`, like every other evaluation."""
    predictions = [Prediction(Path(path)) for path in images]
    if heatmap_dir is not None and Path(heatmap_dir).exists() and not Path(heatmap_dir).is_dir():
        raise UsageError(f"--heatmaps {heatmap_dir} is a file; name a folder for the heatmaps")
    opened: dict[int, Image.Image] = {}  # the current batch's images, kept for their heatmaps
    for output, rows in method_outputs(method, _readable_batches(method, predictions, opened, batch_size)):
        logits = output.logits.float().cpu().numpy()
        maps = output.attention_maps()
        for position, row in enumerate(rows.tolist()):
            prediction, image = predictions[row], opened.pop(row)
            record_scores(prediction, logits[position], method.class_names, threshold, top_k)
            if heatmap_dir is not None and maps is not None and prediction.labels:
                heat = maps[position].float().cpu().numpy()
                target = Path(heatmap_dir) / heatmap_name(prediction.image)
                try:
                    prediction.heatmap = write_heatmap(image, heat, method.class_names, prediction.labels, target)
                except OSError as error:  # this heatmap only: the image keeps its labels, the others go on
                    prediction.heatmap_error = f"heatmap not written to {target}: {error.strerror or error}"
                    print(f"warning: {prediction.image}: {prediction.heatmap_error}", file=sys.stderr)
    return predictions


def record_scores(prediction: Prediction, logits: np.ndarray, class_names: Sequence[str],
                  threshold: float | Sequence[float] | None, top_k: int | None) -> None:
    """Set one image's logits, probabilities and labels from its logits ``[C]``."""
    prediction.logits = dict(zip(class_names, map(float, logits)))
    prediction.probabilities = dict(zip(class_names, map(float, sigmoid(logits))))
    prediction.labels = choose_labels(logits, class_names, threshold, top_k)


def image_batches(predictions: list[Prediction], batch_size: int, draft_size: int
                  ) -> Iterator[tuple[list[int], list[Image.Image]]]:
    """``(rows, images)`` for each batch of ``batch_size`` predictions: the images that load, upright
    and in RGB (see :func:`load_image`), and their rows; the others get their error and are skipped."""
    for start in range(0, len(predictions), batch_size):
        rows, images = [], []
        for row in range(start, min(start + batch_size, len(predictions))):
            try:
                images.append(load_image(predictions[row].image, draft_size=draft_size, damaged="warn"))
                rows.append(row)
            except ImageLoadError as error:
                predictions[row].error = str(error)
        if rows:
            yield rows, images


def _readable_batches(method: MultiLabelMethod, predictions: list[Prediction], opened: dict[int, Image.Image],
                      batch_size: int) -> Iterator[FeatureBatch]:
    """Encoded batches of the images that load, each image kept in ``opened`` for its heatmap."""
    transform = method.backbone.transform(train=False)
    device = method.backbone.token_embedding.weight.device
    for rows, images in image_batches(predictions, batch_size, draft_size=method.backbone.image_size):
        opened.update(zip(rows, images))
        pixels = torch.stack([transform(image) for image in images]).to(device)
        yield encode(method.backbone, pixels), torch.tensor(rows)


def heatmap_name(image: Path) -> str:
    """``<stem>-<8 hex digits of the absolute path>.png``: ``a/x.jpg`` and ``b/x.png`` get two files,
    and an image gets the same name in every run, whatever else is predicted with it. A stem too
    long for a file name (a legal 250-byte image name plus the suffix is not one) is cut; the digest
    of the whole path keeps the name apart from others."""
    digest = hashlib.sha256(str(Path(image).resolve()).encode()).hexdigest()[:8]
    suffix = f"-{digest}.png"
    return shorten_name(Path(image).stem, NAME_MAX - len(suffix)) + suffix


def colorize(heat: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> RGB uint8 on a blue-to-red ramp."""
    heat = np.clip(heat, 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4 * heat - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * heat - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * heat - 1), 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def write_heatmap(image: Image.Image, maps: np.ndarray, class_names: Sequence[str],
                  labels: Sequence[tuple[str, float]], path: Path, panel: int = 224) -> Path:
    """One PNG: the image, then one panel per predicted label with its attention map overlaid."""
    base = image.convert("RGB").resize((panel, panel), Image.BICUBIC)
    panels = [base]
    for name, probability in labels:
        heat = maps[class_names.index(name)]
        heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
        heat_image = Image.fromarray(colorize(heat)).resize((panel, panel), Image.BILINEAR)
        overlay = Image.blend(base, heat_image, HEATMAP_ALPHA)
        ImageDraw.Draw(overlay).text((4, 4), f"{name} {probability:.2f}", fill=(255, 255, 255))
        panels.append(overlay)
    sheet = Image.new("RGB", (panel * len(panels), panel))
    for index, part in enumerate(panels):
        sheet.paste(part, (index * panel, 0))
    return atomic_write(path, lambda temp: sheet.save(temp, format="PNG"))
