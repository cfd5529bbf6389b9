#!/usr/bin/env python3
"""Speed benchmark: throughput of the frozen encoder, of training with and without the feature
cache, and of prediction; and the wall time of the standard VOC 2007 recipe end to end.

Micro-benchmarks (default), on random inputs and random weights (``openclip:<arch>``)::

    python tools/bench/speed.py --out bench/speed                   # RN101, ViT-B-16 at 224/448 px
    python tools/bench/speed.py --out bench/speed --quick           # a tiny run (seconds to a minute)

For every backbone × resolution × batch size × precision they time, in images/s:

``extract``         ``encode_image`` under ``no_grad`` (building the feature cache)
``train_cached``    one optimiser step of a method on cached features: the method's forward (its
                    prompts through the frozen text encoder, as in training), loss, backward, step
``train_uncached``  the same step with the encoder run on the images first (``no_grad``), i.e.
                    training without the cache, as DualCoOp trains
``predict``         encoder + method forward under ``no_grad`` (prediction from pixels)
``predict_cached``  method forward on cached features (the per-epoch evaluation with the cache)

Both prediction columns run with the prompts encoded once beforehand (``fixed_prompts``), as
evaluation and ``promptmlr predict`` do: over a whole split that one text-encoder pass is noise.

Warm-up iterations are run first and not timed; CUDA is synchronised around the timed loop.
Peak memory is ``torch.cuda.max_memory_allocated`` per configuration on a GPU; on the CPU it is
the process's peak resident set size (``resource.getrusage``), which only grows, so a row shows
the largest footprint of that configuration and every one before it. Data loading is not part
of these numbers; the recipe below includes it.

The recipe (``--recipe voc2007 --data-root DIR``) runs ``promptmlr.api.run`` with the
voc2007 config as DualCoOp trains it: trainval (5,011 images) for 50 epochs, RN101 at 448 px,
the test set (4,952 images) evaluated after every epoch, JPEG decoding included, a fresh feature
cache; it reports the wall time split into caching, training, evaluation and the rest. That
needs the full VOC 2007 (a GPU machine, really); ``--recipe-images N --recipe-epochs E`` runs a
scaled-down version on whatever VOC split is there (test images stand in from the training split
if there is no test split) and extrapolates it to the full recipe.

Results go to ``--out`` as ``speed.json``/``speed.md`` (micro-benchmarks) or
``recipe.json``/``recipe.md`` (recipe), each naming the device.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import platform
import resource
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from promptmlr import __version__
from promptmlr.backbones import ImageFeatures, create_backbone
from promptmlr.data.voc import VOC_CLASSES, VOC_SPLITS, find_voc_year_dir
from promptmlr.files import write_json_atomic, write_text_atomic
from promptmlr.losses import LossConfig, build_loss
from promptmlr.models import build_method

ARCHS = ("RN101", "ViT-B-16")
IMAGE_SIZES = (224, 448)
BATCH_SIZES = {"cpu": (1, 8, 32, 64), "cuda": (1, 8, 32, 64, 128, 256)}
PRECISIONS = ("fp32", "bf16")
METHODS = ("dualcoop", "promptmlr")
QUICK = {"archs": ("RN101",), "image_sizes": (224,), "batch_sizes": (2,), "precisions": ("fp32",),
         "methods": ("dualcoop",), "warmup": 1, "iters": 1}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# The VOC 2007 recipe and the reference it is compared with (issue #7): DualCoOp on one H100,
# fp16, batch 32: training step ~570 images/s, data pipeline ~215 images/s, 50 epochs ~24 min;
# the RN101 encoder alone ~1,600 images/s at 448 px.
VOC_TRAIN_IMAGES, VOC_TEST_IMAGES, RECIPE_EPOCHS, RECIPE_BATCH = 5011, 4952, 50, 32
REFERENCE = {"dualcoop_voc2007_50_epochs_seconds": 24 * 60, "dualcoop_train_step_images_per_s": 570,
             "dualcoop_data_pipeline_images_per_s": 215, "rn101_448_encoder_images_per_s": 1600,
             "device": "NVIDIA H100, fp16, batch 32", "target_speedup": 20}
PHASES = ("caching", "training", "evaluation", "evaluation prompts", "recovery")


# ------------------------------------------------------------------------------------------ device
def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("speed.py: error: --device cuda but no CUDA device is available")
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (platform's guess elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info(device: torch.device) -> dict[str, Any]:
    info = {"type": device.type, "name": device_name(device), "torch": torch.__version__,
            "promptmlr": __version__, "python": platform.python_version()}
    if device.type == "cpu":
        info.update({"threads": torch.get_num_threads(), "logical_cpus": os.cpu_count()})
    else:
        info.update({"cuda": torch.version.cuda, "memory_gib": round(
            torch.cuda.get_device_properties(device).total_memory / 2**30, 1)})
    return info


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated per configuration (tensors only; MiB)"
    return ("peak resident set size of the process so far (resource.getrusage ru_maxrss; only grows, so it "
            "covers this configuration and every earlier one; MiB)")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """A fresh autocast context for ``precision`` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


# --------------------------------------------------------------------------------- micro-benchmarks
def images_per_second(step: Callable[[], Any], batch_size: int, warmup: int, iters: int,
                      device: torch.device) -> float:
    """Throughput of ``step`` (one batch), warm-up calls excluded."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return batch_size * iters / max(time.perf_counter() - started, 1e-9)


def interleaved_seconds(steps: dict[Any, Callable[[], Any]], warmup: int, rounds: int,
                        device: torch.device, log: Callable[[str], None] | None = None) -> dict[Any, list[float]]:
    """Seconds per call of every step, all steps once per round in turn, so that a neighbour's load on
    shared cores hits all of them alike (their ratios are the point); warm-up rounds dropped."""
    seconds: dict[Any, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + rounds):
        for name, step in steps.items():
            synchronize(device)
            started = time.perf_counter()
            step()
            synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - started)
        if log is not None and round_index >= warmup:
            log(f"round {round_index - warmup + 1}/{rounds}: " +
                ", ".join(f"{name} {times[-1]:.2f} s" for name, times in seconds.items()))
    return seconds


def backbone_spec(arch: str) -> str:
    """``RN101`` -> ``openclip:RN101`` (random weights); a full spec is kept as it is."""
    return arch if ":" in arch else f"openclip:{arch}"


def class_names(count: int) -> list[str]:
    return list(VOC_CLASSES[:count]) + [f"object {i}" for i in range(len(VOC_CLASSES), count)]


class MethodSteps:
    """The timed steps of one method on one backbone, batch and precision."""

    def __init__(self, method_name: str, backbone, classes: list[str], images: torch.Tensor,
                 features: ImageFeatures, device: torch.device, precision: str,
                 options: dict[str, Any] | None = None):
        torch.manual_seed(0)
        self.method = build_method(method_name, backbone, classes, **(options or {})).to(device)
        self.parameters = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=1e-4) if self.parameters else None
        self.loss_fn = build_loss(LossConfig())
        self.backbone, self.images, self.features = backbone, images, features
        self.device, self.precision = device, precision
        generator = torch.Generator().manual_seed(0)
        self.targets = (torch.randint(0, 2, (images.shape[0], len(classes)), generator=generator) * 2 - 1).float()
        self.targets = self.targets.to(device)

    def _step(self, features: ImageFeatures) -> None:
        self.method.train()
        with autocast(self.device, self.precision):
            output = self.method(features)
            loss = self.loss_fn(output.logits.float(), self.targets)
            loss = loss + sum(self.method.auxiliary_losses(output, self.targets, self.loss_fn).values())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_cached(self) -> None:
        self._step(self.features)

    def train_uncached(self) -> None:
        with torch.no_grad(), autocast(self.device, self.precision):
            features = self.backbone.encode_image(self.images)
        self._step(ImageFeatures(features.global_features.float(), features.dense_features.float(), features.grid))

    @torch.no_grad()
    def predict(self) -> None:
        self.method.eval()
        with autocast(self.device, self.precision):
            self.method(self.backbone.encode_image(self.images)).probabilities.float().cpu()

    @torch.no_grad()
    def predict_cached(self) -> None:
        self.method.eval()
        with autocast(self.device, self.precision):
            self.method(self.features).probabilities.float().cpu()


def measure_configuration(backbone, batch_size: int, precision: str, methods: Sequence[str], classes: list[str],
                          device: torch.device, warmup: int, iters: int) -> list[dict[str, Any]]:
    """One row per method for a backbone at one batch size and precision (``extract`` shared)."""
    reset_peak_memory(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, backbone.image_size, backbone.image_size, generator=generator).to(device)

    def extract() -> ImageFeatures:
        with torch.no_grad(), autocast(device, precision):
            return backbone.encode_image(images)

    extract_rate = images_per_second(extract, batch_size, warmup, iters, device)
    cached = extract()
    features = ImageFeatures(cached.global_features.float(), cached.dense_features.float(), cached.grid)
    rows = []
    for name in methods:
        steps = MethodSteps(name, backbone, classes, images, features, device, precision)
        row = {"method": name, "extract": extract_rate}
        if steps.optimizer is not None:
            row["train_cached"] = images_per_second(steps.train_cached, batch_size, warmup, iters, device)
            row["train_uncached"] = images_per_second(steps.train_uncached, batch_size, warmup, iters, device)
        with steps.method.fixed_prompts(functools.partial(autocast, device, precision)):  # as evaluation does
            row["predict"] = images_per_second(steps.predict, batch_size, warmup, iters, device)
            row["predict_cached"] = images_per_second(steps.predict_cached, batch_size, warmup, iters, device)
        row["trainable_parameters"] = steps.method.trainable_parameter_count()
        rows.append(row)
        del steps
    peak = peak_memory_mib(device)
    for row in rows:
        row["peak_memory_mib"] = round(peak, 1)
    return rows


def run_micro(args: argparse.Namespace, device: torch.device, log=print) -> list[dict[str, Any]]:
    results = []
    classes = class_names(args.classes)
    for arch in args.archs:
        for size in args.image_sizes:
            spec = backbone_spec(arch)
            backbone = create_backbone(spec, image_size=size).to(device)
            for precision in args.precisions:
                for batch_size in args.batch_sizes:
                    key = {"backbone": spec, "image_size": size, "batch_size": batch_size, "precision": precision}
                    try:
                        rows = measure_configuration(backbone, batch_size, precision, args.methods, classes, device,
                                                     args.warmup, args.iters)
                    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
                        log(f"{spec} {size}px batch {batch_size} {precision}: out of memory ({type(error).__name__})")
                        results.append({**key, "method": None, "error": "out of memory"})
                        reset_peak_memory(device)
                        continue
                    for row in rows:
                        results.append({**key, **row})
                        log(_micro_line(results[-1]))
            del backbone
    return results


def _micro_line(row: dict[str, Any]) -> str:
    rates = ", ".join(f"{key} {row[key]:.1f}" for key in ("extract", "train_cached", "train_uncached", "predict",
                                                         "predict_cached") if key in row)
    return (f"{row['backbone']} {row['image_size']}px batch {row['batch_size']} {row['precision']} {row['method']}: "
            f"{rates} images/s; peak {row['peak_memory_mib']:.0f} MiB")


def recipe_estimate(row: dict[str, Any], epochs: int = RECIPE_EPOCHS) -> float | None:
    """Compute-only seconds of the VOC 2007 recipe from a row's rates: cache train and test once,
    then per epoch one training pass and one test evaluation over cached features."""
    if not all(row.get(key) for key in ("extract", "train_cached", "predict_cached")):
        return None
    return ((VOC_TRAIN_IMAGES + VOC_TEST_IMAGES) / row["extract"]
            + epochs * (VOC_TRAIN_IMAGES / row["train_cached"] + VOC_TEST_IMAGES / row["predict_cached"]))


def estimates(results: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """The recipe estimate for every RN101 448 px row, compared with DualCoOp's time on a GPU."""
    rows = []
    for row in results:
        if "RN101" not in row["backbone"] or row["image_size"] != 448 or row.get("method") is None:
            continue
        seconds = recipe_estimate(row)
        if seconds is None:
            continue
        entry = {key: row[key] for key in ("backbone", "batch_size", "precision", "method")}
        entry["estimated_seconds"] = seconds
        if device.type == "cuda":  # the reference numbers are an H100's: ratios mean something on a GPU only
            entry["speedup_vs_dualcoop"] = REFERENCE["dualcoop_voc2007_50_epochs_seconds"] / seconds
            entry["encoder_vs_reference"] = row["extract"] / REFERENCE["rn101_448_encoder_images_per_s"]
            if row.get("train_uncached"):
                entry["train_uncached_vs_reference"] = (row["train_uncached"]
                                                        / REFERENCE["dualcoop_train_step_images_per_s"])
        rows.append(entry)
    return rows


def micro_markdown(report: dict[str, Any]) -> str:
    device = report["device"]
    lines = [f"# promptmlr speed: {device['name']} ({device['type']})", ""]
    if report["results"]:
        lines += [f"torch {device['torch']}, promptmlr {device['promptmlr']}; warm-up {report['settings']['warmup']}, "
                  f"timed {report['settings']['iters']} iterations per number; {report['settings']['classes']} "
                  f"classes. Images/s; memory: {report['memory_kind']}.", "",
                  "| backbone | px | batch | precision | method | extract | train (cache) | train (no cache) | "
                  "predict | predict (cache) | peak MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["results"]:
        if row.get("error"):
            lines.append(f"| {row['backbone']} | {row['image_size']} | {row['batch_size']} | {row['precision']} | "
                         f"| {row['error']} | | | | | |")
            continue
        rates = [f"{row[key]:.1f}" if key in row else "–" for key in
                 ("extract", "train_cached", "train_uncached", "predict", "predict_cached")]
        lines.append(f"| {row['backbone']} | {row['image_size']} | {row['batch_size']} | {row['precision']} | "
                     f"{row['method']} | " + " | ".join(rates) + f" | {row['peak_memory_mib']:.0f} |")
    if report["estimates"]:
        lines += ["", "## VOC 2007 recipe from these rates (compute only, no JPEG decoding)", "",
                  f"{VOC_TRAIN_IMAGES:,} + {VOC_TEST_IMAGES:,} images cached once, then {RECIPE_EPOCHS} epochs of "
                  f"training and test evaluation on cached features.", "",
                  "| method | batch | precision | estimated s | vs DualCoOp's ~24 min on an H100 |",
                  "| --- | --- | --- | --- | --- |"]
        for entry in report["estimates"]:
            ratio = f"{entry['speedup_vs_dualcoop']:.1f}× (target {REFERENCE['target_speedup']}×)" \
                if "speedup_vs_dualcoop" in entry else "(GPU only)"
            lines.append(f"| {entry['method']} | {entry['batch_size']} | {entry['precision']} | "
                         f"{entry['estimated_seconds']:.0f} | {ratio} |")
    if report.get("data_pipeline"):
        lines += pipeline_markdown(report["data_pipeline"])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ data pipeline
def default_workers() -> list[int]:
    """0 (the main process), 1, DualCoOp's 3, and every core."""
    return sorted({0, 1, 3, os.cpu_count() or 1})


def pipeline_transforms(size: int) -> dict[str, Callable]:
    """The transform that builds the cache (resize only), and the training transform with
    RandAugment and Cutout that training from pixels pays every epoch, as DualCoOp's recipe does."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from promptmlr.backbones.preprocess import PreprocessConfig, build_transform

    preprocess = PreprocessConfig(size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    return {"eval (cache)": build_transform(preprocess),
            "train (RandAugment, Cutout)": build_transform(preprocess, train=True, randaugment=True, cutout=True)}


def run_data_pipeline(data_root: Path, image_sizes: Sequence[int], workers: Sequence[int], count: int,
                      batch_size: int = RECIPE_BATCH, log=print) -> list[dict[str, Any]]:
    """Images/s from JPEG files to normalised batches through a ``DataLoader``, worker start-up
    included (an epoch pays it), for the first ``count`` images of the VOC training split."""
    from torch.utils.data import DataLoader

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
    from promptmlr.data import build_dataset

    split = voc_training_split(data_root, voc_splits_present(data_root))
    return build_dataset("voc2007", data_root, split), split


def voc_splits_present(data_root: Path) -> list[str]:
    main = find_voc_year_dir(Path(data_root)) / "ImageSets" / "Main"
    return [split for split in VOC_SPLITS if (main / f"{split}.txt").is_file()]


def voc_training_split(data_root: Path, present: Sequence[str]) -> str:
    """The split to train on: trainval, else train, else val."""
    split = next((name for name in ("trainval", "train", "val") if name in present), None)
    if split is None:
        raise SystemExit(f"speed.py: error: no VOC training split under {data_root} "
                         f"(found: {', '.join(present) or 'no split'})")
    return split


def pipeline_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", f"## Data pipeline: JPEG to normalised batch ({rows[0]['images']} VOC `{rows[0]['split']}` images, "
             f"batch {RECIPE_BATCH}, worker start-up included)", "",
             "| px | transform | workers | images/s | per process |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['image_size']} | {row['transform']} | {row['workers']} | {row['images_per_s']:.1f} | "
                     f"{row['per_process']:.1f} |")
    return lines


# --------------------------------------------------------------------------------------- the recipe
class PhaseClock:
    """Exclusive wall time per phase of functions wrapped with :meth:`patch` (nested calls are
    counted in the inner phase only)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[float] = []

    def wrap(self, phase: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            self._open.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                synchronize(self.device)
                elapsed = time.perf_counter() - started
                nested = self._open.pop()
                self.seconds[phase] += elapsed - nested
                if self._open:
                    self._open[-1] += elapsed

        return timed

    def wrap_context(self, phase: str, factory: Callable) -> Callable:
        """Like :meth:`wrap` for a context-manager factory: times entering the context."""
        @functools.wraps(factory)
        @contextlib.contextmanager
        def timed(*args, **kwargs):
            with contextlib.ExitStack() as stack:
                self.wrap(phase, stack.enter_context)(factory(*args, **kwargs))
                yield

        return timed

    @contextlib.contextmanager
    def patch(self, targets: Sequence[tuple[Any, str, str]], contexts: Sequence[tuple[Any, str, str]] = ()):
        """Wrap ``owner.attribute`` for each ``(owner, attribute, phase)`` of ``targets`` (functions)
        and ``contexts`` (context-manager factories) while the block runs."""
        originals = []
        try:
            for (owner, attribute, phase), wrap in [(t, self.wrap) for t in targets] + [
                    (t, self.wrap_context) for t in contexts]:
                original = getattr(owner, attribute)
                originals.append((owner, attribute, original))
                setattr(owner, attribute, wrap(phase, original))
            yield self
        finally:
            for owner, attribute, original in reversed(originals):
                setattr(owner, attribute, original)


def _voc_ids_and_labels(root: Path, split: str) -> tuple[list[str], np.ndarray, Path]:
    from promptmlr.data import build_dataset

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
    from promptmlr import engine
    from promptmlr.api import run
    from promptmlr.config import parse_assignment, resolve_config

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
    targets = [(engine, "build_or_open_cache", "caching"), (engine.Trainer, "_train_epoch", "training"),
               (engine.Trainer, "_evaluate_splits", "evaluation"), (engine.Trainer, "_test_logits", "evaluation"),
               (engine.Trainer, "_recover", "recovery")]
    targets = [t for t in targets if hasattr(t[0], t[1])]
    log(f"recipe voc2007: {data['train_images']} train / {data['test_images']} test images, {_epochs(epochs)}, "
        f"{config.model.method} on {config.model.backbone} at {config.model.image_size}px, batch "
        f"{config.train.batch_size}, {_precision(config.train.mixed_precision)}, "
        f"{config.train.num_workers} data workers")
    started = time.perf_counter()
    from promptmlr.models import MultiLabelMethod

    with clock.patch(targets, contexts=[(MultiLabelMethod, "fixed_prompts", "evaluation prompts")]):
        result = run(config, run_dir, log=log)
    wall = time.perf_counter() - started
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
        "phase_source": "timed around engine.build_or_open_cache, Trainer._train_epoch, Trainer._evaluate_splits "
                        "+ Trainer._test_logits (less the prompts' encoding on entering "
                        "MultiLabelMethod.fixed_prompts, its own phase) and Trainer._recover; other = backbone "
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


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the JSON and Markdown go")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run: RN101 at 224 px, batch 2, fp32, dualcoop, 1 warm-up and 1 timed "
                             "iteration (flags given explicitly still win)")
    micro = parser.add_argument_group("micro-benchmarks")
    micro.add_argument("--archs", nargs="+", metavar="ARCH",
                       help="open_clip architectures with random weights, or full backbone specs (default RN101 "
                            "ViT-B-16)")
    micro.add_argument("--image-sizes", nargs="+", type=int, metavar="PX", help="default 224 448")
    micro.add_argument("--batch-sizes", nargs="+", type=int, metavar="B",
                       help="default 1 8 32 64 on the CPU, up to 256 on a GPU")
    micro.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"), help="default fp32 bf16 "
                       "(autocast; fp16 needs a GPU)")
    micro.add_argument("--methods", nargs="+", metavar="NAME", help="methods timed in the training and prediction "
                       "steps (default dualcoop promptmlr)")
    micro.add_argument("--classes", type=int, default=20, help="number of classes (default 20, as VOC)")
    micro.add_argument("--warmup", type=int, help="untimed iterations first (default 2)")
    micro.add_argument("--iters", type=int, help="timed iterations per number (default 5)")
    micro.add_argument("--workers", nargs="+", type=int, metavar="W",
                       help="data-pipeline worker counts, timed when --data-root is given (default 0 1 3 and "
                            "every core)")
    micro.add_argument("--data-images", type=int, default=512, metavar="N",
                       help="images per data-pipeline measurement (default 512)")
    micro.add_argument("--data-only", action="store_true", help="time the data pipeline only (needs --data-root)")
    recipe = parser.add_argument_group("end-to-end recipe")
    recipe.add_argument("--recipe", choices=("voc2007",),
                        help="time the standard recipe instead of the micro-benchmarks")
    recipe.add_argument("--data-root", type=Path, metavar="DIR",
                        help="a VOCdevkit: the recipe's data, and the micro-benchmarks' data-pipeline images")
    recipe.add_argument("--recipe-images", type=int, metavar="N", help="scaled down: train on N images")
    recipe.add_argument("--recipe-epochs", type=int, metavar="E", help=f"default {RECIPE_EPOCHS}")
    recipe.add_argument("--recipe-method", default="dualcoop", help="default dualcoop (the reference's method)")
    recipe.add_argument("--recipe-backbone", default="openclip:RN101",
                        help="default openclip:RN101 (random weights: the same speed as OpenAI's)")
    recipe.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe config override, e.g. --set train.mixed_precision=bf16 (repeatable)")
    recipe.add_argument("--keep-cache", action="store_true", help="keep the recipe's feature cache afterwards")
    return parser


def resolve_settings(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill unset options from the defaults, or from the --quick ones."""
    defaults = {"archs": ARCHS, "image_sizes": IMAGE_SIZES, "batch_sizes": BATCH_SIZES[device.type],
                "precisions": PRECISIONS, "methods": METHODS, "warmup": 2, "iters": 5}
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, tuple) else value)
    args.methods = [name for value in args.methods for name in value.split(",") if name]  # "a,b" or "a b"
    if "fp16" in args.precisions and device.type != "cuda":
        raise SystemExit("speed.py: error: fp16 autocast needs a GPU; use bf16 on the CPU")
    if any(batch < 1 for batch in args.batch_sizes) or args.iters < 1 or args.warmup < 0:
        raise SystemExit("speed.py: error: batch sizes and --iters must be positive, --warmup not negative")
    if args.workers is None:
        args.workers = default_workers()
    if args.data_only and args.data_root is None:
        raise SystemExit("speed.py: error: --data-only times the data pipeline, which needs --data-root (a VOCdevkit)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args = resolve_settings(args, device)
    info = device_info(device)
    command = " ".join(["python tools/bench/speed.py", *argv])
    print(f"device: {info['name']} ({device.type})")
    if args.recipe:
        if device.type == "cpu" and torch.cuda.is_available():
            raise SystemExit("speed.py: error: the recipe runs where the engine runs (the GPU here); to time it on "
                             "the CPU, hide the GPU: CUDA_VISIBLE_DEVICES= python tools/bench/speed.py ...")
        report = run_recipe(args, device)
        report.update({"device": info, "command": command, "reference": REFERENCE})
        text = recipe_markdown(report, info)
        write_json_atomic(args.out / "recipe.json", report)
        write_text_atomic(args.out / "recipe.md", text)
        print("\n" + text)
        print(f"results: {args.out / 'recipe.json'}, {args.out / 'recipe.md'}")
        return 0
    results = [] if args.data_only else run_micro(args, device)
    pipeline = (run_data_pipeline(args.data_root, args.image_sizes, args.workers, args.data_images)
                if args.data_root else [])
    report = {
        "device": info, "memory_kind": memory_kind(device), "command": command,
        "settings": {key: getattr(args, key) for key in ("archs", "image_sizes", "batch_sizes", "precisions",
                                                         "methods", "classes", "warmup", "iters", "quick",
                                                         "workers", "data_images")},
        "units": "images per second", "results": results, "estimates": estimates(results, device),
        "data_pipeline": pipeline, "reference": REFERENCE,
    }
    text = micro_markdown(report)
    write_json_atomic(args.out / "speed.json", report)
    write_text_atomic(args.out / "speed.md", text)
    print("\n" + text)
    for entry in report["estimates"]:
        if "speedup_vs_dualcoop" in entry:
            print(f"{entry['method']} {entry['precision']} batch {entry['batch_size']}: VOC 2007 recipe ~"
                  f"{entry['estimated_seconds']:.0f} s vs DualCoOp's ~24 min on an H100 -> "
                  f"{entry['speedup_vs_dualcoop']:.1f}x (target {REFERENCE['target_speedup']}x)")
    print(f"results: {args.out / 'speed.json'}, {args.out / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
