"""Reading finished run folders (see :mod:`promptmlr.runs`): :func:`load_run` turns one into a flat
:class:`RunRecord`, :func:`load_predictions` reads its ``predictions_test.npz``. A folder that lacks a
file, or holds one that cannot be read, is a :class:`~promptmlr.errors.ReportError` naming it."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from promptmlr import migrations
from promptmlr.errors import ReportError, one_line
from promptmlr.runs import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, PREDICTIONS_STEM, read_metrics
from promptmlr.settings import load_yaml

PREDICTIONS_FILE = f"{PREDICTIONS_STEM}.npz"
REQUIRED_FILES = (CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE)


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
    """A run's test predictions: scores to rank (the file's ``logits``, or its ``scores``, probabilities,
    when it has no logits) and labels ``[N, C]`` (1/-1/0), classes and images."""

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
            hint = " (a run without a test split has none)"
        raise ReportError(f"run folder {run_dir} is incomplete: missing {', '.join(missing)}{hint}")
    return run_dir


def load_run(run_dir: str | Path) -> RunRecord:
    """The :class:`RunRecord` of a finished run folder."""
    run_dir = check_run_dir(run_dir)
    metrics = read_metrics(run_dir)
    config = migrations.without_header(migrations.upgrade("run-config", _read_yaml(run_dir / CONFIG_FILE),
                                                          run_dir / CONFIG_FILE, ReportError))
    if not isinstance(config, dict):
        raise ReportError(f"{run_dir / CONFIG_FILE} is not a promptmlr run's config (not a mapping)")
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
            header = {key: data[key].item() for key in migrations.HEADER_KEYS if key in data.files}
            migrations.version_of("predictions", header, path, ReportError)
            ranked = data["logits"] if "logits" in data.files else data["scores"]
            scores, labels = np.asarray(ranked, np.float64), np.asarray(data["labels"], np.int64)
            class_names, images = [str(c) for c in data["class_names"]], [str(i) for i in data["images"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ReportError(f"{path} is not a readable predictions file: {one_line(error)}") from None
    if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise ReportError(f"{path}: scores {scores.shape}, labels {labels.shape} and {len(class_names)} class "
                          f"names do not fit together")
    return Predictions(scores, labels, class_names, images)


def _read_yaml(path: Path) -> dict:
    try:
        return load_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise ReportError(f"{path} is not readable YAML: {one_line(error)}") from None
