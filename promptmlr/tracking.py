"""Experiment tracking through accelerate's trackers: ``--report-to tensorboard|wandb|mlflow``.

The engine hands ``train.report_to`` to its ``Accelerator(log_with=...)``, records the resolved run
configuration as hyperparameters, and logs each epoch's losses, metrics and label-recovery
statistics at step = epoch. TensorBoard's event files go to ``RUN_DIR/tensorboard/promptmlr/``
(accelerate adds the project name); the W&B project is ``promptmlr`` with runs named after their
folder; MLflow reads ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME``. Several
trackers may be named at once, separated by commas. The tracker packages are optional extras;
naming one that is not installed fails when the config is resolved, before anything runs.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from promptmlr.errors import ConfigError, check_choice

PROJECT_NAME = "promptmlr"
TENSORBOARD_DIR = "tensorboard"
# tracker -> (module that must be importable, what to install)
TRACKERS = {"tensorboard": ("tensorboard", "promptmlr[tensorboard]"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow")}


def parse_trackers(report_to: str) -> list[str]:
    """``"none"`` -> ``[]``; ``"tensorboard,wandb"`` -> both, each checked to be a tracker."""
    names = [name.strip() for name in report_to.split(",") if name.strip() and name.strip() != "none"]
    for name in names:
        check_choice("train.report_to (--report-to)", name, ("none", *TRACKERS))
    return names


def check_trackers(report_to: str) -> None:
    """Refuse a tracker whose package is not installed, saying what to install."""
    for name in parse_trackers(report_to):
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--report-to {name} needs the {module} package: pip install '{package}'")


def flat_hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 0.002, ...}`` with only the scalar types every tracker takes
    (lists and None become strings)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def epoch_values(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one epoch's history record, recovery statistics as ``recovery/<name>``."""
    values = {key: float(value) for key, value in record.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"}
    for key, value in (record.get("recovery") or {}).items():
        if isinstance(value, (int, float)):
            values[f"recovery/{key}"] = float(value)
    return values
