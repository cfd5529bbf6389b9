"""Accuracy benchmark: every method at every known proportion and seed, on one dataset and backbone.

    python -m tools.bench.accuracy --dataset synthetic --out bench/accuracy-synthetic
    python -m tools.bench.accuracy --dataset voc2007 --data-root /data/voc --backbone openclip:RN101:openai \\
        --methods zeroshot dualcoop promptmlr --known 0.1 0.5 0.9 --seeds 0 1 2 --out bench/voc

Each (method, known, seed) is one ``promptmlr.api.run`` run in
``<out>/runs/<method>-k<known>-s<seed>/``; the seed is both the partial-label mask seed
(``data.mask_seed``) and the training seed (``train.seed``), so seeds vary the mask as well as the
initialisation and data order. A run whose ``metrics.json`` exists is read back instead of run
again (an interrupted run with a checkpoint is resumed), so rerunning the same command continues
the benchmark; a run folder made with a different config is refused rather than mixed in.

Writes ``<out>/results.csv`` and ``results.json`` (one row per run: test mAP with both AP kinds,
CF1, OF1, recovered-label precision when recovery is on, wall time, trainable parameters),
``results.md`` (mean ± std over seeds per method × known) and ``map_vs_known.png``, using the
loading, aggregation and plotting of :mod:`promptmlr.report`; the tables are printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from promptmlr import __version__
from promptmlr.api import run
from promptmlr.config import LOGISTICS, RunConfig, load_run_config, parse_assignment, resolve_config
from promptmlr.engine import TrainingDivergedError
from promptmlr.errors import PromptMLRError
from promptmlr.files import atomic_write, write_json_atomic, write_text_atomic
from promptmlr.models.factory import METHODS, method_class
from promptmlr.report import (
    AGGREGATED_METRICS,
    MAP_VS_KNOWN_FILE,
    RunRecord,
    aggregate,
    aggregate_table,
    known_table,
    load_run,
    plot_map_vs_known,
)
from promptmlr.runs import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE

KNOWN = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SEEDS = (0, 1, 2)
# set by the benchmark's own loop: --set may not change them
CONTROLLED = {"data.known": "--known", "data.mask_seed": "--seeds", "train.seed": "--seeds",
              "model.method": "--methods", "data.dataset": "--dataset"}
RESULT_COLUMNS = ("name", "method", "known", "seed", "dataset", "backbone", "val_mAP", "test_mAP", "test_mAP_voc2012",
                  "test_CF1", "test_OF1", "recovery_precision_positive", "recovery_recall_positive",
                  "recovery_precision_negative",
                  "recovered_positive", "recovered_negative", "trainable_parameters", "train_seconds",
                  "total_seconds", "best_epoch", "epochs", "selected_on", "mask_seed", "mask_sha256", "run_dir")
SUMMARY_METRICS = (*AGGREGATED_METRICS, "trainable_parameters", "total_seconds")


class BenchError(ValueError):
    """A bad argument or an output folder that does not fit this benchmark."""


# ------------------------------------------------------------------------------------------ planning
def run_name(method: str, known: float, seed: int) -> str:
    return f"{method}-k{known:g}-s{seed}"


def leaf_keys(values: dict, prefix: str = "") -> list[str]:
    """``{"train": {"cache": {"views": 4}}}`` -> ``["train.cache.views"]``."""
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        keys += leaf_keys(value, path + ".") if isinstance(value, dict) and value else [path]
    return keys


def base_overrides(args: argparse.Namespace) -> list[dict]:
    """Command-line settings shared by every run: flags first, then ``--set`` (checked)."""
    overrides = []
    if args.data_root is not None:
        overrides.append({"data": {"root": str(args.data_root)}})
    if args.backbone is not None:
        overrides.append({"model": {"backbone": args.backbone}})
    if args.epochs is not None:
        overrides.append({"train": {"epochs": args.epochs}})
    for text in args.set:
        assignment = parse_assignment(text)
        for key in leaf_keys(assignment):
            if key in CONTROLLED or any(key.startswith(c + ".") for c in CONTROLLED):
                raise BenchError(f"--set {text}: the benchmark sets {key} itself; use {CONTROLLED[key]}")
        overrides.append(assignment)
    return overrides


def plan(args: argparse.Namespace) -> list[tuple[str, RunConfig]]:
    """(run name, resolved config) for every run, seeds outermost so that early results cover every
    method and proportion once."""
    shared = base_overrides(args)
    runs = []
    for seed in args.seeds:
        for known in args.known:
            for method in args.methods:
                own = {"data": {"known": known, "mask_seed": seed}, "train": {"seed": seed},
                       "model": {"method": method}}
                runs.append((run_name(method, known, seed), resolve_config(args.dataset, args.config, [*shared, own])))
    return runs


def config_differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts. Logistics keys are ignored, and so are
    method options that both configs' methods ignore (a component switched off in both)."""
    ignored = LOGISTICS | (inert_options(saved) & inert_options(wanted) if not prefix else set())
    return _differences(saved, wanted, prefix, ignored)


def _differences(saved: dict, wanted: dict, prefix: str, ignored: set[str]) -> list[str]:
    differences = []
    for key in sorted(set(saved) | set(wanted)):
        path = f"{prefix}{key}"
        if path in ignored:
            continue
        old, new = saved.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += _differences(old, new, path + ".", ignored)
        elif old != new:
            differences.append(f"{path}: {old!r} -> {new!r}")
    return differences


def inert_options(config: dict) -> set[str]:
    """``model.options.*`` keys the run's method ignores with its other options (``Config.inert_options``)."""
    model = config.get("model") or {}
    try:
        options = method_class(model.get("method", "")).Config(**(model.get("options") or {}))
    except (PromptMLRError, TypeError):  # another method's or a mistyped option: compared as they are
        return set()
    return {f"model.options.{name}" for name in getattr(options, "inert_options", set)()}


# ------------------------------------------------------------------------------------------- running
def run_one(name: str, config: RunConfig, run_dir: Path, log=print) -> tuple[RunRecord, str]:
    """Run (or read back, or resume) one benchmark run; returns its record and what was done."""
    wanted = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))  # as config.yaml holds it
    if (run_dir / CONFIG_FILE).is_file():
        # read back through the config layer (which upgrades any older format version), so that
        # folders compare by meaning, not by their text
        saved = yaml.safe_load(yaml.safe_dump(load_run_config(run_dir / CONFIG_FILE).to_dict(), sort_keys=False))
        differences = config_differences(saved, wanted)
        if differences:
            raise BenchError(f"{run_dir} holds a run with another config ({'; '.join(differences[:4])}); "
                             f"use another --out or delete that folder")
    if (run_dir / METRICS_FILE).is_file():
        return load_run(run_dir), "reused"
    resume = (run_dir / CHECKPOINT_FILE).is_file()
    log(f"\n=== {name}: {'resuming' if resume else 'running'} -> {run_dir}")
    run(config, run_dir, resume=resume, log=log)
    return load_run(run_dir), "resumed" if resume else "ran"


def run_benchmark(runs: Sequence[tuple[str, RunConfig]], out: Path, log=print
                  ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every run in order; rows of the finished ones and the names and errors of those that diverged."""
    rows, failed = [], []
    for index, (name, config) in enumerate(runs, 1):
        started = time.time()
        try:
            record, action = run_one(name, config, out / "runs" / name, log)
        except TrainingDivergedError as error:
            log(f"[{index}/{len(runs)}] {name}: FAILED: {error}")
            failed.append({"name": name, "error": str(error)})
            continue
        rows.append({"name": name, **record.as_dict()})
        score = f"{record.test_mAP:.2f}" if record.test_mAP is not None else "–"
        log(f"[{index}/{len(runs)}] {name}: {action} ({time.time() - started:.1f} s): test mAP {score}")
    return rows, failed


# ------------------------------------------------------------------------------------------- writing
def write_results(out: Path, rows: list[dict[str, Any]], failed: list[dict[str, str]], settings: dict) -> str:
    """results.csv, results.json, results.md and the mAP-vs-known plot; returns the Markdown."""
    def write_csv(temp: Path) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({key: "" if row.get(key) is None else row.get(key) for key in RESULT_COLUMNS}
                             for row in rows)

    atomic_write(out / "results.csv", write_csv)
    groups = aggregate(rows, SUMMARY_METRICS)
    write_json_atomic(out / "results.json", {"settings": settings, "runs": rows, "failed": failed,
                                              "aggregate": [group.as_dict() for group in groups]})
    if groups:
        plot_map_vs_known(groups, out / MAP_VS_KNOWN_FILE,
                          title=f"{settings['dataset']}, {settings['backbone']}: test mAP vs known proportion "
                                f"(mean ± std over seeds)")
    lines = [
        f"# Accuracy benchmark: {settings['dataset']}, {settings['backbone']}", "",
        f"{len(rows)} run(s), {settings['epochs']} training epoch(s) each (zero-shot: none), seeds "
        f"{', '.join(map(str, settings['seeds']))} (mask and training seed); test metrics at the selected "
        f"epoch, mean ± sample std over seeds.", "",
        "## test mAP", "", known_table(groups, "test_mAP"), "",
        "## test mAP (VOC2012 AP)", "", known_table(groups, "test_mAP_voc2012"), "",
        "## All metrics", "", aggregate_table(groups, SUMMARY_METRICS), "",
        f"![{MAP_VS_KNOWN_FILE}]({MAP_VS_KNOWN_FILE})", "",
        f"Command: `{settings['command']}`",
    ]
    if failed:
        lines += ["", "## Failed runs", "", *(f"- {f['name']}: {f['error']}" for f in failed)]
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "results.md", text)
    return text


# ---------------------------------------------------------------------------------------------- main
def _names(values: Sequence[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (space or comma separated)."""
    return [part for value in values for part in value.split(",") if part]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic", help="a registered dataset (default synthetic)")
    parser.add_argument("--data-root", type=Path, metavar="DIR",
                        help="where the dataset's files are (the synthetic world has a default)")
    parser.add_argument("--backbone", metavar="SPEC", help="default: the dataset config's (sandbox for synthetic)")
    methods = METHODS.names()  # every registered method, in the order of the results tables
    parser.add_argument("--methods", nargs="+", default=methods, metavar="NAME",
                        help=f"default: {' '.join(methods)}")
    parser.add_argument("--known", nargs="+", type=float, default=list(KNOWN), metavar="P",
                        help="known label proportions (default 0.1 ... 0.9)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), metavar="S",
                        help="each seed is the mask seed and the training seed (default 0 1 2)")
    parser.add_argument("--epochs", type=int, help="default: the dataset config's")
    parser.add_argument("--config", type=Path, metavar="FILE", help="a YAML config applied to every run")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for every run (repeatable), e.g. --set train.recovery.enabled=true")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="benchmark folder (runs/ and results)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.methods = _names(args.methods)
    try:
        if any(not 0 < known <= 1 for known in args.known):
            raise BenchError(f"--known proportions must be in (0, 1], got {args.known}")
        runs = plan(args)
    except (BenchError, PromptMLRError) as error:  # bad input: one line, no traceback
        print(f"accuracy.py: error: {error}", file=sys.stderr)
        return 2
    first = runs[0][1]
    settings = {
        "command": " ".join(["python -m tools.bench.accuracy", *argv]),
        "dataset": first.data.dataset, "data_root": first.data.root, "backbone": first.model.backbone,
        "methods": args.methods, "known": args.known, "seeds": args.seeds, "epochs": first.train.epochs,
        "config": str(args.config) if args.config else None, "overrides": args.set,
        "promptmlr": __version__, "python": platform.python_version(), "host": platform.node(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"{len(runs)} runs: {len(args.methods)} methods x {len(args.known)} proportions x {len(args.seeds)} seeds "
          f"-> {args.out}")
    try:
        rows, failed = run_benchmark(runs, args.out)
    except (BenchError, PromptMLRError) as error:  # a config clash, a missing dataset, ...
        print(f"accuracy.py: error: {error}", file=sys.stderr)
        return 1
    text = write_results(args.out, rows, failed, settings)
    print("\n" + text)
    print(f"results: {args.out / 'results.csv'}, {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
