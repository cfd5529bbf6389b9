"""The synthetic world (:mod:`promptmlr.data.world`) as a dataset: ``--dataset synthetic``.

Files are written by :func:`write_synthetic_dataset` (the custom CSV layout plus ``meta.json``)
and read back like any user's CSV data. Without ``--data-root`` the standard sandbox benchmark is
used: seed 0, 6,000 training and 4,000 test scenes at 128 px, kept under
``~/.cache/promptmlr/synthetic/`` and generated the first time it is needed (about a minute).
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import multiprocessing
import os
import signal
from pathlib import Path

from promptmlr.data.custom import build_csv
from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.registry import register_dataset
from promptmlr.data.textfiles import DatasetError
from promptmlr.data.world import (
    NUM_CLASSES,
    SYNTHETIC_CLASS_NAMES,
    TEST_INDEX_OFFSET,
    THEMES,
    Scene,
    SyntheticWorld,
    write_scene_files,
)
from promptmlr.errors import one_line
from promptmlr.files import atomic_directory, user_cache_dir
from promptmlr.migrations import header, upgrade
from promptmlr.progress import progress_bar

GENERATOR = "promptmlr.data.synthetic"  # meta.json's fixed mark of a folder written here: never change it
STANDARD = {"seed": 0, "n_train": 6000, "n_test": 4000, "image_size": 128}
CACHE_ROOT = user_cache_dir("synthetic")


def default_synthetic_root() -> Path:
    """The standard synthetic benchmark, generated atomically (temp folder, rename) if absent."""
    name = "seed{seed}-train{n_train}-test{n_test}-{image_size}px".format(**STANDARD)

    def build(folder: Path) -> None:
        print(f"generating the synthetic benchmark in {CACHE_ROOT / name} (first use only)...")
        # one process: a pool would re-run an unguarded user script (no `if __name__ == "__main__":`)
        write_synthetic_files(folder, **STANDARD)

    return atomic_directory(CACHE_ROOT / name, build)


@register_dataset("synthetic", splits=("train", "test"))
def build_synthetic(root: Path, split: str) -> MultiLabelDataset:
    """The synthetic world of coloured shapes (promptmlr data synth); full labels known."""
    read_meta(root)
    dataset = build_csv(root, split)
    dataset.name = "synthetic"
    return dataset


def read_meta(root: Path) -> dict:
    """A synthetic dataset's ``meta.json``: the world's seed, sizes and scene counts."""
    path = root / "meta.json"
    if not path.is_file():
        raise DatasetError(f"{root} holds no synthetic dataset (no meta.json); create one with "
                           f"`promptmlr data synth --out {root}` or leave out --data-root for the standard one")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: damaged, not JSON ({one_line(error)}); write the dataset again with "
                           "promptmlr data synth --out NEW_FOLDER") from None
    meta = upgrade("synthetic-dataset", meta, path, DatasetError)
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR:
        raise DatasetError(f"{path} was not written by promptmlr's synthetic generator")
    return meta


def synthetic_scenes(root: Path, split: str) -> list[Scene]:
    """The world's scenes behind a synthetic split, in its rows' order: where each object is and how
    large, which the labels do not say; diagnostics read them (``tools.bench.calibration`` splits a
    test mAP by object size). The split's rows are its scenes in index order (:func:`write_synthetic_files`)."""
    meta = read_meta(root)
    world = SyntheticWorld(meta["seed"], meta["image_size"], meta["max_objects"])
    count, offset = {"train": (meta["n_train"], 0), "test": (meta["n_test"], meta["test_index_offset"])}[split]
    return [world.scene(offset + index) for index in range(count)]


def write_synthetic_dataset(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0,
                            image_size: int = 128, workers: int = 1) -> Path:
    """Write a synthetic multi-label dataset to ``out_dir`` and return that path.

    Layout (the custom CSV format ``image,<class1>,...`` with 1 = present, -1 = absent)::

        out_dir/classes.txt            the 40 class names, one a line, in class-index order
        out_dir/train.csv, test.csv    header ``image,<class names...>``; rows ``train/000000.png,1,-1,...``
        out_dir/train/000000.png ...   RGB images, image_size x image_size
        out_dir/test/000000.png ...
        out_dir/meta.json              seed, image_size, counts, max_objects, index scheme, themes

    Train image i is ``SyntheticWorld(seed).scene(i)``; test image i is
    ``scene(TEST_INDEX_OFFSET + i)``: the same world, disjoint scenes. Labels are complete.

    Scenes are rendered by ``workers`` processes (a scene depends on its index alone, so the files
    are the same for any count).

    ``out_dir`` must be new or empty, so that no file of the user's (a ``train.csv`` of their own)
    is ever replaced. The files are written into a temporary folder beside it, renamed into place
    when complete: an interrupted run leaves no half dataset that reads as a whole one.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        names = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
        held = ("is a file" if not out.is_dir() else "already holds a synthetic dataset" if "meta.json" in names
                else f"is not empty (it holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
        raise DatasetError(f"--out {out} {held}; write the synthetic dataset to a new or empty folder, e.g. "
                           f"--out {out.parent / (out.name + '-synthetic')}")
    if min(n_train, n_test) < 1 or image_size < 32:
        raise DatasetError(f"a synthetic dataset needs at least 1 training and 1 test scene and images of at "
                           f"least 32 px (--n-train, --n-test, --image-size), got {n_train}, {n_test}, {image_size}")
    if workers < 1:
        raise DatasetError(f"--workers {workers}: a synthetic dataset is written by at least 1 process")
    return atomic_directory(out, lambda folder: write_synthetic_files(folder, n_train, n_test, seed, image_size,
                                                                      workers))


def default_workers() -> int:
    """Processes that render scenes when none are asked for: the cores this process may use, up to 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


SCENES_PER_TASK = 256  # a worker's share at a time: long enough to hide the pool's overhead, short for the bar


def write_synthetic_files(out: Path, n_train: int, n_test: int, seed: int, image_size: int, workers: int = 1) -> None:
    """The files of :func:`write_synthetic_dataset`, written straight into the folder ``out``
    (a temporary one: see there)."""
    (out / "classes.txt").write_text("\n".join(SYNTHETIC_CLASS_NAMES) + "\n")
    tasks_at_most = -(-max(n_train, n_test) // SCENES_PER_TASK)
    workers = min(workers, tasks_at_most)
    # spawned, not forked: a fork of a process whose PyTorch threads are running can hang; the workers
    # ignore Ctrl-C, which reaches the whole process group, so that only this process handles it
    pool = (concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                   initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
            if workers > 1 else None)
    try:
        for split, count, offset in (("train", n_train, 0), ("test", n_test, TEST_INDEX_OFFSET)):
            (out / split).mkdir(exist_ok=True)
            tasks = [(out, split, offset, start, min(start + SCENES_PER_TASK, count), seed, image_size)
                     for start in range(0, count, SCENES_PER_TASK)]
            chunks = pool.map(write_scene_files, *zip(*tasks)) if pool else map(write_scene_files, *zip(*tasks))
            with open(out / f"{split}.csv", "w", newline="") as handle, \
                    progress_bar(total=count, desc=f"writing synthetic {split} scenes", leave=False) as bar:
                writer = csv.writer(handle)
                writer.writerow(["image", *SYNTHETIC_CLASS_NAMES])
                for rows in chunks:  # in index order, whichever worker finished first
                    writer.writerows(rows)
                    bar.update(len(rows))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    meta = {**header("synthetic-dataset"), "generator": GENERATOR, "seed": seed, "image_size": image_size,
            "n_train": n_train, "n_test": n_test, "max_objects": SyntheticWorld(seed, image_size).max_objects,
            "num_classes": NUM_CLASSES, "test_index_offset": TEST_INDEX_OFFSET,
            "themes": {t.name: list(t.classes) for t in THEMES}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

