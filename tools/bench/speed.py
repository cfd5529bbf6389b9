"""Speed benchmark: throughput of the frozen encoder, of training with and without the feature
cache, and of prediction; and the wall time of the standard VOC 2007 recipe end to end.

Micro-benchmarks (default), on random inputs and random weights (``openclip:<arch>``)::

    python -m tools.bench.speed --out bench/speed                  # RN101, ViT-B-16 at 224/448 px
    python -m tools.bench.speed --out bench/speed --quick          # a tiny run (seconds to a minute)

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

With ``--data-root DIR`` (a VOCdevkit) it also times the data pipeline from JPEG files to batches
(:mod:`tools.bench.pipeline`; with ``--data-only``, nothing else).

The recipe (``--recipe voc2007 --data-root DIR``, :mod:`tools.bench.recipe`) runs
``promptmlr.api.run`` with the voc2007 config as DualCoOp trains it: trainval (5,011 images) for 50
epochs, RN101 at 448 px, the test set (4,952 images) evaluated after every epoch, JPEG decoding
included, a fresh feature cache; it reports the wall time split into the Trainer's phases
(caching, training, evaluation, ...) and the rest. That
needs the full VOC 2007 (a GPU machine, really); ``--recipe-images N --recipe-epochs E`` runs a
scaled-down version on whatever VOC split is there (test images stand in from the training split
if there is no test split) and extrapolates it to the full recipe.

Results go to ``--out`` as ``speed.json``/``speed.md`` (micro-benchmarks) or
``recipe.json``/``recipe.md`` (recipe), each naming the device.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from promptmlr.backbones import ImageFeatures, create_backbone
from promptmlr.files import write_json_atomic, write_text_atomic
from tools.bench.common import (
    RECIPE_EPOCHS,
    REFERENCE,
    VOC_TEST_IMAGES,
    VOC_TRAIN_IMAGES,
    MethodSteps,
    autocast,
    class_names,
    device_info,
    images_per_second,
    memory_kind,
    peak_memory_mib,
    pick_device,
    reset_peak_memory,
)
from tools.bench.pipeline import default_workers, pipeline_markdown, run_data_pipeline
from tools.bench.recipe import recipe_markdown, run_recipe

ARCHS = ("RN101", "ViT-B-16")
IMAGE_SIZES = (224, 448)
BATCH_SIZES = {"cpu": (1, 8, 32, 64), "cuda": (1, 8, 32, 64, 128, 256)}
PRECISIONS = ("fp32", "bf16")
METHODS = ("dualcoop", "promptmlr")  # timed by default: the reference's method and ours
QUICK = {"archs": ("RN101",), "image_sizes": (224,), "batch_sizes": (2,), "precisions": ("fp32",),
         "methods": ("dualcoop",), "warmup": 1, "iters": 1}


# --------------------------------------------------------------------------------- micro-benchmarks
def backbone_spec(arch: str) -> str:
    """``RN101`` -> ``openclip:RN101`` (random weights); a full spec is kept as it is."""
    return arch if ":" in arch else f"openclip:{arch}"


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
    command = " ".join(["python -m tools.bench.speed", *argv])
    print(f"device: {info['name']} ({device.type})")
    if args.recipe:
        if device.type == "cpu" and torch.cuda.is_available():
            raise SystemExit("speed.py: error: the recipe runs where the engine runs (the GPU here); to time it on "
                             "the CPU, hide the GPU: CUDA_VISIBLE_DEVICES= python -m tools.bench.speed ...")
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
