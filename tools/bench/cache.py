"""What the feature cache costs on disk and how fast it is written and read, per stored dtype.

    python -m tools.bench.cache --out bench/cache                 # RN101 at 448 px: 196 locations x 512
    python -m tools.bench.cache --out bench/cache --images 5000   # a larger sample

For ``float16`` and ``int8`` (dense values as int8 with per-image, per-channel float16 scales):

``bytes``   one image and view on disk, and what whole datasets take (MS-COCO 2014's 123,287
            images, OpenImages' 9M) against the default ``train.cache.budget_gb``
``store``   images/s turning encoder output (float32) into the stored arrays: the cast, or the
            quantisation, and the write into the memory map (the encoder itself is not timed)
``read``    images/s of training batches (32 random rows, one fancy-indexed read each, as
            :class:`CachedFeatureDataset` gives them, int8 dequantised) from memory (the page
            cache warm) and from disk (the files' pages dropped first with ``posix_fadvise``),
            which is what a cache past its budget streams

Features are random (their values do not change these costs). Results: ``cache.json`` and
``cache.md`` in ``--out``; the sample's arrays are written under ``--out`` and removed after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptmlr.cache import (
    SCALE_FILE,
    CacheConfig,
    CachedFeatureDataset,
    FeatureCache,
    bytes_per_row,
    quantize,
)
from tools.bench.common import bench_command, device_info, write_report

DTYPES = ("float16", "int8")
DATASETS = {"MS-COCO 2014 (train + val)": 82_783 + 40_504, "OpenImages V6 (train)": 9_011_219}
READ_BATCH = 32


def store(folder: Path, dtype: str, images: int, locations: int, dims: int, batch: int) -> float:
    """Seconds to write ``images`` rows of random encoder output into fresh arrays, as a build does."""
    dense_out = np.lib.format.open_memmap(folder / "dense.npy", "w+", dtype, (1, images, locations, dims))
    global_out = np.lib.format.open_memmap(folder / "global.npy", "w+", "float16" if dtype == "int8" else dtype,
                                           (1, images, dims))
    scale_out = (np.lib.format.open_memmap(folder / SCALE_FILE, "w+", "float16", (1, images, dims))
                 if dtype == "int8" else None)
    generator = np.random.default_rng(0)
    elapsed = 0.0
    for start in range(0, images, batch):
        block = np.arange(start, min(start + batch, images))
        dense = generator.standard_normal((len(block), locations, dims), dtype=np.float32)
        pooled = dense.mean(axis=1)
        began = time.perf_counter()
        global_out[0, block] = pooled.astype(global_out.dtype)
        if scale_out is None:
            dense_out[0, block] = dense.astype(dense_out.dtype)
        else:
            dense_out[0, block], scale_out[0, block] = quantize(dense)
        elapsed += time.perf_counter() - began
    began = time.perf_counter()
    for array in (global_out, dense_out, scale_out):
        if array is not None:
            array.flush()
    return elapsed + time.perf_counter() - began


def drop_from_memory(folder: Path) -> None:
    """Evict the arrays' pages from the page cache (written back first), so reads come from disk."""
    for path in folder.glob("*.npy"):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def read(folder: Path, images: int, grid: tuple[int, int]) -> float:
    """Seconds to read every image once in shuffled training batches."""
    scale = folder / SCALE_FILE
    cache = FeatureCache(folder, np.load(folder / "global.npy", mmap_mode="r"),
                         np.load(folder / "dense.npy", mmap_mode="r"), grid,
                         np.load(scale, mmap_mode="r") if scale.is_file() else None)
    source = CachedFeatureDataset(cache)
    order = np.random.default_rng(1).permutation(images)
    began = time.perf_counter()
    for start in range(0, images, READ_BATCH):
        global_batch, dense_batch, _ = source.__getitems__(order[start:start + READ_BATCH].tolist())
        dense_batch.float()
    return time.perf_counter() - began


def measure(out: Path, images: int, grid: tuple[int, int], dims: int, batch: int, log=print) -> list[dict[str, Any]]:
    rows = []
    locations = grid[0] * grid[1]
    for dtype in DTYPES:
        folder = out / f"sample-{dtype}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            stored = store(folder, dtype, images, locations, dims, batch)
            drop_from_memory(folder)
            cold = read(folder, images, grid)
            warm = read(folder, images, grid)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        per_image = bytes_per_row(dims, locations, dtype)
        row = {"dtype": dtype, "bytes_per_image": per_image, "store_images_per_s": images / stored,
               "read_memory_images_per_s": images / warm, "read_disk_images_per_s": images / cold,
               "datasets_gib": {name: count * per_image / 2**30 for name, count in DATASETS.items()}}
        rows.append(row)
        log(f"{dtype}: {per_image:,} bytes/image; store {row['store_images_per_s']:.0f}, read from memory "
            f"{row['read_memory_images_per_s']:.0f}, from disk {row['read_disk_images_per_s']:.0f} images/s")
    return rows


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    budget = CacheConfig().budget_gb
    lines = [f"# The feature cache's cost per stored dtype: {report['device']['name']}", "",
             f"{settings['images']:,} images of {settings['grid'][0]}×{settings['grid'][1]} locations × "
             f"{settings['dims']} dims (RN101 at 448 px by default), one view; training batches of {READ_BATCH} "
             f"random rows.", "",
             "| dtype | bytes per image | store, images/s | read from memory, images/s | read from disk, images/s | "
             + " | ".join(f"{name}, GiB" for name in DATASETS) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in DATASETS) + " |"]
    for row in report["rows"]:
        sizes = " | ".join(f"{gib:,.1f}" for gib in row["datasets_gib"].values())
        lines.append(f"| {row['dtype']} | {row['bytes_per_image']:,} | {row['store_images_per_s']:,.0f} | "
                     f"{row['read_memory_images_per_s']:,.0f} | {row['read_disk_images_per_s']:,.0f} | {sizes} |")
    lines += ["", f"The default `train.cache.budget_gb` is {budget:g}: a cache larger than that is still built and "
              f"then read from disk every epoch (the last read column) instead of from memory.", "",
              f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--grid", type=int, nargs=2, default=(14, 14), metavar=("H", "W"))
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64, help="encoder batches written at a time")
    args = parser.parse_args(argv)
    for name in ("images", "dims", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if min(args.grid) < 1:
        parser.error(f"--grid must be at least 1 x 1, got {args.grid}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = measure(args.out, args.images, tuple(args.grid), args.dims, args.batch)
    report = {"device": device_info(torch.device("cpu")),
              "settings": {"images": args.images, "grid": list(args.grid), "dims": args.dims, "batch": args.batch},
              "rows": rows,
              "command": bench_command("cache", argv)}
    write_report(args.out, "cache", report, markdown)
    return report


if __name__ == "__main__":
    main()
