"""One method's partial-label table on one dataset, by the papers' protocol, beside the published numbers.

    python -m tools.bench.reproduce --method dualcoop --dataset voc2007 --data-root /data/VOC2007 --out bench/voc
    python -m tools.bench.reproduce --method sst --dataset synthetic --known 0.1 0.5 --seeds 0 --out bench/sst-sandbox

The protocol of the MLR-PL papers: known proportions 10 % to 90 %, the community's partial-label
mask at each seed (``data.mask_seed``; its SHA-256 is in every run's row), seeds 0, 1, 2; the
dataset's shipped config and the method's recipe for it (``configs/methods/<dataset>/<method>.yaml``,
which cite the authors' files). The epoch is selected on the validation split and scored on the
test split; the anchors select on the test split, which the table says beside their numbers.

Before anything trains the script prints an estimate of the time the plan takes on this machine's
device (the GPU where there is one), from a probe of that device: the encoder's seconds per image
at the recipe's size, and the method's training step and scoring on cached features at the recipe's
batch sizes. The estimate counts the feature cache once (every run shares it: same images, same
backbone) and, per run, each epoch's training steps and its scoring of the validation and test
splits (and of the training split, where label recovery is on). Image decoding is not counted:
on a GPU it overlaps the encoder only as far as ``train.num_workers`` allows. ``--estimate-only``
stops after the estimate; on a terminal the script asks before it starts, unless ``--yes``.

The runs are a :mod:`tools.bench.accuracy` benchmark in ``<out>`` (an interrupted reproduction
continues where it stopped). Writes ``<out>/reproduce.md`` and ``reproduce.json``: per known
proportion, test mAP mean ± std over the seeds, the published number of the method on that dataset
(``tools/bench/published.yaml``, with its source) and the difference; the estimate beside the
measured time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from promptmlr.config import RunConfig, resolve_config
from promptmlr.data.protocol import load_splits
from promptmlr.errors import PromptMLRError
from promptmlr.files import write_json_atomic, write_text_atomic
from promptmlr.models.factory import build_backbone, list_methods
from promptmlr.report import aggregate
from tools.bench import accuracy
from tools.bench.common import MethodSteps, class_names, interleaved_seconds

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
PAPER_PERCENTS = tuple(range(10, 100, 10))  # the known proportions the papers' tables print
PRECISIONS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}  # train.mixed_precision -> the probe's autocast


@dataclass
class Probe:
    """Seconds measured on this device: per image encoded, per training step, per scoring batch."""

    device: str
    encode_per_image: float
    train_step: float
    score_batch: float


@dataclass
class Estimate:
    runs: int
    cache_images: int
    cache_seconds: float
    run_seconds: float
    total_seconds: float


def plan_config(args: argparse.Namespace) -> RunConfig:
    """The first run's config (every run shares everything the estimate reads)."""
    overrides = accuracy.base_overrides(args)
    own = {"data": {"known": args.known[0], "mask_seed": args.seeds[0]}, "train": {"seed": args.seeds[0]},
           "model": {"method": args.method}}
    return resolve_config(args.dataset, None, [*overrides, own])


def probe(config: RunConfig, classes: int, device: torch.device, rounds: int = 3) -> Probe:
    """Time the encoder on one batch of random images at the recipe's size, and the method's cached
    training step and scoring at the recipe's batch sizes (the probe batch's features repeated)."""
    backbone = build_backbone(config.model).to(device).eval()
    size, batch = config.model.image_size, config.train.batch_size
    probe_batch = min(batch, 8)
    images = torch.randn(probe_batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    precision = PRECISIONS[config.train.mixed_precision]
    with torch.no_grad():
        features = backbone.encode_image(images)

    def repeated(rows: int):
        index = torch.arange(rows, device=device) % probe_batch
        return type(features)(features.global_features[index].float(), features.dense_features[index].float(),
                              features.grid)

    names = class_names(classes)
    def steps(rows: int) -> MethodSteps:  # the images only size the targets: a view, no copy
        return MethodSteps(config.model.method, backbone, names, images[:1].expand(rows, -1, -1, -1), repeated(rows),
                           device, precision, config.model.options)

    training, scoring = steps(batch), steps(config.train.eval_batch_size)

    def encode() -> None:
        with torch.no_grad():
            backbone.encode_image(images)

    steps = {"encode": encode, "score": scoring.predict_cached}
    if training.parameters:
        steps["train"] = training.train_cached
    seconds = interleaved_seconds(steps, warmup=1, rounds=rounds, device=device)
    median = {name: sorted(times)[len(times) // 2] for name, times in seconds.items()}
    return Probe(str(device), median["encode"] / probe_batch, median.get("train", 0.0), median["score"])


def estimate(config: RunConfig, sizes: dict[str, int], measured: Probe, runs: int) -> Estimate:
    """Seconds the plan takes: the cache once, then every run's epochs (see the module docstring)."""
    train = config.train
    cached = train.cache.enabled != "off"
    scored = sizes["val"] + sizes["test"] + (sizes["train"] if train.recovery.enabled else 0)
    score_batches = sum(math.ceil(sizes[split] / train.eval_batch_size) for split in ("val", "test")
                        if sizes[split])
    if train.recovery.enabled:
        score_batches += math.ceil(sizes["train"] / train.eval_batch_size)
    steps = math.ceil(sizes["train"] / train.batch_size)
    cache_images = sizes["train"] * train.cache.views + sizes["val"] + sizes["test"] if cached else 0
    per_epoch = steps * measured.train_step + score_batches * measured.score_batch
    if not cached:  # every epoch encodes what it trains on and what it scores
        per_epoch += (sizes["train"] + scored) * measured.encode_per_image
    cache_seconds = cache_images * measured.encode_per_image
    run_seconds = train.epochs * per_epoch
    return Estimate(runs, cache_images, cache_seconds, run_seconds, cache_seconds + runs * run_seconds)


def duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def published_row(dataset: str, method: str, path: Path | None = None) -> dict[str, Any] | None:
    """The method's published numbers on ``dataset`` (``{source, backbone, map: [9 values], ...}``), if any."""
    table = yaml.safe_load((path or PUBLISHED_FILE).read_text(encoding="utf-8")) or {}
    return (table.get(dataset) or {}).get(method)


def comparison(rows: list[dict[str, Any]], published: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per known proportion: ours (mean, std, seeds) and the published value at that proportion; then,
    where every proportion from 10 % to 90 % was measured, the average over them beside the published
    average."""
    published = published or {}
    groups = {round(group.known * 100): group for group in aggregate(rows, ["test_mAP"])}
    table = []
    for percent, group in groups.items():
        theirs = published["map"][percent // 10 - 1] if "map" in published and percent in PAPER_PERCENTS else None
        table.append(_row(f"{percent}%", group.mean["test_mAP"], group.std["test_mAP"], group.seeds, theirs))
    if set(PAPER_PERCENTS) <= set(groups):
        mean = sum(groups[percent].mean["test_mAP"] for percent in PAPER_PERCENTS) / len(PAPER_PERCENTS)
        table.append(_row("average", mean, None, groups[10].seeds, published.get("average")))
    return table


def _row(known: str, mean: float, std: float | None, seeds: list[int], theirs: float | None) -> dict[str, Any]:
    return {"known": known, "mean": mean, "std": std, "seeds": seeds, "published": theirs,
            "difference": None if theirs is None else mean - theirs}


def markdown(report: dict[str, Any]) -> str:
    published, guess = report["published"], report["estimate"]
    lines = [f"# {report['method']} on {report['dataset']}", "", f"`{report['command']}`", "",
             f"Backbone `{report['backbone']}`; the recipe files: {', '.join(report['recipes'])}. Epoch selected on "
             "the validation split, scored on the test split; mask SHA-256 per run in results.csv.", "",
             "| known | ours: test mAP (mean ± std) | seeds | published | ours − published |",
             "| --- | --- | --- | --- | --- |"]
    for row in report["table"]:
        ours = f"{row['mean']:.2f}" + (f" ± {row['std']:.2f}" if row["std"] is not None else "")
        theirs = "–" if row["published"] is None else f"{row['published']:.1f}"
        difference = "–" if row["difference"] is None else f"{row['difference']:+.2f}"
        lines.append(f"| {row['known']} | {ours} | {', '.join(map(str, row['seeds']))} | {theirs} | {difference} |")
    lines.append("")
    if published:
        lines.append(f"Published: {published['source']} ({published.get('backbone', 'backbone not stated')}); the "
                     "authors select the epoch on the test split.")
    else:
        lines.append(f"No published numbers of {report['method']} on {report['dataset']} in "
                     "tools/bench/published.yaml.")
    lines += ["", f"Estimated on {report['probe']['device']} before the runs: {duration(guess['total_seconds'])} "
              f"({guess['runs']} runs of {duration(guess['run_seconds'])} each, the cache "
              f"{duration(guess['cache_seconds'])}); measured: {duration(report['measured_seconds'])}."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=list_methods())
    parser.add_argument("--dataset", required=True, help="a registered dataset (voc2007, coco2014, nuswide, ...)")
    parser.add_argument("--data-root", type=Path, metavar="DIR", help="the dataset's folder")
    parser.add_argument("--backbone", metavar="SPEC", help="default: the dataset config's")
    parser.add_argument("--known", nargs="+", type=float, default=list(accuracy.KNOWN), metavar="P")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(accuracy.SEEDS), metavar="S")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting for every run (repeatable); the protocol's keys are refused")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")
    parser.add_argument("--yes", action="store_true", help="start without asking")
    return parser


def accuracy_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--dataset", args.dataset, "--methods", args.method, "--known", *map(str, args.known),
            "--seeds", *map(str, args.seeds), "--out", str(args.out)]
    if args.data_root is not None:
        argv += ["--data-root", str(args.data_root)]
    if args.backbone:
        argv += ["--backbone", args.backbone]
    for assignment in args.set:
        argv += ["--set", assignment]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.epochs, args.methods = None, [args.method]  # what accuracy.base_overrides reads
    try:
        if any(not 0 < known <= 1 for known in args.known):
            raise accuracy.BenchError(f"--known proportions must be in (0, 1], got {args.known}")
        config = plan_config(args)
        splits, _ = load_splits(config.data)
    except (accuracy.BenchError, PromptMLRError) as error:
        print(f"reproduce.py: error: {error}", file=sys.stderr)
        return 2
    sizes = {"train": len(splits.train), "val": len(splits.val) if splits.val is not None else 0,
             "test": len(splits.test) if splits.test is not None else 0}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    measured = probe(config, len(splits.train.class_names), device)
    guess = estimate(config, sizes, measured, len(args.known) * len(args.seeds))
    print(f"{args.method} on {args.dataset}: {guess.runs} runs ({len(args.known)} proportions x {len(args.seeds)} "
          f"seeds), {config.train.epochs} epochs each, {sizes['train']} training images, batch "
          f"{config.train.batch_size}, {config.model.image_size} px")
    print(f"estimated on {measured.device}: {duration(guess.total_seconds)} (cache of {guess.cache_images} images "
          f"{duration(guess.cache_seconds)}, each run {duration(guess.run_seconds)}; image decoding not counted)")
    if args.estimate_only:
        return 0
    if not args.yes and sys.stdin.isatty() and input("start? [y/N] ").strip().lower() not in ("y", "yes"):
        return 1
    started = time.perf_counter()
    status = accuracy.main(accuracy_argv(args))
    if status != 0:
        print(f"reproduce.py: the benchmark failed (see {args.out / 'results.md'})", file=sys.stderr)
        return status
    rows = json.loads((args.out / "results.json").read_text(encoding="utf-8"))["runs"]
    published = published_row(args.dataset, args.method)
    report = {"method": args.method, "dataset": args.dataset, "backbone": config.model.backbone,
              "recipes": config.recipes, "command": "python -m tools.bench.reproduce " + " ".join(argv),
              "table": comparison(rows, published), "published": published, "probe": asdict(measured),
              "estimate": asdict(guess), "measured_seconds": time.perf_counter() - started}
    write_json_atomic(args.out / "reproduce.json", report)
    text = markdown(report)
    write_text_atomic(args.out / "reproduce.md", text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
