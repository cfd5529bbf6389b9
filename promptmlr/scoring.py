"""The one scoring path: a method's outputs for batches of frozen image features.

Training-time evaluation, ``evaluate``, ``predict``, zero-shot and label recovery all score through
:func:`method_outputs`, so they agree to the bit on the same features: the method in eval mode,
no gradients, every learnable prompt encoded once for the whole pass (not once per batch), each
batch under the run's autocast. Where the features come from is the caller's choice: the feature
cache, images encoded on the fly (:func:`dataset_batches`, :func:`image_batches`) or a list of
files read one by one (``predict``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from promptmlr.backbones.base import FrozenCLIP, ImageFeatures
from promptmlr.cache import encode
from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.metrics import sigmoid
from promptmlr.models.base import MethodOutput, MultiLabelMethod
from promptmlr.progress import progress_bar

FeatureBatch = tuple[ImageFeatures, torch.Tensor]  # features and the dataset rows they belong to
Autocast = Callable[[], ContextManager]
Gather = Callable[[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def method_outputs(method: MultiLabelMethod, batches: Iterable[FeatureBatch],
                   autocast: Autocast = contextlib.nullcontext, encoding: Autocast = contextlib.nullcontext
                   ) -> Iterator[tuple[MethodOutput, torch.Tensor]]:
    """``(output, rows)`` for each batch, scored as described in the module docstring. The prompts
    are encoded once, within ``encoding()`` (the engine times that as a phase of its own)."""
    method.eval()
    with contextlib.ExitStack() as prompts:
        with encoding():
            prompts.enter_context(method.fixed_prompts(autocast))
        for features, rows in batches:
            with autocast():
                output = method(features)
            yield output, rows


def collect(outputs: Iterable[tuple[MethodOutput, torch.Tensor]], extract: Callable[[MethodOutput], torch.Tensor],
            gather: Gather | None = None, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``extract(output)`` of every batch as one float32 array in row order, and the sorted rows.

    ``gather`` (accelerate's ``gather_for_metrics``) brings every process's batches together, so
    each process returns the whole split. ``rows``: the split's size, when known (the rows are then
    dataset rows below it, each seen once): every batch is written straight into one array of that
    size, so that the pass keeps nothing per batch (small arrays kept between each batch's large
    temporaries leave the heap fragmented: docs/scaling.md).
    """
    buffer, filled, parts, part_rows = None, None, [], []
    for output, indices in outputs:
        value = extract(output).float()
        indices = indices.to(value.device)
        if gather is not None:
            value, indices = gather((value, indices))
        value, indices = value.cpu().numpy(), indices.cpu().numpy()
        if rows is None:
            parts.append(value.copy())  # a copy: the logits are often a view of a larger output
            part_rows.append(indices)
            continue
        if buffer is None:
            buffer, filled = np.empty((rows, *value.shape[1:]), np.float32), np.zeros(rows, bool)
        buffer[indices] = value
        filled[indices] = True
    if buffer is not None:
        if not filled.all():
            raise ValueError(f"scored {int(filled.sum())} of the split's {rows} rows: rows must be the size of "
                             f"the split the batches cover")
        return buffer, np.arange(rows)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    order = np.argsort(np.concatenate(part_rows), kind="stable")
    return np.concatenate(parts)[order], np.concatenate(part_rows)[order]


def score(method: MultiLabelMethod, batches: Iterable[FeatureBatch], autocast: Autocast = contextlib.nullcontext,
          gather: Gather | None = None, progress: bool = True, logits: bool = False,
          total: int | None = None, encoding: Autocast = contextlib.nullcontext, rows: int | None = None
          ) -> np.ndarray:
    """Probabilities ``[N, C]`` (float64, computed from the logits) or, with ``logits``, the float32
    logits, in row order for every image in ``batches`` (``total`` batches, for the progress bar;
    ``encoding``: see :func:`method_outputs`; ``rows``: the split's size, see :func:`collect`)."""
    batches = progress_bar(batches, desc="scoring", total=total, leave=False, disable=not progress)
    values, _ = collect(method_outputs(method, batches, autocast, encoding), lambda output: output.logits, gather,
                        rows)
    return values if logits else sigmoid(values)


def dataset_batches(backbone: FrozenCLIP, dataset: MultiLabelDataset, batch_size: int = 128, num_workers: int = 2,
                    autocast: Autocast | None = None) -> Iterator[FeatureBatch]:
    """A dataset's images through the backbone's eval transform and encoder, batch by batch."""
    loader = DataLoader(dataset.with_transform(backbone.transform(train=False), draft_size=backbone.image_size),
                        batch_size=batch_size, num_workers=num_workers, pin_memory=torch.cuda.is_available())
    device = backbone.token_embedding.weight.device
    for images, _, rows in progress_bar(loader, desc=f"scoring {dataset.name}/{dataset.split}", leave=False):
        yield encode(backbone, images.to(device), autocast), rows


def image_batches(backbone: FrozenCLIP, images: torch.Tensor | Sequence[Image.Image],
                  batch_size: int = 64) -> Iterator[FeatureBatch]:
    """In-memory images (a normalised ``[N, 3, S, S]`` batch, or PIL images, which go through the
    backbone's eval transform), encoded batch by batch."""
    transform = backbone.transform(train=False)
    device = backbone.token_embedding.weight.device
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if not isinstance(chunk, torch.Tensor):
            chunk = torch.stack([transform(image.convert("RGB")) for image in chunk])
        yield encode(backbone, chunk.to(device)), torch.arange(start, start + len(chunk))
