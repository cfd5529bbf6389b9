"""Run configuration: the three sections, per-dataset YAML files in ``configs/``, overrides.

Each section's dataclass lives beside the code it configures: ``data`` (:class:`DataConfig`, the
partial-label protocol), ``model`` (:class:`ModelConfig`, backbone and method) and ``train``
(:class:`TrainConfig`, the engine, with its ``loss``, ``recovery`` and ``cache`` parts).

Precedence, lowest first: the dataclass defaults, ``configs/<dataset>.yaml`` (shipped per-dataset
recipes), the method's recipes ``configs/methods/<method>.yaml`` and
``configs/methods/<dataset>/<method>.yaml`` (its settings validated on that dataset's validation
split), a ``--config FILE`` of the user's, then command-line flags and ``--set
section.key=value``. The shipped files merged are listed in the config's ``recipes``.
Resolution checks everything it can without reading data or loading weights: every key and type,
the method's own options against its ``Config`` (filled in completely), and the tracker named by
``train.report_to``. The resolved config is written into every run folder, so
a run can be read back and repeated exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from promptmlr.data.protocol import DataConfig
from promptmlr.engine import TrainConfig
from promptmlr.errors import ConfigError
from promptmlr.files import shipped_file
from promptmlr.migrations import upgrade, upgrade_settings, without_header
from promptmlr.models.factory import ModelConfig, method_class, method_options
from promptmlr.options import option
from promptmlr.recovery import check_recovery_weights
from promptmlr.runs import DATA_IDENTITY
from promptmlr.settings import load_yaml, merge, read_yaml
from promptmlr.tracking import check_trackers

# settings that change where or how fast a run goes, not what it computes: a run resumed on another
# machine may change them, and benchmarks comparing runs ignore them
LOGISTICS = frozenset({"train.cache.directory", "train.cache.budget_gb", "train.cache.batch_size",
                       "train.num_workers", "train.eval_batch_size", "train.report_to"})


@dataclass
class RunConfig:
    data: DataConfig = option(help="the dataset and its partial-label protocol (data.*)", factory=DataConfig)
    model: ModelConfig = option(help="the backbone and the method (model.*)", factory=ModelConfig)
    train: TrainConfig = option(help="the engine: optimisation, evaluation, loss, recovery, cache (train.*)",
                                factory=TrainConfig)
    recipes: list[str] = option(help="the shipped recipe files merged, in order (set by resolution)", factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shipped_config_path(dataset: str) -> Path | None:
    """The ``configs/<dataset>.yaml`` recipe shipped with promptmlr, if there is one."""
    return shipped_file("configs", f"{dataset}.yaml")


def method_recipe_paths(dataset: str, method: str) -> list[Path]:
    """The method's shipped recipes, general first: ``configs/methods/<method>.yaml`` (what holds
    for the method anywhere), then ``configs/methods/<dataset>/<method>.yaml`` (its settings chosen
    on that dataset's validation split). Either may be absent."""
    found = (shipped_file("configs/methods", f"{method}.yaml"),
             shipped_file(f"configs/methods/{dataset}", f"{method}.yaml"))
    return [path for path in found if path]


def parse_assignment(text: str) -> dict[str, Any]:
    """``train.lr=0.01`` -> ``{"train": {"lr": 0.01}}`` (the value parsed as YAML)."""
    key, equals, raw = text.partition("=")
    if not equals or not key:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value: Any = load_yaml(raw) if raw else None
    except yaml.YAMLError as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"--set {text}: the value is not valid YAML ({reason}); quote it, e.g. "
                          f"{key}='\"{raw}\"'") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def resolve_config(dataset: str | None = None, config_file: str | Path | None = None,
                   overrides: list[dict[str, Any]] = ()) -> RunConfig:
    """Defaults <- shipped ``configs/<dataset>.yaml`` <- the method's recipes <- ``config_file`` <-
    ``overrides`` (in order). The method, and so its recipes, is the one the last layer names:
    the layers are applied once without recipes to find it, then again with them."""
    user = upgrade_settings(_settings_of(read_yaml(config_file)), config_file) if config_file else {}
    dataset = dataset or user.get("data", {}).get("dataset") or RunConfig().data.dataset
    shipped = [path for path in [shipped_config_path(dataset)] if path]
    method = _layered(shipped, user, config_file, dataset, overrides).model.method
    recipes = shipped + method_recipe_paths(dataset, method)
    config = _layered(recipes, user, config_file, dataset, overrides)
    return checked(dataclasses.replace(config, recipes=[_shipped_name(path) for path in recipes]))


def _layered(recipes: list[Path], user: dict[str, Any], config_file: str | Path | None, dataset: str,
             overrides: list[dict[str, Any]]) -> RunConfig:
    config = RunConfig()
    for path in recipes:
        config = apply_layer(config, read_yaml(path), str(path))
    config = apply_layer(config, user, str(config_file)) if user else config
    config = apply_layer(config, {"data": {"dataset": dataset}}, "dataset")
    for override in overrides:
        config = apply_layer(config, override, "command line")
    return config


def _shipped_name(path: Path) -> str:
    """``configs/methods/synthetic/dualcoop.yaml``: a shipped file named the same wherever installed."""
    parts = path.parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("configs"):])


def apply_layer(config: RunConfig, values: dict[str, Any], where: str) -> RunConfig:
    """``config`` with one layer of settings merged in. When the layer changes ``model.method``, the
    options set so far lose the keys that belong to the old method only: a previous run's
    ``config.yaml`` holds every option of its method. Options both methods have (``n_ctx``) carry
    over, and a key neither has, or one given in this very layer, stays, to be refused by
    :func:`checked` (so a typo is never lost).
    Switching A -> B -> A keeps only what B kept."""
    merged = merge(config, values, where)
    old, new = (_option_names(method) for method in (config.model.method, merged.model.method))
    if merged.model.method != config.model.method and new is not None:
        model = values.get("model") if isinstance(values, dict) else None
        given = set(model.get("options") or {}) if isinstance(model, dict) else set()
        options = {key: value for key, value in merged.model.options.items()
                   if key in new or key in given or key not in (old or set())}
        merged = dataclasses.replace(merged, model=dataclasses.replace(merged.model, options=options))
    return merged


def _option_names(method: str) -> set[str] | None:
    """The option names of a registered method; None for a name that is not one (yet: a later layer
    may correct it, and :func:`checked` refuses it if none does)."""
    try:
        return {field.name for field in dataclasses.fields(method_class(method).Config)}
    except ConfigError:
        return None


def checked(config: RunConfig, trackers: bool = True, where: str = "config", new_run: bool = True) -> RunConfig:
    """``config`` validated as a whole: every section rebuilt from its final values (so a config
    changed in Python is checked like one read from YAML), the method's options complete and
    checked against its ``Config``, cross-field rules, and, with ``trackers``, the experiment
    trackers it names installed. The rules about what a run selects on hold for ``new_run``s; a
    finished run's record is read back as it ran."""
    config = merge(RunConfig(), config.to_dict(), where)
    options = method_options(config.model.method, config.model.options)
    check_recovery_weights(config.train.recovery)
    recovery = config.train.recovery
    if recovery.enabled and recovery.thresholds == "calibrated" and config.data.val_fraction == 0:
        raise ConfigError("train.recovery.thresholds calibrated sets its thresholds on the validation split; "
                          "set data.val_fraction above 0 or use thresholds fixed or prior")
    method = method_class(config.model.method)
    if getattr(method.Config(**options), "fits_on_validation", bool)() and config.data.val_fraction == 0:
        raise ConfigError(f"model.options.fusion validated chooses method {config.model.method}'s branch weights on "
                          f"the validation split; set data.val_fraction above 0 or model.options.fusion mean")
    # selecting on a split that does not exist would label the last epoch "selected on val"; a
    # method with nothing to train selects nothing, so it may use every training image
    selects = new_run and method.learns
    if selects and config.train.select_on == "val" and config.data.val_fraction == 0:
        raise ConfigError("train.select_on val picks the epoch with the best validation mAP, but data.val_fraction "
                          "is 0 (no validation split); set data.val_fraction above 0 (e.g. 0.1), or --select-on "
                          "test (flagged as such in the results)")
    if selects and config.train.select_on == "test" and not config.data.test_split:  # else epoch 1 is "selected"
        raise ConfigError("train.select_on test picks the epoch with the best test mAP, but data.test_split is null "
                          "(no test split); select on val (the default), or name a test split")
    if trackers:
        check_trackers(config.train.report_to)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, options=options))


def load_run_config(path: str | Path) -> RunConfig:
    """Read back the ``config.yaml`` a run folder holds, of any format version (read as it was
    trained: :mod:`promptmlr.migrations`). Trackers are checked only when the run is resumed:
    evaluating a run logged to W&B elsewhere needs no wandb here."""
    return run_config_from(_read_run_record(path), path)


def run_config_from(record: Any, source: str | Path) -> RunConfig:
    """A run's configuration from the record its ``config.yaml`` (or checkpoint) holds, of any
    format version, checked as :func:`load_run_config` checks it."""
    values = without_header(upgrade("run-config", record, source, ConfigError))
    if isinstance(values, dict) and not values.keys() & {"data", "model", "train"}:
        raise ConfigError(f"{source} holds none of data, model, train: it is not a promptmlr run's config; "
                          f"restore it from the run's copy, or start the run again")
    return checked(merge(RunConfig(), _settings_of(values), str(source)), trackers=False, new_run=False)


def recorded_data_identity(path: str | Path) -> dict[str, Any] | None:
    """The identity of the data a run was trained on, as its ``config.yaml`` records it (written
    by :func:`promptmlr.runs.write_config`); None for a run from before it was recorded."""
    record = _read_run_record(path)
    identity = record.get(DATA_IDENTITY) if isinstance(record, dict) else None
    return identity if isinstance(identity, dict) else None


def _read_run_record(path: str | Path) -> Any:
    record = read_yaml(path)
    if record is None or record == {}:
        raise ConfigError(f"{path} is empty: it is not a promptmlr run's config; restore it from the run's copy, "
                          f"or start the run again")
    return record


def _settings_of(values: Any) -> Any:
    """A run's config record without the record of its data, which describes that run and is no
    setting (an earlier run's ``config.yaml`` given as ``--config`` holds one)."""
    if isinstance(values, dict) and DATA_IDENTITY in values:
        return {key: value for key, value in values.items() if key != DATA_IDENTITY}
    return values
