"""Reports on finished runs: per-class AP bars, precision-recall curves, mAP against the known
proportion, and a Markdown summary (``promptmlr report RUN_DIR ... --out DIR``).

One job per module, so that each can be used (and tested) alone:

* :mod:`~promptmlr.report.loading` -- :func:`load_run` reads a run folder (see :mod:`promptmlr.runs`)
  into a flat :class:`RunRecord`; :func:`load_predictions` reads its ``predictions_test.npz``;
* :mod:`~promptmlr.report.tables` -- :func:`aggregate` groups records by dataset, backbone, method and
  known proportion and takes the mean and standard deviation over seeds; :func:`runs_table`,
  :func:`known_table` and :func:`aggregate_table` turn records and groups into Markdown. No plotting
  library is needed for any of this;
* :mod:`~promptmlr.report.plots` -- :func:`plot_per_class_ap`, :func:`plot_precision_recall` and
  :func:`plot_map_vs_known` draw PNGs with matplotlib's Agg canvas;
* :mod:`~promptmlr.report.writer` -- :func:`write_report` does all three for a list of run folders.

``tools/bench/accuracy.py`` uses the same loading, aggregation and plotting for its benchmark tables.
The precision-recall curve itself is :func:`promptmlr.metrics.precision_recall_curve`.
"""

from promptmlr.errors import ReportError
from promptmlr.report.loading import (
    PREDICTIONS_FILE,
    REQUIRED_FILES,
    Predictions,
    RunRecord,
    check_run_dir,
    load_predictions,
    load_run,
)
from promptmlr.report.plots import (
    PR_CLASS_LIMIT,
    PR_EXTREMES,
    plot_map_vs_known,
    plot_per_class_ap,
    plot_precision_recall,
    select_pr_classes,
)
from promptmlr.report.tables import (
    AGGREGATED_METRICS,
    GROUP_KEYS,
    METRIC_DIGITS,
    METRIC_LABELS,
    RUN_COLUMNS,
    Aggregate,
    aggregate,
    aggregate_table,
    format_mean_std,
    known_label,
    known_table,
    method_order,
    method_sort_key,
    runs_table,
    series,
    series_label,
)
from promptmlr.report.writer import (
    MAP_VS_KNOWN_FILE,
    PER_CLASS_AP_FILE,
    PR_CURVES_FILE,
    REPORT_FILE,
    ReportResult,
    run_names,
    write_report,
    write_run_plots,
)

__all__ = [
    "AGGREGATED_METRICS", "GROUP_KEYS", "MAP_VS_KNOWN_FILE", "METRIC_DIGITS", "METRIC_LABELS", "PER_CLASS_AP_FILE",
    "PREDICTIONS_FILE", "PR_CLASS_LIMIT", "PR_CURVES_FILE", "PR_EXTREMES", "REPORT_FILE", "REQUIRED_FILES",
    "RUN_COLUMNS", "Aggregate", "Predictions", "ReportError", "ReportResult", "RunRecord", "aggregate",
    "aggregate_table", "check_run_dir", "format_mean_std", "known_label", "known_table", "load_predictions",
    "load_run", "method_order", "method_sort_key", "plot_map_vs_known", "plot_per_class_ap", "plot_precision_recall",
    "run_names", "runs_table", "select_pr_classes", "series", "series_label", "write_report", "write_run_plots",
]
