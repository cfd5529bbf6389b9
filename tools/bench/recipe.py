"""The VOC 2007 recipe end to end: the wall time of ``promptmlr.api.run`` as DualCoOp trains, per phase.

``promptmlr.api.run`` with the voc2007 config: trainval (5,011 images) for 50 epochs, RN101 at
448 px, the test set (4,952 images) evaluated after every epoch, JPEG decoding included, a fresh
feature cache. The wall time is split into the Trainer's phases (:data:`promptmlr.engine.PHASES`),
timed by a :class:`PhaseClock` hooked into the Trainer, and the rest. A scaled-down run (a few VOC
images and epochs) is extrapolated to the full recipe. Run through the speed benchmark's command
line::

    python -m tools.bench.speed --recipe voc2007 --data-root DIR --out bench/recipe [--recipe-images N]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from promptmlr.api import run
from promptmlr.config import parse_assignment, resolve_config
from promptmlr.data import build_dataset
from promptmlr.data.voc import VOC_CLASSES
from promptmlr.engine import PHASES as TRAINER_PHASES
from tools.bench.common import (
    RECIPE_BATCH,
    RECIPE_EPOCHS,
    REFERENCE,
    VOC_TEST_IMAGES,
    VOC_TRAIN_IMAGES,
    synchronize,
    voc_splits_present,
    voc_training_split,
)

# The report's rows besides "other", and the Trainer's phases the report leaves within "other"
PHASES = ("caching", "training", "evaluation", "evaluation prompts", "recovery")
IN_OTHER = ("checkpoint",)


class PhaseError(RuntimeError):
    """The Trainer's phases and the clock's disagree: a phase would be timed wrong or not at all."""


class PhaseClock:
    """Exclusive wall time per phase of a Trainer, as its hook (``hooks=[clock.phase]``): time in a
    nested phase counts for the inner phase only, and CUDA is synchronised as each phase ends.

    A phase is never silently left out. The clock refuses, when made, phases (the report's rows,
    ``phases``, and those it leaves in "other", ``in_other``) that are not exactly the Trainer's
    (:data:`promptmlr.engine.PHASES`); when a phase is reported, one the Trainer does not name; and,
    through :meth:`check`, a run that went through a phase it never reported.
    """

    def __init__(self, device: torch.device, phases: Iterable[str] = PHASES, in_other: Iterable[str] = IN_OTHER):
        known = set(phases) | set(in_other)
        unknown, untimed = sorted(known - set(TRAINER_PHASES)), sorted(set(TRAINER_PHASES) - known)
        if unknown or untimed:
            raise PhaseError(f"the clock's phases are not the Trainer's ({', '.join(TRAINER_PHASES)}: "
                             f"promptmlr.engine.PHASES): " + "; ".join(
                                 [f"the Trainer reports no {name!r}" for name in unknown]
                                 + [f"{name!r} is neither a row nor part of 'other'" for name in untimed]))
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.reported: set[str] = set()
        self._open: list[float] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """The hook: times phase ``name`` while the Trainer is in it."""
        if name not in TRAINER_PHASES:
            raise PhaseError(f"the Trainer reported phase {name!r}, which promptmlr.engine.PHASES does not name")
        self.reported.add(name)
        started = time.perf_counter()
        self._open.append(0.0)
        try:
            yield
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - started
            nested = self._open.pop()
            self.seconds[name] += elapsed - nested
            if self._open:
                self._open[-1] += elapsed

    def check(self, reached: Iterable[str]) -> None:
        """Refuse a run that reached phases (``reached``) without reporting them to the clock."""
        missing = [name for name in TRAINER_PHASES if name in set(reached) - self.reported]
        if missing:
            raise PhaseError(f"the run went through {', '.join(map(repr, missing))} but the Trainer never reported "
                             f"it to its hooks, so its time would count as 'other'")


def reached_phases(history: list[dict]) -> set[str]:
    """The phases a run with this history went through: the caches and the evaluation always; the
    evaluation prompts' encoding when a split was scored; training and checkpoints when it trained;
    recovery when it recovered labels."""
    reached = {"caching", "evaluation"}
    if any(key.startswith(("val_", "test_")) for record in history for key in record):
        reached.add("evaluation prompts")
    if any("train_loss" in record for record in history):
        reached |= {"training", "checkpoint"}
    if any("recovery" in record for record in history):
        reached.add("recovery")
    return reached


def _voc_ids_and_labels(root: Path, split: str) -> tuple[list[str], np.ndarray, Path]:
    dataset = build_dataset("voc2007", root, split, difficult="ignore")  # keep 0 (difficult) as the files say
    return [path.stem for path in dataset.image_paths], dataset.labels, dataset.image_paths[0].parent


def prepare_recipe_data(data_root: Path, out: Path, images: int | None) -> tuple[Path, dict[str, Any]]:
    """The VOC root to train on and what it holds: ``data_root`` itself for the full recipe, or a
    scaled-down VOCdevkit under ``out`` (lists only; the JPEGs are linked, not copied)."""
    present = voc_splits_present(data_root)
    if images is None:
        if not {"trainval", "test"} <= set(present):
            raise SystemExit(f"speed.py: error: the full recipe needs VOC 2007 trainval and test under {data_root} "
                             f"(found: {', '.join(present) or 'no split'}); pass --recipe-images N (and "
                             f"--recipe-epochs E) to run a scaled-down version on what is there")
        return Path(data_root), {"train_images": VOC_TRAIN_IMAGES, "test_images": VOC_TEST_IMAGES,
                                 "scaled_down": False, "test_source": "test"}
    source = voc_training_split(data_root, present)
    ids, labels, jpeg_dir = _voc_ids_and_labels(Path(data_root), source)
    test_count = max(1, round(images * VOC_TEST_IMAGES / VOC_TRAIN_IMAGES))
    if "test" in present:
        test_ids, test_labels, _ = _voc_ids_and_labels(Path(data_root), "test")
        test_ids, test_labels, test_source = test_ids[:test_count], test_labels[:test_count], "test"
    else:  # stand-in: the next images of the training split, disjoint from those trained on
        if images + test_count > len(ids):
            raise SystemExit(f"speed.py: error: --recipe-images {images} plus {test_count} stand-in test images "
                             f"exceed the {len(ids)} images of {source}")
        test_ids, test_labels = ids[images:images + test_count], labels[images:images + test_count]
        test_source = f"{source} (images {images + 1}-{images + test_count}; there is no test split here)"
    if images > len(ids):
        raise SystemExit(f"speed.py: error: --recipe-images {images} exceeds the {len(ids)} images of {source}")
    root = out / "recipe-data" / "VOC2007"
    if root.parent.exists():
        shutil.rmtree(root.parent)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").symlink_to(jpeg_dir.resolve(), target_is_directory=True)
    for split, split_ids, split_labels in (("trainval", ids[:images], labels[:images]),
                                           ("test", test_ids, test_labels)):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        for column, name in enumerate(VOC_CLASSES):
            rows = "".join(f"{i} {int(v):2d}\n" for i, v in zip(split_ids, split_labels[:, column]))
            (root / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text(rows)
    return root, {"train_images": images, "test_images": len(test_ids), "scaled_down": True,
                  "train_source": source, "test_source": test_source}


def run_recipe(args: argparse.Namespace, device: torch.device, log=print) -> dict[str, Any]:
    if args.recipe != "voc2007":
        raise SystemExit(f"speed.py: error: unknown recipe {args.recipe!r}; known: voc2007")
    if args.data_root is None:
        raise SystemExit("speed.py: error: --recipe voc2007 needs --data-root (a VOCdevkit)")
    out = args.out
    root, data = prepare_recipe_data(args.data_root, out, args.recipe_images)
    epochs = args.recipe_epochs or RECIPE_EPOCHS
    run_dir, cache_dir = out / "recipe-run", out / "recipe-cache"
    for folder in (run_dir, cache_dir):  # a fresh run and a cold cache, or the timing means nothing
        if folder.exists():
            shutil.rmtree(folder)
    overrides = [
        {"data": {"root": str(root), "val_fraction": 0.0}},  # DualCoOp trains on all of trainval...
        {"model": {"backbone": args.recipe_backbone, "method": args.recipe_method, "image_size": 448}},
        {"train": {"epochs": epochs, "batch_size": RECIPE_BATCH, "select_on": "test",  # ...and picks on test
                   "cache": {"directory": str(cache_dir)}}},
        *(parse_assignment(text) for text in args.set),
    ]
    config = resolve_config("voc2007", None, overrides)
    clock = PhaseClock(device)
    log(f"recipe voc2007: {data['train_images']} train / {data['test_images']} test images, {_epochs(epochs)}, "
        f"{config.model.method} on {config.model.backbone} at {config.model.image_size}px, batch "
        f"{config.train.batch_size}, {_precision(config.train.mixed_precision)}, "
        f"{config.train.num_workers} data workers")
    started = time.perf_counter()
    result = run(config, run_dir, log=log, hooks=[clock.phase])
    wall = time.perf_counter() - started
    clock.check(reached_phases(result.metrics["history"]))
    phases = {phase: clock.seconds.get(phase, 0.0) for phase in PHASES}
    phases["other"] = max(0.0, wall - sum(phases.values()))
    metrics = result.metrics
    report = {
        "recipe": "voc2007", "data_root": str(args.data_root), "data": data, "epochs": epochs,
        "method": config.model.method, "backbone": config.model.backbone, "image_size": config.model.image_size,
        "batch_size": config.train.batch_size, "eval_batch_size": config.train.eval_batch_size,
        "precision": _precision(config.train.mixed_precision),
        "num_workers": config.train.num_workers, "cache": config.train.cache.enabled,
        "overrides": list(args.set), "wall_seconds": wall, "phases_seconds": phases,
        "phase_source": "the Trainer's phase hooks (promptmlr.engine.PHASES): caching (the loaders, building or "
                        "opening the feature caches), training (each epoch), evaluation (val and test after each "
                        "epoch, and the final test scores), evaluation prompts (the prompts' encoding before each "
                        "scoring pass, taken out of evaluation and recovery) and recovery; other = backbone "
                        "loading, data lists, checkpoints, exports",
        "tune_total_seconds": metrics.get("total_seconds"), "tune_train_seconds": metrics.get("train_seconds"),
        "train_images_per_s": (epochs * data["train_images"] / phases["training"]) if phases["training"] else None,
        "test_mAP": metrics["best"].get("test_mAP"),
    }
    if data["scaled_down"]:
        report["extrapolated_full_recipe_seconds"] = extrapolate(report)
    full = report.get("extrapolated_full_recipe_seconds") or (None if data["scaled_down"] else wall)
    if device.type == "cuda" and full:
        report["speedup_vs_dualcoop"] = REFERENCE["dualcoop_voc2007_50_epochs_seconds"] / full
    if not args.keep_cache:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return report


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def _precision(mixed_precision: str) -> str:
    return "fp32" if mixed_precision == "no" else f"{mixed_precision} (autocast)"


def extrapolate(report: dict[str, Any]) -> float:
    """The full recipe's seconds from a scaled-down run. Caching, evaluation and recovery scale with
    the images they see, the prompts' encoding before each evaluation pass with the passes;
    training scales with its number of batches, since a training step's cost with the cache is
    mostly the prompts' pass through the text encoder, paid once per batch (full batches are
    assumed: take ``--recipe-images`` of a few batches); the rest (loading, checkpoints, exports)
    is kept."""
    data, phases, epochs = report["data"], report["phases_seconds"], report["epochs"]
    train, test, batch = data["train_images"], data["test_images"], report["batch_size"]
    train_batches = math.ceil(VOC_TRAIN_IMAGES / batch) * RECIPE_EPOCHS / (math.ceil(train / batch) * epochs)
    return (phases["caching"] * (VOC_TRAIN_IMAGES + VOC_TEST_IMAGES) / (train + test)
            + phases["training"] * train_batches
            + phases["evaluation"] * VOC_TEST_IMAGES * (RECIPE_EPOCHS + 1) / (test * (epochs + 1))  # + final scores
            + phases.get("evaluation prompts", 0.0) * (RECIPE_EPOCHS + 1) / (epochs + 1)  # once per pass
            + phases["recovery"] * VOC_TRAIN_IMAGES * RECIPE_EPOCHS / (train * epochs)
            + phases["other"])


def recipe_markdown(report: dict[str, Any], device: dict[str, Any]) -> str:
    data = report["data"]
    scale = "scaled down" if data["scaled_down"] else "full"
    lines = [f"# VOC 2007 recipe ({scale}) on {device['name']} ({device['type']})", "",
             f"{report['method']} on {report['backbone']} at {report['image_size']} px, batch {report['batch_size']}, "
             f"{report['precision']}, {report['num_workers']} data workers; {data['train_images']:,} "
             f"training images (all labels of trainval, selection on test), {data['test_images']:,} test images "
             f"evaluated after every epoch ({_epochs(report['epochs'])}); JPEG decoding included; "
             + ("no feature cache: the encoder sees every image every epoch, as DualCoOp trains." if
                report["cache"] == "off" else "a cold feature cache."), ""]
    if data["scaled_down"]:
        lines += [f"Training images from `{data['train_source']}`, test images from `{data['test_source']}`.", ""]
    lines += ["| phase | seconds | share |", "| --- | --- | --- |"]
    wall = report["wall_seconds"]
    for phase, seconds in report["phases_seconds"].items():
        lines.append(f"| {phase} | {seconds:.1f} | {seconds / wall:.0%} |")
    lines.append(f"| **total (wall)** | **{wall:.1f}** | |")
    lines.append("")
    if report.get("train_images_per_s"):
        lines.append(f"Training throughput: {report['train_images_per_s']:.1f} images/s over the epochs.")
    if data["scaled_down"]:
        if data["train_images"] < 2 * report["batch_size"]:
            lines.append(f"Fewer than two batches of training images: the extrapolation below assumes a full batch "
                         f"costs what this one did; take --recipe-images {2 * report['batch_size']} or more.")
        lines.append(f"Extrapolated to the full recipe ({VOC_TRAIN_IMAGES:,} + {VOC_TEST_IMAGES:,} images, "
                     f"{RECIPE_EPOCHS} epochs): {report['extrapolated_full_recipe_seconds']:.0f} s "
                     f"({report['extrapolated_full_recipe_seconds'] / 60:.1f} min).")
    if "speedup_vs_dualcoop" in report:
        lines.append(f"DualCoOp's 50-epoch run takes ~24 min on an H100: {report['speedup_vs_dualcoop']:.1f}× "
                     f"faster here (target {REFERENCE['target_speedup']}×).")
    lines.append(f"Phases: {report['phase_source']}.")
    return "\n".join(lines) + "\n"
