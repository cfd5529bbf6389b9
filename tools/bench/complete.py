"""``promptmlr complete`` on the sandbox, where the hidden labels are known: is the precision it
promises the precision it gives, how much does it fill, and does what it fills help?

    python -m tools.bench.complete --out bench/complete                       # 10/50 % known, 3 seeds
    python -m tools.bench.complete --out bench/complete --known 0.1 --seeds 0 # a quick look

For each known proportion and seed (the mask seed and the training seed):

1. ``partial``: the method trained on the partially labelled training split (the community's mask,
   written as a CSV file and read with ``--dataset csv``, like a user's own data), selected on its
   validation split: the run that is completed.
2. ``promptmlr.complete`` on that run at each target precision and each of ``--calibrations``
   (``validation``, with ``--cross-fit K`` for the classes it cannot calibrate; ``cross-fit``, every
   class, from the same K trainings); the filled labels are compared with the hidden ones: realised
   precision per sign, overall and for the worst class (over classes with at least 20 fills of that
   sign), the share of the hidden positives (negatives) filled with the wrong sign, and the share of
   the unknown labels filled. The precision of filling every unknown entry negative is shown beside
   it: a negative precision near it says nothing.
3. Retraining, four arms on the same recipe, each trained on every training image (no validation
   split: carved from each arm's own labels it would differ between arms) and scored on the test
   split at its last epoch: ``partial labels``; ``completed`` at ``--retrain-at`` and
   ``--retrain-calibration``; ``review`` and
   ``random``: the completed labels plus ``--review`` still-unknown entries revealed from the hidden
   truth, those the review list suggests, or as many drawn at random (seeded) from the same pool.

All runs use the synthetic dataset's recipe and class descriptions, so that they differ in their
training labels only. Runs are reused from ``<out>/runs`` (an interrupted benchmark continues), and
the out-of-fold scores from the partial run's folder. Writes ``<out>/complete.md`` and ``complete.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from promptmlr import complete
from promptmlr.config import RunConfig, parse_assignment, resolve_config
from promptmlr.data.custom import build_csv
from promptmlr.data.protocol import dataset_root, masked_training_split
from promptmlr.files import write_json_atomic, write_text_atomic
from promptmlr.models.factory import resolve_descriptions
from promptmlr.runs import read_metrics
from tools.bench.accuracy import run_one

KNOWN, SEEDS, TARGETS = (0.1, 0.5), (0, 1, 2), (0.9, 0.95, 0.99)
CALIBRATIONS = ("cross-fit", "validation")  # cross-fit first: it trains the folds the other reads back
MIN_CLASS_FILLS = 20  # a class's realised precision over fewer fills is mostly noise


def labels_csv(path: Path, images: Sequence[Path], class_names: Sequence[str], labels: np.ndarray) -> Path:
    """A label matrix as the CSV a user's data would be (absolute image paths)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *class_names])
        writer.writerows([str(Path(image).resolve()), *row] for image, row in zip(images, labels.tolist()))
    return path


def csv_config(base: RunConfig, labels: Path, val_fraction: float | None = None) -> RunConfig:
    """``base`` (the synthetic recipe) trained on the CSV file ``labels`` as all there is to know;
    ``val_fraction`` 0: on every image, for the recipe's epochs (scored at the last), and an ensemble
    whose weights the recipe chooses on validation (promptmlr's ``fusion``) takes their mean."""
    data = dataclasses.replace(base.data, dataset="csv", root=str(dataset_root(base.data)), known=1.0,
                               options={"labels": str(labels.resolve())})
    train, model = base.train, base.model
    if val_fraction == 0:
        data = dataclasses.replace(data, val_fraction=0.0)
        train = dataclasses.replace(train, select_on="test")  # required without validation; only the last is read
        if model.options.get("fusion") == "validated":
            model = dataclasses.replace(model, options={**model.options, "fusion": "mean"})
    return dataclasses.replace(base, data=data, train=train, model=model)


def realised(filled_labels: np.ndarray, before: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """What filling did to the entries unknown ``before``, against the hidden ``truth``: precision
    per sign (overall and worst class), the share of each hidden sign filled with the other, the
    share of each hidden sign filled right, and the share of the unknown filled."""
    unknown = before == 0
    filled = unknown & (filled_labels != 0)
    measured: dict[str, Any] = {"fill_rate": float(filled.sum() / unknown.sum()), "filled": int(filled.sum()),
                                "unknown": int(unknown.sum()),
                                "all_negative_precision": float((truth[unknown] == -1).mean())}
    for sign, name in ((1, "positive"), (-1, "negative")):
        chosen = filled & (filled_labels == sign)
        right = chosen & (truth == sign)
        hidden = unknown & (truth == sign)
        per_class = [float(right[:, c].sum() / chosen[:, c].sum()) for c in range(truth.shape[1])
                     if chosen[:, c].sum() >= MIN_CLASS_FILLS]
        measured[f"precision_{name}"] = float(right.sum() / chosen.sum()) if chosen.any() else None
        measured[f"worst_class_{name}"] = min(per_class) if per_class else None
        measured[f"recall_{name}"] = float(right.sum() / hidden.sum()) if hidden.any() else None
        measured[f"{name}s_lost"] = float((filled & hidden & (filled_labels == -sign)).sum() / hidden.sum()) \
            if hidden.any() else None
    return measured


def reveal(labels: np.ndarray, truth: np.ndarray, entries: list[tuple[int, int]]) -> np.ndarray:
    revealed = labels.copy()
    for row, column in entries:
        revealed[row, column] = truth[row, column]
    return revealed


def review_entries(path: Path, images: Sequence[Path], class_names: Sequence[str]) -> list[tuple[int, int]]:
    """(row, column) of each line of a review file (image paths relative to its folder, or absolute)."""
    row_of = {str(Path(image).resolve()): row for row, image in enumerate(images)}
    column_of = {name: column for column, name in enumerate(class_names)}
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(row_of[str((path.parent / image).resolve())], column_of[name])
            for image, name, *_ in (line.split("\t") for line in lines)]


def one_setting(args: argparse.Namespace, known: float, seed: int, log) -> dict[str, Any]:
    """Every measurement of one known proportion and seed (see the module docstring)."""
    name = f"known{known:g}-seed{seed}"
    folder = args.out / "labels" / name
    base = resolve_config("synthetic", None, [{"data": {"known": known, "mask_seed": seed}, "train": {"seed": seed},
                                                "model": {"method": args.method}}, *map(parse_assignment, args.set)])
    training = masked_training_split(base.data)
    images, classes = training.dataset.image_paths, training.dataset.class_names
    descriptions = resolve_descriptions(base.model.descriptions, "synthetic", classes)[1]
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, descriptions=descriptions))
    truth, partial = training.full_labels, training.dataset.labels

    def train(kind: str, labels: np.ndarray, val_fraction: float | None = 0) -> float:
        path = labels_csv(folder / f"{kind}.csv", images, classes, labels)
        run_dir = args.out / "runs" / f"{name}-{kind}"
        record, action = run_one(f"{name}-{kind}", csv_config(base, path, val_fraction), run_dir, log)
        score = record.test_mAP if val_fraction is None else read_metrics(run_dir)["last"]["test_mAP"]
        log(f"{name}-{kind}: {action}, test mAP {score:.2f}")
        return score

    result: dict[str, Any] = {"known": known, "seed": seed, "selected_partial": train("selected", partial, None),
                              "targets": {}}
    run_dir = args.out / "runs" / f"{name}-selected"
    for calibration in args.calibrations:
        for target in args.targets:
            key = setting_key(calibration, target)
            out = folder / f"completed-{calibration}-p{target:g}.csv"
            started = time.time()
            completion = complete(run_dir, out, precision=target, force=True, review=args.review,
                                  cross_fit=args.cross_fit, calibration=calibration, log=log)
            filled = build_csv(out.parent, out.stem).labels
            result["targets"][key] = {**realised(filled, partial, truth),
                                      "estimated_precision": completion.report["estimated_precision"],
                                      "seconds": time.time() - started}
            log(f"{name} {key}: {json.dumps(result['targets'][key])}")
            if (calibration, target) == (args.retrain_calibration, args.retrain_at):
                completed, review_file = filled, completion.files.get("review")
    result["partial"] = train("partial", partial)
    result["completed"] = train("completed", completed)
    if review_file is not None:
        suggested = review_entries(review_file, images, classes)
        pool = np.argwhere(completed == 0)
        drawn = [tuple(pool[i]) for i in np.random.default_rng(seed).choice(len(pool), len(suggested), replace=False)]
        result["review"] = train("review", reveal(completed, truth, suggested))
        result["random"] = train("random", reveal(completed, truth, drawn))
        result["review_entries"] = len(suggested)
        if suggested:
            result["review_positive_share"] = float(np.mean([truth[entry] == 1 for entry in suggested]))
            result["random_positive_share"] = float(np.mean([truth[entry] == 1 for entry in drawn]))
    return result


def tables(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown report: precision against target, what was lost and filled, and the retraining
    loop (mean ± sample std over seeds)."""
    lines = [f"# `promptmlr complete` on the sandbox ({args.method}, --cross-fit {args.cross_fit}, seeds "
             f"{', '.join(map(str, args.seeds))})", "",
             "## The filled labels against the hidden truth", "",
             "| calibration | known | target | precision + | worst class + | precision − | worst class − | "
             "all-negative precision | positives filled − | positives filled + | negatives filled − | estimated | "
             "filled of unknown |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for calibration in args.calibrations:
        for known in args.known:
            for target in args.targets:
                rows = [r["targets"][setting_key(calibration, target)] for r in results if r["known"] == known]
                lines.append(f"| {calibration} | {known:.0%} | {target:g} | {target_cells(rows)} |")
    entries = next((r["review_entries"] for r in results if "review_entries" in r), 0)
    lines += ["", f"## Retrained on the labels (test mAP at the last epoch, every training image; completed at "
              f"target {args.retrain_at:g}, calibration {args.retrain_calibration}; review and random: {entries} "
              f"more entries revealed)", "",
              "| known | partial labels | completed | completed + review | completed + random | partial, selected on "
              "val | positives among review / random |", "|---|---|---|---|---|---|---|"]
    for known in args.known:
        chosen = [r for r in results if r["known"] == known]
        cells = [mean_std([r[kind] for r in chosen if kind in r])
                 for kind in ("partial", "completed", "review", "random", "selected_partial")]
        shares = [mean_std([r[f"{kind}_positive_share"] for r in chosen if f"{kind}_positive_share" in r], digits=3)
                  for kind in ("review", "random")]
        lines.append(f"| {known:.0%} | {' | '.join(cells)} | {' / '.join(shares)} |")
    return "\n".join(lines) + "\n"


def setting_key(calibration: str, target: float) -> str:
    """Where one completion's measurements are kept in ``complete.json``."""
    return f"{calibration}/{target:g}"


def target_cells(rows: list[dict[str, Any]]) -> str:
    """One table row's measurements over seeds (mean ± std), in the header's column order."""
    def cell(key: str) -> str:
        return mean_std([row[key] for row in rows if row[key] is not None], digits=3)
    return " | ".join(cell(key) for key in (
        "precision_positive", "worst_class_positive", "precision_negative", "worst_class_negative",
        "all_negative_precision", "positives_lost", "recall_positive", "recall_negative", "estimated_precision",
        "fill_rate"))


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± sample std`` (the mean alone for one value; – for none)."""
    if not values:
        return "–"
    spread = f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else ""
    return f"{np.mean(values):.{digits}f}{spread}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--method", default="promptmlr")
    parser.add_argument("--known", nargs="+", type=float, default=list(KNOWN), metavar="P")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), metavar="S")
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS), metavar="T")
    parser.add_argument("--retrain-at", type=float, default=0.95, metavar="T",
                        help="the target whose completed labels are retrained on (one of --targets)")
    parser.add_argument("--review", type=int, default=2000, metavar="N",
                        help="entries revealed (default 2000; 0: no review arms)")
    parser.add_argument("--cross-fit", type=int, default=3, metavar="K", help="complete's --cross-fit (default 3)")
    parser.add_argument("--calibrations", nargs="+", choices=CALIBRATIONS, default=list(CALIBRATIONS),
                        help="complete's --calibration, each measured (default: both)")
    parser.add_argument("--retrain-calibration", choices=CALIBRATIONS, default="cross-fit",
                        help="the calibration whose completed labels are retrained on (one of --calibrations)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (fixed: they change float rounding)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for every run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.retrain_at not in args.targets:
        raise SystemExit(f"complete.py: error: --retrain-at {args.retrain_at} must be one of --targets")
    if args.retrain_calibration not in args.calibrations:
        raise SystemExit(f"complete.py: error: --retrain-calibration {args.retrain_calibration} must be one of "
                         f"--calibrations")
    torch.set_num_threads(args.threads)
    results = []
    for seed in args.seeds:
        for known in args.known:
            results.append(one_setting(args, known, seed, log=print))
            write_json_atomic(args.out / "complete.json", {"settings": vars(args), "results": results})
            write_text_atomic(args.out / "complete.md", tables(results, args))
    print(tables(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
