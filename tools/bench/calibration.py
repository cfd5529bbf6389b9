"""Calibration of the sandbox against real CLIP RN101: the anchors' published ordering, pass or fail.

    python -m tools.bench.calibration --out bench/calibration
    python -m tools.bench.calibration --out bench/calibration --known 0.1 0.9 --seeds 0   # a quick look
    python -m tools.bench.calibration --out bench/cal-b --backbone B --rows zeroshot linear linear-dense \
        dualcoop positivecoop --known 0.1 0.9   # a candidate sandbox B: every property, no promptmlr

A proxy is worth what it reproduces of the real thing. The anchors (DualCoOp, Sun et al. 2022;
PositiveCoOp, Rawlekar et al. 2024) report, for CLIP RN101 on COCO and VOC, an ordering that no
method of ours takes part in; this script measures the same rows on a dataset and backbone (default:
the synthetic world and the shipped ``sandbox``) and checks each property:

a. zero-shot >= 2 x chance, and at least 15 mAP below the linear probe at 10 % known (real: 52.7 vs 78.9);
b. the linear probe gains 2-10 mAP from 10 % to 90 % known (real: 3.7-4.6);
c. linear on the mean of the dense features >= 0.9 x linear on the global feature, at every known;
d. abs(dualcoop - linear) <= 2 mAP at 10 % and at 90 % known;
e. positivecoop >= dualcoop at 10 % known.

Each row is one :mod:`tools.bench.accuracy` benchmark in ``<out>/<row>/`` (so an interrupted calibration
continues where it stopped); every method runs its own recipe (``configs/methods/<dataset>/``), is
selected on the validation split, and is scored on the test split. ``promptmlr`` is measured and
shown, but no property involves it. Writes ``<out>/calibration.md`` and ``calibration.json``.

Beside the properties, the report splits each row's test mAP at the lowest known proportion by how
many classes a test scene holds (1, 2, 3, 4 or more): where the dense mean falls behind the global
embedding, this says whether it is the lone object on a cluttered background or the crowded scene
that it loses. On the synthetic world it also splits it by the size of a class's object (each
class's AP over all its negatives and only the positives whose largest object of that class is
small, medium or large): whether a row loses the objects that cover a single cell of the grid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from promptmlr.config import resolve_config
from promptmlr.data.protocol import dataset_root, load_split
from promptmlr.data.synthetic import synthetic_scenes
from promptmlr.data.world import NUM_CLASSES, SIZES
from promptmlr.files import write_json_atomic, write_text_atomic
from promptmlr.metrics import mean_average_precision
from promptmlr.report import Predictions, aggregate, load_predictions
from promptmlr.report.loading import PREDICTIONS_FILE
from tools.bench import accuracy

# row name -> (methods, --set overrides): one accuracy benchmark each
ROWS: dict[str, tuple[list[str], list[str]]] = {
    "zeroshot": (["zeroshot"], []),
    "zeroshot-standardized": (["zeroshot"], ["model.options.standardize=true"]),
    "linear": (["linear"], []),
    "linear-dense": (["linear"], ["model.options.features=dense"]),
    "dualcoop": (["dualcoop"], []),
    "positivecoop": (["positivecoop"], []),
    "promptmlr": (["promptmlr"], []),
}
Means = dict[str, dict[float, tuple[float, float | None]]]  # row -> known -> (mean, std)
SCENE_CLASSES = ("1", "2", "3", ">= 4")  # buckets of test scenes by the classes they hold
Breakdown = dict[str, list[float | None]]  # row -> test mAP per bucket of a breakdown (mean over seeds)
OBJECT_SIZES = tuple(SIZES)  # small, medium, large: the world's size words, smallest first


def measure(args: argparse.Namespace) -> tuple[Means, dict[str, list[dict[str, Any]]]]:
    """Run (or read back) every row's benchmark; test mAP mean and std per row and known, and each
    row's runs (as its ``results.json`` lists them)."""
    means: Means = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in args.rows:
        methods, sets = ROWS[row]
        argv = ["--dataset", args.dataset, "--methods", *methods, "--known", *map(str, args.known),
                "--seeds", *map(str, args.seeds), "--out", str(args.out / row)]
        for assignment in [*args.set, *sets]:
            argv += ["--set", assignment]
        if args.backbone:
            argv += ["--backbone", args.backbone]
        if accuracy.main(argv) != 0:
            raise SystemExit(f"calibration.py: the {row} benchmark failed (see {args.out / row}/results.md)")
        runs[row] = json.loads((args.out / row / "results.json").read_text(encoding="utf-8"))["runs"]
        groups = aggregate(runs[row], ["test_mAP"])
        means[row] = {group.known: (group.mean["test_mAP"], group.std["test_mAP"]) for group in groups}
    return means, runs


def map_by_scene_classes(runs: dict[str, list[dict[str, Any]]], known: float) -> Breakdown:
    """Each row's test mAP over the scenes holding 1, 2, 3 and >= 4 classes at ``known``, mean over
    seeds; a bucket without scenes reads None."""
    return _mean_over_seeds(runs, known, _map_per_bucket)


def map_by_object_size(runs: dict[str, list[dict[str, Any]]], known: float, sizes: np.ndarray) -> Breakdown:
    """Each row's test mAP at ``known`` by object size, mean over seeds: for each size, every class's
    AP over all its negatives and only the positives whose largest object of that class has that size
    (the other positives left out, as unknown labels are); a size no object has reads None. ``sizes``
    ``[N, C]``: the index in :data:`OBJECT_SIZES` of the largest object of class ``c`` in test scene
    ``n`` (-1: none), the scene a prediction's image names (``test/<n:06d>.png``)."""
    def per_size(predictions: Predictions) -> list[float]:
        scenes = [Path(image).stem for image in predictions.images]
        if not all(scene.isdigit() and int(scene) < len(sizes) for scene in scenes) \
                or predictions.labels.shape[1] != sizes.shape[1]:
            raise SystemExit(f"calibration.py: predictions of {predictions.labels.shape} labels for images such as "
                             f"{predictions.images[0]} are not of the synthetic test split's {sizes.shape}; "
                             "measure again into a new --out")
        of_image = sizes[[int(scene) for scene in scenes]]
        targets = [np.where((predictions.labels == 1) & (of_image != size), 0, predictions.labels)
                   for size in range(len(OBJECT_SIZES))]
        return [mean_average_precision(predictions.scores, kept) if (kept == 1).any() else np.nan for kept in targets]
    return _mean_over_seeds(runs, known, per_size)


def _mean_over_seeds(runs: dict[str, list[dict[str, Any]]], known: float,
                     per_run: Callable[[Predictions], list[float]]) -> Breakdown:
    """``per_run`` of each row's saved test predictions at ``known``, mean over seeds (NaN -> None). A row
    whose runs at ``known`` did not all save them is left out: a mean over fewer seeds would not compare."""
    table: Breakdown = {}
    for row, row_runs in runs.items():
        folders = [Path(run["run_dir"]) for run in row_runs if run["known"] == known and run.get("run_dir")]
        if not folders or not all((folder / PREDICTIONS_FILE).is_file() for folder in folders):
            continue
        per_seed = [per_run(load_predictions(folder)) for folder in folders]
        table[row] = [None if np.isnan(value) else float(value) for value in np.mean(per_seed, axis=0)]
    return table


def object_sizes_in_test_split(dataset: str) -> np.ndarray | None:
    """``[N, C]``: the size (an index in :data:`OBJECT_SIZES`) of the largest object of each class in
    each test image of the synthetic world, -1 where the class is absent; None for other datasets,
    whose labels say nothing of size."""
    config = resolve_config(dataset)
    if config.data.dataset != "synthetic":
        return None
    scenes = synthetic_scenes(dataset_root(config.data), config.data.test_split)
    sizes = np.full((len(scenes), NUM_CLASSES), -1)
    for row, scene in enumerate(scenes):
        for obj in scene.objects:
            sizes[row, obj.class_index] = max(sizes[row, obj.class_index], OBJECT_SIZES.index(obj.size))
    return sizes


def _map_per_bucket(predictions: Predictions) -> list[float]:
    classes_held = (predictions.labels == 1).sum(1)
    bucket = np.minimum(classes_held, len(SCENE_CLASSES))  # a scene without a class: in no bucket
    return [mean_average_precision(predictions.scores[bucket == n], predictions.labels[bucket == n])
            if (bucket == n).any() else np.nan for n in range(1, len(SCENE_CLASSES) + 1)]


def chance_map(dataset: str) -> float:
    """mAP of random scores on the test split: each class's AP is then its positive rate."""
    config = resolve_config(dataset)
    labels = (load_split(config.data, config.data.test_split).labels == 1).astype(np.float64)  # 1/-1 -> 1/0
    present = labels.sum(0) > 0
    return 100.0 * float(labels.mean(0)[present].mean())


def properties(means: Means, chance: float) -> list[dict[str, Any]]:
    """Each property's verdict with the numbers it rests on (None where a needed row is missing)."""
    def at(row: str, known: float) -> float | None:
        value = means.get(row, {}).get(known)
        return None if value is None else value[0]

    def check(name: str, rule: str, real: str, test: Callable[[], tuple[bool, str]]) -> dict[str, Any]:
        try:
            passed, measured = test()
        except TypeError:  # a None: a known proportion this calibration did not measure
            passed, measured = None, "not measured"
        return {"property": name, "rule": rule, "real_clip_rn101": real, "measured": measured, "pass": passed}

    knowns = sorted(means.get("linear", {}))
    return [
        check("a", "zero-shot >= 2 x chance and <= linear - 15 (10 % known)", "52.7 vs 78.9 (COCO)",
              lambda: (at("zeroshot", 0.1) >= 2 * chance and at("zeroshot", 0.1) <= at("linear", 0.1) - 15,
                       f"zero-shot {at('zeroshot', 0.1):.2f}, chance {chance:.2f}, linear {at('linear', 0.1):.2f}")),
        check("b", "linear gains 2-10 mAP from 10 % to 90 % known", "+3.7 to +4.6",
              lambda: (2 <= at("linear", 0.9) - at("linear", 0.1) <= 10,
                       f"{at('linear', 0.1):.2f} -> {at('linear', 0.9):.2f} "
                       f"({at('linear', 0.9) - at('linear', 0.1):+.2f})")),
        check("c", "linear (mean dense) >= 0.9 x linear (global), every known", "DualCoOp's dense map ~ global",
              lambda: (all(at("linear-dense", k) >= 0.9 * at("linear", k) for k in knowns),
                       ", ".join(f"{k:g}: {at('linear-dense', k) / at('linear', k):.2f}x" for k in knowns))),
        check("d", "abs(dualcoop - linear) <= 2 at 10 % and 90 % known", "78.7 vs 78.9; 83.1 vs 83.5 (COCO)",
              lambda: (all(abs(at("dualcoop", k) - at("linear", k)) <= 2 for k in (0.1, 0.9)),
                       ", ".join(f"{k:g}: {at('dualcoop', k) - at('linear', k):+.2f}" for k in (0.1, 0.9)))),
        check("e", "positivecoop >= dualcoop at 10 % known", "79.8 vs 78.7 (COCO)",
              lambda: (at("positivecoop", 0.1) >= at("dualcoop", 0.1),
                       f"{at('positivecoop', 0.1):.2f} vs {at('dualcoop', 0.1):.2f}")),
    ]


def render(means: Means, verdicts: list[dict[str, Any]], chance: float, command: str,
           by_classes: Breakdown | None = None, by_classes_known: float | None = None,
           by_size: Breakdown | None = None) -> str:
    knowns = sorted({known for row in means.values() for known in row})
    header = "| row | " + " | ".join(f"{k:g} known" for k in knowns) + " |"
    lines = [header, "|" + " --- |" * (len(knowns) + 1)]
    for row, values in means.items():
        cells = []
        for known in knowns:
            mean, std = values.get(known, (None, None))
            cells.append("" if mean is None else f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}"))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"Chance (random scores) on the test split: {chance:.2f} mAP.", "",
              "| property | rule | real CLIP RN101 | measured | pass |", "| --- | --- | --- | --- | --- |"]
    for v in verdicts:
        verdict = {True: "pass", False: "**fail**", None: "not measured"}[v["pass"]]
        lines.append(f"| {v['property']} | {v['rule']} | {v['real_clip_rn101']} | {v['measured']} | {verdict} |")
    if by_classes:
        lines += ["", f"Test mAP by the classes a test scene holds ({by_classes_known:g} known, mean over seeds):", "",
                  "| row | " + " | ".join(SCENE_CLASSES) + " |", "|" + " --- |" * (len(SCENE_CLASSES) + 1)]
        lines += [f"| {row} | " + " | ".join("" if v is None else f"{v:.2f}" for v in values) + " |"
                  for row, values in by_classes.items()]
    if by_size:
        lines += ["", f"Test mAP by the size of a class's object ({by_classes_known:g} known, mean over seeds; each "
                      "class's AP over all its negatives and the positives of that size):", "",
                  "| row | " + " | ".join(OBJECT_SIZES) + " |", "|" + " --- |" * (len(OBJECT_SIZES) + 1)]
        lines += [f"| {row} | " + " | ".join("" if v is None else f"{v:.2f}" for v in values) + " |"
                  for row, values in by_size.items()]
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--backbone", metavar="SPEC", help="default: the dataset config's (sandbox for synthetic)")
    parser.add_argument("--known", nargs="+", type=float, default=[0.1, 0.5, 0.9], metavar="P")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), metavar="ROW",
                        help=f"rows to measure (default: all; {', '.join(ROWS)}); a property whose rows are "
                             "left out reads 'not measured'")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="applied to every row (for example a shorter train.epochs for a quick look)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    means, runs = measure(args)
    chance = chance_map(args.dataset)
    verdicts = properties(means, chance)
    lowest_known = min(args.known)
    by_classes = map_by_scene_classes(runs, lowest_known)
    sizes = object_sizes_in_test_split(args.dataset) if by_classes else None  # only where predictions were saved
    by_size = None if sizes is None else map_by_object_size(runs, lowest_known, sizes)
    text = render(means, verdicts, chance, " ".join(["python -m tools.bench.calibration", *argv]),
                  by_classes, lowest_known, by_size)
    write_json_atomic(args.out / "calibration.json", {"means": {row: {str(k): v for k, v in values.items()}
                                                                for row, values in means.items()},
                                                      "chance_map": chance, "properties": verdicts,
                                                      "map_by_scene_classes": {"known": lowest_known,
                                                                               "buckets": list(SCENE_CLASSES),
                                                                               "rows": by_classes},
                                                      "map_by_object_size": None if by_size is None else
                                                      {"known": lowest_known, "sizes": list(OBJECT_SIZES),
                                                       "rows": by_size}})
    write_text_atomic(args.out / "calibration.md", text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
