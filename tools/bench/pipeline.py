"""Data-pipeline benchmark: images/s from JPEG files to normalised batches, per worker count.

A ``DataLoader`` over the first ``count`` images of a VOC training split, batch 32, at each image
size, worker start-up included since every epoch pays it. Two transforms: the resize that builds
the feature cache (paid once per image), and the training augmentation with RandAugment and Cutout
that training from pixels pays every epoch (DualCoOp's ~215 images/s with 3 workers on an H100
machine is this column). Run through the speed benchmark's command line::

    python -m tools.bench.speed --data-only --data-root DIR --out bench/pipeline
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import DataLoader

from promptmlr.backbones.preprocess import PreprocessConfig, build_transform
from promptmlr.data import build_dataset
from tools.bench.common import RECIPE_BATCH, voc_splits_present, voc_training_split


def default_workers() -> list[int]:
    """0 (the main process), 1, DualCoOp's 3, and every core."""
    return sorted({0, 1, 3, os.cpu_count() or 1})


def pipeline_transforms(size: int) -> dict[str, Callable]:
    """The transform that builds the cache (resize only), and the training transform with
    RandAugment and Cutout that training from pixels pays every epoch, as DualCoOp's recipe does."""
    preprocess = PreprocessConfig(size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    return {"eval (cache)": build_transform(preprocess),
            "train (RandAugment, Cutout)": build_transform(preprocess, train=True, randaugment=True, cutout=True)}


def run_data_pipeline(data_root: Path, image_sizes: Sequence[int], workers: Sequence[int], count: int,
                      batch_size: int = RECIPE_BATCH, log=print) -> list[dict[str, Any]]:
    """Images/s from JPEG files to normalised batches through a ``DataLoader``, worker start-up
    included (an epoch pays it), for the first ``count`` images of the VOC training split."""
    dataset, split = _voc_training_images(data_root)
    dataset = dataset.subset(np.arange(min(count, len(dataset))))
    rows = []
    for size in image_sizes:
        for name, transform in pipeline_transforms(size).items():
            for worker_count in workers:
                loader = DataLoader(dataset.with_transform(transform), batch_size=batch_size,
                                    num_workers=worker_count)
                started = time.perf_counter()
                seen = sum(len(indices) for _, _, indices in loader)
                rate = seen / (time.perf_counter() - started)
                rows.append({"image_size": size, "transform": name, "workers": worker_count, "images": seen,
                             "split": split, "images_per_s": rate, "per_process": rate / max(worker_count, 1)})
                log(f"data pipeline {size}px {name}, {worker_count} workers: {rate:.1f} images/s")
    return rows


def _voc_training_images(data_root: Path):
    split = voc_training_split(data_root, voc_splits_present(data_root))
    return build_dataset("voc2007", data_root, split), split


def pipeline_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown section of the speed report on these rows."""
    lines = ["", f"## Data pipeline: JPEG to normalised batch ({rows[0]['images']} VOC `{rows[0]['split']}` images, "
             f"batch {RECIPE_BATCH}, worker start-up included)", "",
             "| px | transform | workers | images/s | per process |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['image_size']} | {row['transform']} | {row['workers']} | {row['images_per_s']:.1f} | "
                     f"{row['per_process']:.1f} |")
    return lines

