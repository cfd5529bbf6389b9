"""Aggregation and Markdown tables: :func:`aggregate` groups run records by dataset, backbone, method
and known proportion and takes the mean and sample standard deviation over seeds; :func:`runs_table`,
:func:`known_table` and :func:`aggregate_table` turn records and groups into Markdown. No plotting
library is needed here.

Methods appear in the order of the method registry (:data:`promptmlr.models.factory.METHODS`): the
built-ins in results-table order, then plug-ins in registration order, then any other name (a run of
a method this process has not registered) alphabetically.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from promptmlr.report.loading import RunRecord

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
RUN_COLUMNS = ("run", "dataset", "method", "backbone", "known", "seed", "selected on", "best epoch", "test mAP",
               "test mAP (VOC2012 AP)", "CF1", "OF1", "trainable params", "train s", "mask sha256")


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


def method_order() -> list[str]:
    """Every registered method in table order: the built-ins, then plug-ins."""
    from promptmlr.models.factory import METHODS  # imported here: the registry pulls in torch

    return METHODS.names()


def method_sort_key(method: str, order: Sequence[str] | None = None) -> tuple[int, str]:
    """Registered methods in ``order`` (default: :func:`method_order`), any other after them
    alphabetically."""
    order = list(method_order() if order is None else order)
    return (order.index(method), "") if method in order else (len(order), method)


def _value(record: Any, key: str) -> Any:
    return record[key] if isinstance(record, Mapping) else getattr(record, key)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def aggregate(records: Iterable[RunRecord | Mapping[str, Any]],
              metrics: Sequence[str] = AGGREGATED_METRICS) -> list[Aggregate]:
    """Group ``records`` (RunRecords or mappings with the same keys) by dataset, backbone, method and
    known proportion; mean and sample std of each metric over each group's seeds. Sorted by dataset,
    backbone, method (registry order) and known."""
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
    order = method_order()
    return sorted(results, key=lambda g: (g.dataset, g.backbone, method_sort_key(g.method, order), g.known))


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


def known_label(known: float) -> str:
    """A known proportion as a percentage: ``10%``, or ``12.5%`` when it is not a whole percent."""
    return f"{known:.0%}" if abs(known * 100 - round(known * 100)) < 1e-9 else f"{known:.1%}"


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or _is_nan(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


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
        cells = [name, record.dataset, record.method, record.backbone, known_label(record.known), seed,
                 record.selected_on, str(record.best_epoch), _cell(record.test_mAP), _cell(record.test_mAP_voc2012),
                 _cell(record.test_CF1), _cell(record.test_OF1), parameters, seconds, record.mask_sha256[:12]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def known_table(groups: Sequence[Aggregate], metric: str = "test_mAP") -> str:
    """``metric`` as method × known proportion: mean ± std over seeds, the run count where it varies."""
    knowns = sorted({g.known for g in groups})
    counts = {g.runs for g in groups}
    lines = ["| method | " + " | ".join(known_label(k) for k in knowns) + " |",
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
            lines.append(f"| {label} | {known_label(group.known)} | {group.runs} | {seeds} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)
