"""Run configuration: dataclasses with defaults, per-dataset YAML files in ``configs/``, overrides.

Precedence, lowest first: the dataclass defaults below, ``configs/<dataset>.yaml`` (shipped
per-dataset recipes), a ``--config FILE`` of the user's, then command-line flags and
``--set section.key=value``. The resolved config is written into every run folder, so a run can be
read back and repeated exactly.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from promptmlr.errors import ConfigError
from promptmlr.files import shipped_file
from promptmlr.losses import LossConfig


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    options: dict[str, Any] = field(default_factory=dict)  # loader options, e.g. {difficult: ignore}
    known: float = 1.0  # proportion of training labels kept (the rest set to unknown)
    mask_seed: int = 0
    mask_scheme: str = "hcp"  # hcp (SST/SARB/HCP-MLR-PL files) or dualcoop (torch.rand)
    val_fraction: float = 0.1  # carved from the training split for model selection
    val_seed: int = 0


@dataclass
class ModelConfig:
    backbone: str = "sandbox"
    image_size: int | None = None  # None: the backbone's own resolution
    dense_mode: str = "value"
    method: str = "promptmlr"
    options: dict[str, Any] = field(default_factory=dict)  # the method's config fields
    descriptions: str | None = "auto"  # auto: prompts/<dataset>.yaml if shipped; none; or a file


@dataclass
class RecoveryConfig:
    """Label recovery (see :mod:`promptmlr.recovery`)."""

    enabled: bool = False
    warmup_epochs: int = 2
    thresholds: str = "fixed"  # fixed | prior
    positive_threshold: float = 0.9
    negative_threshold: float = 0.05
    prior_fraction: float = 0.5  # with thresholds=prior: share of the expected positives recovered
    prototype_weight: float = 0.0  # SST cross-image transfer (0 disables)
    cooccurrence_weight: float = 0.0  # SST intra-image transfer (0 disables)
    pseudo_weight: float = 0.5  # loss weight of a recovered label (true labels weigh 1)


@dataclass
class CacheConfig:
    """Frozen-encoder feature cache (see :mod:`promptmlr.cache`)."""

    enabled: str = "auto"  # auto: on when it fits budget_gb; on; off
    views: int = 1  # 1: the eval view; more: augmented views, one drawn per epoch
    budget_gb: float = 8.0
    directory: str | None = None  # default: ~/.cache/promptmlr/features
    dtype: str = "float16"


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 128
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    ema_decay: float = 0.0  # 0 disables the EMA of learnable parameters
    seed: int = 0
    num_workers: int = 2
    randaugment: bool = False
    cutout: bool = False
    select_on: str = "val"  # val | test (the anchors' habit; flagged in the results)
    threshold: float = 0.5
    loss: LossConfig = field(default_factory=LossConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def merge(config: Any, values: dict[str, Any], where: str) -> Any:
    """A copy of dataclass ``config`` with ``values`` (a nested dict) applied; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(fields)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, f"{where}.{key}")
        elif isinstance(current, dict):
            changes[key] = {**current, **(value or {})}
        else:
            changes[key] = _coerce(value, current, f"{where}.{key}")
    return dataclasses.replace(config, **changes)


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Accept YAML/CLI values for a field whose default is ``current`` (ints where floats go, etc.)."""
    if current is None or value is None or isinstance(value, type(current)):
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, bool) or not isinstance(current, (int, float, str)):
        raise ConfigError(f"{where}: expected {type(current).__name__}, got {value!r}")
    try:
        return type(current)(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: expected {type(current).__name__}, got {value!r}") from error


class _ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans (``true``/``false`` only): under PyYAML's default YAML 1.1
    rules ``off``, ``on``, ``yes`` and ``no`` are booleans, so ``train.cache.enabled: off`` or
    ``--set train.mixed_precision=no`` would arrive as False instead of the words those settings take."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse config YAML (a file or a ``--set`` value) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_ConfigLoader)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error


def shipped_config_path(dataset: str) -> Path | None:
    """The ``configs/<dataset>.yaml`` recipe shipped with promptmlr, if there is one."""
    return shipped_file("configs", f"{dataset}.yaml")


def parse_assignment(text: str) -> dict[str, Any]:
    """``train.lr=0.01`` -> ``{"train": {"lr": 0.01}}`` (the value parsed as YAML)."""
    key, equals, raw = text.partition("=")
    if not equals or not key:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    value: Any = load_yaml(raw) if raw else None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def resolve_config(dataset: str | None = None, config_file: str | Path | None = None,
                   overrides: list[dict[str, Any]] = ()) -> RunConfig:
    """Defaults <- shipped ``configs/<dataset>.yaml`` <- ``config_file`` <- ``overrides`` (in order)."""
    config = RunConfig()
    user = read_yaml(config_file) if config_file else {}
    dataset = dataset or user.get("data", {}).get("dataset") or config.data.dataset
    shipped = shipped_config_path(dataset)
    if shipped:
        config = merge(config, read_yaml(shipped), str(shipped))
    config = merge(config, user, str(config_file)) if user else config
    config = merge(config, {"data": {"dataset": dataset}}, "dataset")
    for override in overrides:
        config = merge(config, override, "command line")
    return config


def load_run_config(path: str | Path) -> RunConfig:
    """Read back the ``config.yaml`` a run folder holds."""
    return merge(RunConfig(), read_yaml(path), str(path))
