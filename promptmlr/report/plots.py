"""The report's figures: per-class AP bars, precision-recall curves and mAP against the known
proportion. Each is a PNG drawn on matplotlib's Agg canvas (no pyplot, no display, no change to the
process's matplotlib backend), written atomically.

Curves and AP come from :mod:`promptmlr.metrics`: only 1 counts as positive, 0 (unknown) entries are
left out of a class's ranking, and a class without a positive has no AP (shown as ``n/a``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from promptmlr.errors import ReportError
from promptmlr.files import atomic_write
from promptmlr.metrics import per_class_average_precision, precision_recall_curve
from promptmlr.report.tables import METRIC_LABELS, Aggregate, series

PR_CLASS_LIMIT = 20  # up to this many classes, every class gets a PR curve
PR_EXTREMES = 6  # otherwise the 6 best and the 6 worst classes by AP


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
