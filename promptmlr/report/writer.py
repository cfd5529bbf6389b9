"""``promptmlr report RUN_DIR ... --out DIR``: plots per run, mAP against the known proportion across
runs, and ``report.md`` with the tables. Every run folder is read before anything is written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from promptmlr.errors import ReportError
from promptmlr.files import write_text_atomic
from promptmlr.metrics import per_class_average_precision
from promptmlr.report.loading import Predictions, RunRecord, load_predictions, load_run
from promptmlr.report.plots import plot_map_vs_known, plot_per_class_ap, plot_precision_recall, select_pr_classes
from promptmlr.report.tables import (
    METRIC_LABELS,
    Aggregate,
    aggregate,
    aggregate_table,
    known_label,
    known_table,
    runs_table,
)

REPORT_FILE = "report.md"
MAP_VS_KNOWN_FILE = "map_vs_known.png"
PER_CLASS_AP_FILE = "per_class_ap.png"
PR_CURVES_FILE = "pr_curves.png"


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
               f"{known_label(record.known)} known, seed {record.seed} (test set, epoch {record.best_epoch})")
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
