"""Reports on finished runs: per-class AP bars, precision-recall curves, mAP against the known
proportion, and a Markdown summary (``promptmlr report RUN_DIR ... --out DIR``).

Three layers, so that each can be used (and tested) alone:

* **loading** -- :func:`load_run` reads a run folder (see :mod:`promptmlr.runs`) into a flat
  :class:`RunRecord`; :func:`load_predictions` reads its ``predictions_test.npz``;
* **aggregation** -- :func:`aggregate` groups records by dataset, backbone, method and known
  proportion and takes the mean and standard deviation over seeds; :func:`runs_table`,
  :func:`known_table` and :func:`aggregate_table` turn records and groups into Markdown. No plotting
  library is needed for any of this;
* **plotting** -- :func:`plot_per_class_ap`, :func:`plot_precision_recall` and
  :func:`plot_map_vs_known` draw PNGs with matplotlib's Agg canvas (no pyplot, no display, no
  change to the process's matplotlib backend).

:func:`write_report` does all three for a list of run folders. ``tools/bench/accuracy.py`` uses the
same loading, aggregation and plotting for its benchmark tables.

Precision-recall curves and per-class AP follow :mod:`promptmlr.metrics`: only 1 counts as
positive, 0 (unknown) entries are left out of a class's ranking, and a class without a positive
has no AP (shown as ``n/a``).
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from promptmlr.errors import ReportError, one_line
from promptmlr.files import atomic_write, write_text_atomic
from promptmlr.metrics import per_class_average_precision
from promptmlr.runs import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, PREDICTIONS_STEM

PREDICTIONS_FILE = f"{PREDICTIONS_STEM}.npz"
REQUIRED_FILES = (CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE)
REPORT_FILE = "report.md"
MAP_VS_KNOWN_FILE = "map_vs_known.png"
PER_CLASS_AP_FILE = "per_class_ap.png"
PR_CURVES_FILE = "pr_curves.png"

METHOD_ORDER = ("zeroshot", "linear", "dualcoop", "positivecoop", "sst", "dsrb", "clsl", "sarl", "promptmlr")
GROUP_KEYS = ("dataset", "backbone", "method", "known")
AGGREGATED_METRICS = ("test_mAP", "test_mAP_voc2012", "test_CF1", "test_OF1", "recovery_precision_positive",
                      "recovery_recall_positive", "recovery_precision_negative")
METRIC_LABELS = {
    "test_mAP": "test mAP",
    "test_mAP_voc2012": "test mAP (VOC2012 AP)",
    "test_CF1": "CF1",
    "test_OF1": "OF1",
    "recovery_precision_positive": "recovered + precision",
    "recovery_recall_positive": "recovered + recall",
    "recovery_precision_negative": "recovered − precision",
    "trainable_parameters": "trainable params",
    "train_seconds": "train s",
    "total_seconds": "wall s",
}
METRIC_DIGITS = {"recovery_precision_positive": 3, "recovery_recall_positive": 3, "recovery_precision_negative": 3,
                 "trainable_parameters": 0, "train_seconds": 1, "total_seconds": 1}  # decimals in tables; 2 otherwise
PR_CLASS_LIMIT = 20  # up to this many classes, every class gets a PR curve
PR_EXTREMES = 6  # otherwise the 6 best and the 6 worst classes by AP


# ------------------------------------------------------------------------------------------ loading
@dataclass
class RunRecord:
    """What the reports say about one run: where it is, what it was and how it scored.

    Test metrics are those of the selected epoch (``metrics.json``'s ``best`` record), in percent.
    Recovery fields come from the last epoch that recovered labels (None when recovery was off);
    their precisions are fractions in [0, 1].
    """

    run_dir: str = ""
    dataset: str = ""
    method: str = ""
    backbone: str = ""
    known: float = 1.0
    seed: int = 0
    mask_seed: int | None = None
    selected_on: str = "val"
    best_epoch: int = 0
    epochs: int = 0
    val_mAP: float | None = None  # validation mAP at the selected epoch (None without a validation split)
    test_mAP: float | None = None
    test_mAP_voc2012: float | None = None
    test_CF1: float | None = None
    test_OF1: float | None = None
    trainable_parameters: int | None = None
    train_seconds: float | None = None
    total_seconds: float | None = None
    mask_sha256: str = ""
    recovered_positive: int | None = None
    recovered_negative: int | None = None
    recovery_precision_positive: float | None = None
    recovery_precision_negative: float | None = None
    recovery_recall_positive: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@dataclass
class Predictions:
    """A run's test predictions: scores to rank (the logits; probabilities in files written before
    logits were saved) and labels ``[N, C]`` (1/-1/0), classes and images."""

    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    images: list[str]


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path if it holds every file a report needs; otherwise a :class:`ReportError`
    that names the folder and the missing files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        hint = ""
        if METRICS_FILE in missing and (run_dir / CHECKPOINT_FILE).is_file():
            hint = f" (an interrupted run? continue it with: promptmlr tune --out {run_dir} --resume)"
        elif missing == [PREDICTIONS_FILE]:
            hint = " (a run without a test split, or made before test predictions were saved as .npz)"
        raise ReportError(f"run folder {run_dir} is incomplete: missing {', '.join(missing)}{hint}")
    return run_dir


def load_run(run_dir: str | Path) -> RunRecord:
    """The :class:`RunRecord` of a finished run folder."""
    run_dir = check_run_dir(run_dir)
    metrics = _read_json(run_dir / METRICS_FILE)
    config = _read_yaml(run_dir / CONFIG_FILE)
    for key in ("method", "dataset", "best", "history"):
        if key not in metrics:
            raise ReportError(f"{run_dir / METRICS_FILE} has no {key!r} entry; is it a promptmlr run's metrics file?")
    best, history = metrics["best"], metrics["history"]
    recovery = next((record["recovery"] for record in reversed(history) if record.get("recovery")), None) or {}
    return RunRecord(
        run_dir=str(run_dir),
        dataset=metrics["dataset"],
        method=metrics["method"],
        backbone=metrics.get("backbone", ""),
        known=float(metrics.get("known", config.get("data", {}).get("known", 1.0))),
        seed=int(metrics.get("seed", config.get("train", {}).get("seed", 0))),
        mask_seed=config.get("data", {}).get("mask_seed"),
        selected_on=metrics.get("selected_on", ""),
        best_epoch=int(metrics.get("best_epoch", best.get("epoch", 0))),
        epochs=max((int(record.get("epoch", 0)) for record in history), default=0),
        val_mAP=best.get("val_mAP"),
        test_mAP=best.get("test_mAP"),
        test_mAP_voc2012=best.get("test_mAP_voc2012"),
        test_CF1=best.get("test_CF1"),
        test_OF1=best.get("test_OF1"),
        trainable_parameters=metrics.get("trainable_parameters"),
        train_seconds=metrics.get("train_seconds"),
        total_seconds=metrics.get("total_seconds"),
        mask_sha256=metrics.get("mask_sha256", ""),
        recovered_positive=recovery.get("recovered_positive"),
        recovered_negative=recovery.get("recovered_negative"),
        recovery_precision_positive=recovery.get("precision_positive"),
        recovery_precision_negative=recovery.get("precision_negative"),
        recovery_recall_positive=recovery.get("recall_positive"),
    )


def load_predictions(run_dir: str | Path) -> Predictions:
    """The arrays of ``RUN_DIR/predictions_test.npz``."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise ReportError(f"run folder {run_dir} is incomplete: missing {PREDICTIONS_FILE}")
    try:
        with np.load(path, allow_pickle=False) as data:
            ranked = data["logits"] if "logits" in data.files else data["scores"]
            scores, labels = np.asarray(ranked, np.float64), np.asarray(data["labels"], np.int64)
            class_names, images = [str(c) for c in data["class_names"]], [str(i) for i in data["images"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ReportError(f"{path} is not a readable predictions file: {one_line(error)}") from None
    if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise ReportError(f"{path}: scores {scores.shape}, labels {labels.shape} and {len(class_names)} class "
                          f"names do not fit together")
    return Predictions(scores, labels, class_names, images)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"{path} is not readable JSON: {one_line(error)}") from None


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise ReportError(f"{path} is not readable YAML: {one_line(error)}") from None


# -------------------------------------------------------------------------------------- aggregation
@dataclass
class Aggregate:
    """The runs that share dataset, backbone, method and known proportion (differing in seed).

    ``mean[m]``/``std[m]`` are over the runs that have metric ``m`` (None when none has it); ``std`` is
    the sample standard deviation (ddof=1), None for fewer than two values.
    """

    dataset: str
    backbone: str
    method: str
    known: float
    seeds: list[int] = field(default_factory=list)
    runs: int = 0
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value(record: Any, key: str) -> Any:
    return record[key] if isinstance(record, Mapping) else getattr(record, key)


def method_sort_key(method: str) -> tuple[int, str]:
    """The published methods in their usual order, anything else after them alphabetically."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def aggregate(records: Iterable[RunRecord | Mapping[str, Any]],
              metrics: Sequence[str] = AGGREGATED_METRICS) -> list[Aggregate]:
    """Group ``records`` (RunRecords or mappings with the same keys) by dataset, backbone, method and
    known proportion; mean and sample std of each metric over each group's seeds. Sorted by dataset,
    backbone, method (published order) and known."""
    groups: dict[tuple, list] = {}
    for record in records:
        key = (str(_value(record, "dataset")), str(_value(record, "backbone")), str(_value(record, "method")),
               round(float(_value(record, "known")), 6))
        groups.setdefault(key, []).append(record)
    results = []
    for (dataset, backbone, method, known), members in groups.items():
        group = Aggregate(dataset, backbone, method, known, sorted(int(_value(r, "seed")) for r in members),
                          len(members))
        for metric in metrics:
            values = [float(v) for v in (_value(r, metric) for r in members) if v is not None and not _is_nan(v)]
            group.mean[metric] = float(np.mean(values)) if values else None
            group.std[metric] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        results.append(group)
    return sorted(results, key=lambda g: (g.dataset, g.backbone, method_sort_key(g.method), g.known))


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def series_label(group: Aggregate, groups: Sequence[Aggregate]) -> str:
    """The method's name, plus dataset and backbone when the groups span more than one of them."""
    parts = [group.method]
    if len({g.dataset for g in groups}) > 1:
        parts.append(group.dataset)
    if len({g.backbone for g in groups}) > 1:
        parts.append(group.backbone)
    return " · ".join(parts)


def series(groups: Sequence[Aggregate]) -> dict[str, list[Aggregate]]:
    """Groups by line of the mAP-vs-known plot (one per method, dataset and backbone), known ascending."""
    lines: dict[str, list[Aggregate]] = {}
    for group in groups:
        lines.setdefault(series_label(group, groups), []).append(group)
    return {label: sorted(members, key=lambda g: g.known) for label, members in lines.items()}


def format_mean_std(mean: float | None, std: float | None, digits: int = 2) -> str:
    """``71.23 ± 0.45``, just ``71.23`` without a std, ``–`` without a value."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _known_label(known: float) -> str:
    return f"{known:.0%}" if abs(known * 100 - round(known * 100)) < 1e-9 else f"{known:.1%}"


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or _is_nan(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


RUN_COLUMNS = ("run", "dataset", "method", "backbone", "known", "seed", "selected on", "best epoch", "test mAP",
               "test mAP (VOC2012 AP)", "CF1", "OF1", "trainable params", "train s", "mask sha256")


def runs_table(records: Sequence[RunRecord], names: Sequence[str] | None = None) -> str:
    """One Markdown row per run: what it was, its test metrics at the selected epoch, its cost."""
    lines = ["| " + " | ".join(RUN_COLUMNS) + " |", "|" + " --- |" * len(RUN_COLUMNS)]
    for index, record in enumerate(records):
        name = names[index] if names else Path(record.run_dir).name
        seed = str(record.seed)
        if record.mask_seed is not None and record.mask_seed != record.seed:
            seed += f" (mask {record.mask_seed})"
        parameters = f"{record.trainable_parameters:,}" if record.trainable_parameters is not None else "–"
        seconds = f"{record.train_seconds:.1f}" if record.train_seconds is not None else "–"
        cells = [name, record.dataset, record.method, record.backbone, _known_label(record.known), seed,
                 record.selected_on, str(record.best_epoch), _cell(record.test_mAP), _cell(record.test_mAP_voc2012),
                 _cell(record.test_CF1), _cell(record.test_OF1), parameters, seconds, record.mask_sha256[:12]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def known_table(groups: Sequence[Aggregate], metric: str = "test_mAP") -> str:
    """``metric`` as method × known proportion: mean ± std over seeds, the run count where it varies."""
    knowns = sorted({g.known for g in groups})
    counts = {g.runs for g in groups}
    lines = ["| method | " + " | ".join(_known_label(k) for k in knowns) + " |",
             "| --- |" + " --- |" * len(knowns)]
    for label, members in series(groups).items():
        by_known = {g.known: g for g in members}
        cells = []
        for known in knowns:
            group = by_known.get(known)
            if group is None:
                cells.append("")
                continue
            cell = format_mean_std(group.mean.get(metric), group.std.get(metric))
            cells.append(cell + (f" (n={group.runs})" if len(counts) > 1 else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def aggregate_table(groups: Sequence[Aggregate], metrics: Sequence[str] = AGGREGATED_METRICS) -> str:
    """One Markdown row per group with every metric as mean ± std; metrics no group has are left out."""
    shown = [m for m in metrics if any(g.mean.get(m) is not None for g in groups)]
    lines = ["| method | known | runs | seeds | " + " | ".join(METRIC_LABELS.get(m, m) for m in shown) + " |",
             "| --- | --- | --- | --- |" + " --- |" * len(shown)]
    for label, members in series(groups).items():
        for group in members:
            cells = [format_mean_std(group.mean.get(m), group.std.get(m), METRIC_DIGITS.get(m, 2)) for m in shown]
            seeds = ", ".join(map(str, group.seeds))
            lines.append(f"| {label} | {_known_label(group.known)} | {group.runs} | {seeds} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- per-run curves
def precision_recall_curve(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at each distinct score threshold of one class, highest score first, up to
    the threshold that reaches full recall. The area under it, ``sum((r[i] - r[i-1]) * p[i])``, is the
    class's non-interpolated AP (exactly, without tied scores).

    ``targets`` are 1/-1/0; 0 (unknown) entries are left out, only 1 counts as positive, as in
    :func:`promptmlr.metrics.average_precision`. Empty arrays when the class has no positive.
    """
    known = targets != 0
    scores, positives = np.asarray(scores, np.float64)[known], targets[known] == 1
    if not positives.any():
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], positives[order].astype(np.float64)
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    recall = true_positives / hits.sum()
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # one point per threshold
    recall, precision = recall[last_of_tie], precision[last_of_tie]
    stop = int(np.argmax(recall >= 1.0)) + 1  # lower thresholds add false positives only (scikit-learn's cut)
    return recall[:stop], precision[:stop]


def select_pr_classes(class_names: Sequence[str], ap: np.ndarray, requested: Sequence[str] | None = None,
                      limit: int = PR_CLASS_LIMIT, extremes: int = PR_EXTREMES) -> list[int]:
    """Class indices to draw PR curves for: ``requested`` by name, else all up to ``limit`` classes,
    else the ``extremes`` best and worst by AP (classes without a positive left out)."""
    if requested:
        unknown = [name for name in requested if name not in class_names]
        if unknown:
            raise ReportError(f"no class(es) {', '.join(map(repr, unknown))} in this run; its classes: "
                              f"{', '.join(class_names)}")
        return [list(class_names).index(name) for name in requested]
    valid = [i for i in range(len(class_names)) if not np.isnan(ap[i])]
    if len(valid) <= limit:
        return valid
    ranked = sorted(valid, key=lambda i: -ap[i])
    return ranked[:extremes] + ranked[-extremes:]


# ----------------------------------------------------------------------------------------- plotting
def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, independent of pyplot and of the current backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    return atomic_write(path, lambda temp: figure.savefig(temp, format="png", bbox_inches="tight"))


def plot_per_class_ap(class_names: Sequence[str], ap: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Horizontal bars of per-class AP (fractions in [0, 1], NaN for 'no positive'), with the mAP."""
    ap = np.asarray(ap, dtype=np.float64)
    count = len(class_names)
    figure = _figure(7.0, max(2.5, 0.26 * count + 1.2))
    axes = figure.subplots()
    positions = np.arange(count)
    values = np.nan_to_num(ap * 100, nan=0.0)
    bars = axes.barh(positions, values, color="#4c72b0")
    for bar, value in zip(bars, ap):
        label = "n/a" if np.isnan(value) else f"{100 * value:.1f}"
        axes.text(min(bar.get_width(), 100) + 0.8, bar.get_y() + bar.get_height() / 2, label, va="center",
                  fontsize=7)
    if not np.all(np.isnan(ap)):
        mean = 100 * np.nanmean(ap)
        axes.axvline(mean, color="#c44e52", linestyle="--", linewidth=1, label=f"mAP {mean:.2f}")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_yticks(positions, labels=list(class_names), fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 108)
    axes.set_xlabel("average precision (%)")
    axes.set_title(title or "per-class AP", fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, Path(path))


def plot_precision_recall(scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | Path,
                          classes: Sequence[int] | None = None, title: str = "") -> Path:
    """A grid of precision-recall curves, one panel per class in ``classes`` (default: all)."""
    classes = list(range(len(class_names))) if classes is None else list(classes)
    ap = per_class_average_precision(scores, labels)
    columns = min(4, max(1, len(classes)))
    rows = max(1, math.ceil(len(classes) / columns))
    figure = _figure(3.0 * columns, 2.6 * rows + 0.5)
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for axes, column in zip(grid, classes):
        recall, precision = precision_recall_curve(scores[:, column], labels[:, column])
        if len(recall):
            axes.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", color="#4c72b0")
            axes.set_title(f"{class_names[column]} (AP {100 * ap[column]:.1f})", fontsize=9)
        else:
            axes.set_title(f"{class_names[column]} (no positive)", fontsize=9)
        axes.set_xlim(0, 1.02)
        axes.set_ylim(0, 1.05)
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=7)
    for axes in grid[len(classes):]:
        axes.set_visible(False)
    for axes in grid[(rows - 1) * columns:]:
        axes.set_xlabel("recall", fontsize=8)
    for axes in grid[::columns]:
        axes.set_ylabel("precision", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, Path(path))


def plot_map_vs_known(groups: Sequence[Aggregate], path: str | Path, metric: str = "test_mAP",
                      title: str = "") -> Path:
    """``metric`` against the known proportion, one line per method (mean ± std over seeds as error bars;
    lines are shifted sideways by a fraction of a percentage point so that their bars do not overlap)."""
    figure = _figure(6.5, 4.2)
    axes = figure.subplots()
    lines = series(groups)
    for index, (label, members) in enumerate(lines.items()):
        dodge = (index - (len(lines) - 1) / 2) * 0.5  # shift lines apart a little so error bars stay readable
        points = [(g.known * 100 + dodge, g.mean.get(metric), g.std.get(metric)) for g in members
                  if g.mean.get(metric) is not None]
        if not points:
            continue
        x, y, error = zip(*points)
        error = [e if e is not None else 0.0 for e in error]
        axes.errorbar(x, y, yerr=error if any(error) else None, marker="o", markersize=4, capsize=3, label=label)
    axes.set_xlim(-3, 103)
    axes.set_xticks(np.arange(0, 101, 10))
    axes.set_xlabel("known labels (%)")
    axes.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes.set_title(title or f"{METRIC_LABELS.get(metric, metric)} vs known proportion (mean ± std over seeds)",
                   fontsize=9)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    return _save(figure, Path(path))


# ------------------------------------------------------------------------------------------- report
@dataclass
class ReportResult:
    out_dir: Path
    markdown: Path
    files: list[Path]
    records: list[RunRecord]
    groups: list[Aggregate]
    text: str


def run_names(run_dirs: Sequence[str | Path]) -> list[str]:
    """A distinct, file-system-safe name per run (its folder name; ``-2``, ``-3`` for repeats)."""
    names, seen = [], {}
    for run_dir in run_dirs:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(run_dir).resolve().name) or "run"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def write_run_plots(record: RunRecord, predictions: Predictions, out_dir: str | Path,
                    pr_classes: Sequence[str] | None = None, name: str | None = None) -> list[Path]:
    """``out_dir/per_class_ap.png`` and ``out_dir/pr_curves.png`` for one run."""
    out_dir = Path(out_dir)
    ap = per_class_average_precision(predictions.scores, predictions.labels)
    heading = (f"{name or Path(record.run_dir).name}: {record.method} on {record.dataset}, "
               f"{_known_label(record.known)} known, seed {record.seed} (test set, epoch {record.best_epoch})")
    bars = plot_per_class_ap(predictions.class_names, ap, out_dir / PER_CLASS_AP_FILE, heading)
    chosen = select_pr_classes(predictions.class_names, ap, pr_classes)
    curves = plot_precision_recall(predictions.scores, predictions.labels, predictions.class_names,
                                   out_dir / PR_CURVES_FILE, chosen, heading)
    return [bars, curves]


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, pr_classes: Sequence[str] | None = None,
                 metric: str = "test_mAP", log=print) -> ReportResult:
    """Plots per run (in ``out_dir/<run name>/``), mAP vs known across runs and ``out_dir/report.md``.

    Every run folder is read before anything is written, so an incomplete one fails fast.
    """
    if not run_dirs:
        raise ReportError("no run folders given")
    records = [load_run(run_dir) for run_dir in run_dirs]
    predictions = [load_predictions(run_dir) for run_dir in run_dirs]
    out_dir = Path(out_dir)
    names = run_names(run_dirs)
    files: list[Path] = []
    sections = []
    for record, prediction, name in zip(records, predictions, names):
        log(f"plotting {record.run_dir} -> {out_dir / name}")
        plots = write_run_plots(record, prediction, out_dir / name, pr_classes, name)
        files += plots
        links = " ".join(f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots)
        sections.append(f"### {name}\n\n`{record.run_dir}`\n\n{links}\n")
    groups = aggregate(records)
    files.append(plot_map_vs_known(groups, out_dir / MAP_VS_KNOWN_FILE, metric))
    text = "\n".join([
        "# promptmlr report", "",
        f"{len(records)} run(s). Test metrics are those of each run's selected epoch, in percent; AP is "
        "non-interpolated unless marked VOC2012 (area under the precision envelope).", "",
        "## Runs", "", runs_table(records, names), "",
        f"## {METRIC_LABELS.get(metric, metric)} by method and known proportion", "",
        "Mean ± sample standard deviation over the runs (seeds) that share dataset, backbone, method and "
        "known proportion.", "",
        known_table(groups, metric), "",
        f"![{MAP_VS_KNOWN_FILE}]({MAP_VS_KNOWN_FILE})", "",
        "## All metrics by group", "", aggregate_table(groups), "",
        "## Per-run plots", "", *sections,
    ])
    markdown = write_text_atomic(out_dir / REPORT_FILE, text)
    return ReportResult(out_dir, markdown, [markdown, *files], records, groups, text)
