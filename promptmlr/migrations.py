"""The one place for the past: every file promptmlr writes names its format and version, and older
versions are read here, by steps that turn a record of version N into version N + 1.

==================  ===========================  =======  ============================================
kind                ``format``                   version  file (where the header is)
==================  ===========================  =======  ============================================
prompts             promptmlr-prompts            4        ``best``/``last.safetensors``, exports
                                                          (JSON under the metadata key ``promptmlr``)
checkpoint          promptmlr-checkpoint         3        ``checkpoint.safetensors`` (JSON under the
                                                          metadata key ``promptmlr-checkpoint``)
run-config          promptmlr-run-config         5        a run folder's ``config.yaml`` (top-level keys)
metrics             promptmlr-metrics            1        a run folder's ``metrics.json`` (top-level keys)
evaluation          promptmlr-evaluation         1        ``eval_<dataset>_<split>.json`` (top-level keys)
predictions         promptmlr-predictions        1        ``predictions_test.npz`` (two 0-d arrays)
text-embeddings     promptmlr-text-embeddings    1        ``export --format text-embeddings``
                                                          ``.safetensors`` (metadata strings)
feature-cache       promptmlr-feature-cache      1        ``<cache>/<key>/meta.json``
synthetic-dataset   promptmlr-synthetic-dataset  1        a synthetic dataset's ``meta.json``
completion          promptmlr-completion         1        ``complete``'s ``<stem>.completion.json``
out-of-fold         promptmlr-out-of-fold        1        ``out_of_fold-k<K>-<which>.safetensors`` in a
                                                          run folder (JSON under the metadata key
                                                          ``promptmlr-out-of-fold``)
onnx-tagger         promptmlr-onnx-tagger        1        ``export --format onnx``'s ``.onnx`` (JSON
                                                          under the metadata key ``promptmlr``)
==================  ===========================  =======  ============================================

**Rule: whenever what a file holds, or what its keys mean, changes, bump its version here and add
the step from the previous version to its entry in** :data:`FORMATS`. A record is read through :func:`upgrade`,
which applies the steps in order, so the code after it sees the current version only. A record
newer than this promptmlr reads is refused, naming the file and the fix (upgrade promptmlr). A
feature cache's version must also go into its key (:func:`promptmlr.cache.cache_key`) when bumped,
so that caches of two versions never share a folder (a cache that cannot be read is rebuilt).

Each format is read in one place: prompts in :func:`promptmlr.prompt_files.read_header`, checkpoints
in :func:`promptmlr.checkpoint.load_checkpoint`, run configs in
:func:`promptmlr.config.load_run_config` (the report reads a few keys through :func:`upgrade` too),
metrics in :func:`promptmlr.runs.read_metrics`, predictions in
:func:`promptmlr.report.loading.load_predictions`, caches in :meth:`promptmlr.cache.FeatureCache.open`,
synthetic datasets by their loader (:mod:`promptmlr.data.synthetic`), out-of-fold scores in
:func:`promptmlr.completion.load_out_of_fold`, ONNX taggers by :class:`promptmlr.tagger.OnnxTagger`.
Text embeddings, evaluation results and completion reports are read by other tools.

A record without ``format_version`` is version 1 (run configs, metrics, cache and dataset metadata
were written without a header at first; a version-1 checkpoint names it ``version``). Prompts files
and checkpoints always name their format, and a header without one is refused. Files that are plain
tables or arrays for other tools carry no header and have no version: ``predictions_test.csv``,
``summary.md``, text embeddings as ``.npy``.

Version 2 of prompts and run configs:

* Options a version-1 record lacks did not exist when it was written, and it ran without them:
  such an option takes the value the method had before it (:data:`V1_OPTION_VALUES`), not
  today's default. A record that holds no options at all is left as it is.
* Renamed keys (:data:`RENAMED_IN_V2`, :data:`RENAMED_OPTIONS_IN_V2`): the learning-rate warm-up is
  ``train.lr_warmup_epochs``; the epochs trained on known labels only, before the terms that fill
  unknown labels join, are ``known_only_epochs`` everywhere.
* Prompts only: a version-1 header does not record how a ResNet's attention pool was resized off
  its native input size; it was resized as ``bicubic-antialiased`` (:data:`V1_POOL_RESIZE`), where
  it was resized at all (:func:`pool_resize_learned_on`).

Version 2 of checkpoints names its version ``format_version``, as every other file does.

Version 3 of run configs records the run's data identity (``data_identity``), and version 3 of
checkpoints the configuration the run started with; older files are read without them.

Version 3 of prompts and version 4 of run configs: methods train as their authors' code does, with
options that did not exist before (PositiveCoOp's positive offsets, the scale its vectors are drawn
at, its contexts' learning rate). An older record lacks them and ran without them: each takes the
value it had before (:data:`OPTION_VALUES_BEFORE_AUTHORS_TRAINING`), as in version 2.

Version 4 of prompts and version 5 of run configs: SST, DSRB and CLSL train as their authors' code
does, through options that did not exist before (SST's and DSRB's head and loss terms, DSRB's
blend, CLSL's layers and recovery). An older record takes the values it ran with
(:data:`OPTION_VALUES_BEFORE_HCP_AND_CLSL_TRAINING`); the options promptmlr and SARL gained then
default to what they did before, so their records need none.

Checkpoint format 0 is a pickle, ``checkpoint.pt`` (:data:`LEGACY_CHECKPOINT`): pickles can run
code, so it is recognised and refused (:func:`refuse_legacy_checkpoint`), never read.

Settings a user gives are read with today's keys. A ``--config`` file without a header may be an
earlier run's ``config.yaml``: its keys' old names are translated (:func:`upgrade_settings`), while
the options it leaves out take today's defaults, as in any settings file. An old name given on the
command line (``--set``, ``overrides``) is refused, naming the new one (:func:`new_name`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from promptmlr import __version__
from promptmlr.errors import ConfigError, PromptMLRError

HEADER_KEYS = ("format", "format_version")
Step = Callable[[dict], dict]


class FormatError(PromptMLRError, ValueError):
    """A file of another format, or of a version this promptmlr cannot read; the message names it."""


# ------------------------------------------------------------------------------- version 1 -> 2
V1_DEFAULT_METHOD = "promptmlr"  # model.method of a version-1 run config that names none
# an option a version-1 record lacks takes the value the method had before the option existed
V1_OPTION_VALUES: dict[str, dict[str, Any]] = {
    "dualcoop": {"mean_token": False},
    "positivecoop": {"mean_token": False},
    # the blender's settings were fixed at these values in version 1
    "promptmlr": {"enhance": False, "instance_alpha": 0.5, "prototype_beta": 0.5, "regions": 2,
                  "prototype_momentum": 0.9},
    "sarl": {"enhance": False, "instance_alpha": 0.5, "prototype_beta": 0.5, "regions": 2,
             "prototype_momentum": 0.9},
}
# method -> {option: the value it had before it existed}: options added with the authors' training
# (prompts version 3, run configs version 4)
OPTION_VALUES_BEFORE_AUTHORS_TRAINING: dict[str, dict[str, Any]] = {
    "positivecoop": {"positive_offset": False, "embedding_init_std": 0.02, "context_lr_scale": 1.0},
}
# the same for the options added when SST, DSRB and CLSL took their authors' training (prompts version
# 4, run configs version 5); the options promptmlr and SARL gained then default to what they did before
OPTION_VALUES_BEFORE_HCP_AND_CLSL_TRAINING: dict[str, dict[str, Any]] = {
    "sst": {"head": "clip", "contrastive_pairs": "positive", "ramp_epochs": 0.0, "cooccurrence_head": "ordered",
            "cooccurrence_targets": "known", "pseudo_targets": "pseudo_only", "memory": "filled"},
    "dsrb": {"head": "clip", "contrastive_pairs": "positive", "ramp_epochs": 0.0, "blend_shares": "fixed",
             "blend_targets": "hard", "blend_entries": "blended", "blend_features": "unit",
             "region_peak": "attention", "prototype_region": "own", "prototype_update": "moving_average"},
    "clsl": {"enhancement": "promptmlr", "template": "a photo of a {}.", "recovered_label": "sigmoid",
             "recovery_loss": "bce"},
}
# run-config section (dotted path) -> {old key: new key}
RENAMED_IN_V2: dict[str, dict[str, str]] = {
    "train": {"warmup_epochs": "lr_warmup_epochs"},
    "train.recovery": {"warmup_epochs": "known_only_epochs"},
}
# method -> {old option: new option}
RENAMED_OPTIONS_IN_V2: dict[str, dict[str, str]] = {
    "sst": {"warmup_epochs": "known_only_epochs"},
    "dsrb": {"warmup_epochs": "known_only_epochs"},
    "clsl": {"warmup_epochs": "known_only_epochs"},
    "promptmlr": {"blend_warmup_epochs": "known_only_epochs"},
    "sarl": {"blend_warmup_epochs": "known_only_epochs"},
}
V1_POOL_RESIZE = "bicubic-antialiased"  # open_clip's resize of a position embedding


def _rename(section: Any, renamed: dict[str, str]) -> None:
    """``section``'s old keys under their new names (a key given under both names is left for the
    reader to refuse)."""
    if isinstance(section, dict):
        for old, new in renamed.items():
            if old in section and new not in section:
                section[new] = section.pop(old)


def _with_option_values(table: dict[str, dict[str, Any]], method: Any, options: Any) -> Any:
    """``options`` with the value each option of ``table[method]`` had before it existed, where they
    lack it; options that are empty (a record that holds none) are left as they are."""
    if not isinstance(options, dict) or not options or not isinstance(method, str):
        return options
    added = table.get(method, {})
    return {**{key: value for key, value in added.items() if key not in options}, **options}


def _rename_settings_v1_to_v2(values: dict) -> dict:
    """The renamed keys of a run config's sections and of its method's options."""
    for path, renamed in RENAMED_IN_V2.items():
        section: Any = values
        for part in path.split("."):
            section = section.get(part) if isinstance(section, dict) else None
        _rename(section, renamed)
    model = values.get("model")
    if isinstance(model, dict):
        method = model.get("method", V1_DEFAULT_METHOD)
        if isinstance(method, str):
            _rename(model.get("options"), RENAMED_OPTIONS_IN_V2.get(method, {}))
    return values


def _run_config_v1_to_v2(config: dict) -> dict:
    model = config.get("model")
    if isinstance(model, dict) and "options" in model:
        method = model.get("method", V1_DEFAULT_METHOD)
        model["options"] = _with_option_values(V1_OPTION_VALUES, method, model["options"])
    return _rename_settings_v1_to_v2(config)


def _prompts_v1_to_v2(header: dict) -> dict:
    method = header.get("method")
    if "method_config" in header:
        header["method_config"] = _with_option_values(V1_OPTION_VALUES, method, header["method_config"])
        if isinstance(method, str):
            _rename(header["method_config"], RENAMED_OPTIONS_IN_V2.get(method, {}))
    backbone = header.get("backbone")
    if isinstance(backbone, dict):
        backbone.setdefault("attnpool_resize", V1_POOL_RESIZE)
    return header


def _checkpoint_v1_to_v2(header: dict) -> dict:
    header.pop("version", None)  # now format_version
    return header


def _records_added_in_v3(record: dict) -> dict:
    """Version 3 of run configs and checkpoints adds records that a version-2 file lacks and its
    reader does without: the run's data identity (``config.yaml``) and its starting configuration
    (the checkpoint). Nothing else changed, so the step keeps the record as it is."""
    return record


def _prompts_adding(table: dict[str, dict[str, Any]]) -> Step:
    """The step of a prompts header to the version that added the options of ``table``: each takes
    the value it had before it existed."""
    def step(header: dict) -> dict:
        if "method_config" in header:
            header["method_config"] = _with_option_values(table, header.get("method"), header["method_config"])
        return header
    return step


def _run_config_adding(table: dict[str, dict[str, Any]]) -> Step:
    """The step of a run config to the version that added the options of ``table``, as
    :func:`_prompts_adding`."""
    def step(config: dict) -> dict:
        model = config.get("model")
        if isinstance(model, dict) and "options" in model:
            model["options"] = _with_option_values(table, model.get("method", V1_DEFAULT_METHOD), model["options"])
        return config
    return step


def pool_resize_learned_on(backbone: dict, resized_here: bool) -> str | None:
    """How the attention pool of the backbone a prompts header records was resized (None: not at
    all), given whether a backbone of that spec resizes its pool at the size it is loaded at. Only
    a version-1 header's :data:`V1_POOL_RESIZE` depends on it: it applies where the pool was resized."""
    recorded = backbone.get("attnpool_resize")
    return None if recorded == V1_POOL_RESIZE and not resized_here else recorded


# --------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    name: str  # the value of the header's ``format``
    version: int  # the version this promptmlr writes
    steps: dict[int, Step] = field(default_factory=dict)  # version N -> the step to N + 1
    named: bool = False  # every version names its format: a record without one is refused
    old_version_key: str | None = None  # where version 1 kept its version, if not in format_version


FORMATS: dict[str, Format] = {
    "prompts": Format("promptmlr-prompts", 4, {1: _prompts_v1_to_v2,
                                               2: _prompts_adding(OPTION_VALUES_BEFORE_AUTHORS_TRAINING),
                                               3: _prompts_adding(OPTION_VALUES_BEFORE_HCP_AND_CLSL_TRAINING)},
                      named=True),
    "checkpoint": Format("promptmlr-checkpoint", 3, {1: _checkpoint_v1_to_v2, 2: _records_added_in_v3},
                         named=True, old_version_key="version"),
    "run-config": Format("promptmlr-run-config", 5,
                         {1: _run_config_v1_to_v2, 2: _records_added_in_v3,
                          3: _run_config_adding(OPTION_VALUES_BEFORE_AUTHORS_TRAINING),
                          4: _run_config_adding(OPTION_VALUES_BEFORE_HCP_AND_CLSL_TRAINING)}),
    "metrics": Format("promptmlr-metrics", 1),
    "evaluation": Format("promptmlr-evaluation", 1),
    "predictions": Format("promptmlr-predictions", 1),
    "text-embeddings": Format("promptmlr-text-embeddings", 1),
    "feature-cache": Format("promptmlr-feature-cache", 1),
    "synthetic-dataset": Format("promptmlr-synthetic-dataset", 1),
    "completion": Format("promptmlr-completion", 1),
    "out-of-fold": Format("promptmlr-out-of-fold", 1),
    "onnx-tagger": Format("promptmlr-onnx-tagger", 1, named=True),
}


def header(kind: str) -> dict[str, Any]:
    """``{"format": ..., "format_version": ...}`` of the version of ``kind`` this promptmlr writes."""
    spec = FORMATS[kind]
    return {"format": spec.name, "format_version": spec.version}


def version_of(kind: str, record: dict, source: str | Path, error: type[PromptMLRError] = FormatError) -> int:
    """The format version of ``record`` (read from ``source``), checked to be one this promptmlr reads."""
    spec = FORMATS[kind]
    found = record.get("format")
    if found != spec.name and (found is not None or spec.named):
        what = f"format {found!r}" if found is not None else "no format"
        raise error(f"{source} is not a {spec.name} file (its header names {what})")
    version = record.get("format_version")
    if version is None:
        version = record.get(spec.old_version_key, 1) if spec.old_version_key else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise error(f"{source}: its {spec.name} format version {version!r} is not a version number; "
                    f"the file is damaged")
    if version > spec.version:
        raise error(f"{source} is {spec.name} version {version}, newer than promptmlr {__version__} reads "
                    f"(up to version {spec.version}); upgrade promptmlr to read it")
    return version


def upgrade(kind: str, record: Any, source: str | Path, error: type[PromptMLRError] = FormatError) -> Any:
    """``record`` (the plain dict a file of ``kind`` holds, read from ``source``) at the current
    version, with its header; the record given is not changed. What is not a dict is returned as it
    is, for the reader's own checks to refuse."""
    if not isinstance(record, dict):
        return record
    version = version_of(kind, record, source, error)
    spec = FORMATS[kind]
    if version < spec.version:
        record = copy.deepcopy(record)
        for step in range(version, spec.version):
            record = spec.steps[step](record)
    return {**record, **header(kind)}


def without_header(record: Any) -> Any:
    """``record`` without ``format`` and ``format_version`` (what is not a dict, as it is)."""
    if not isinstance(record, dict):
        return record
    return {key: value for key, value in record.items() if key not in HEADER_KEYS}


def upgrade_settings(values: Any, source: str | Path) -> Any:
    """A settings file a user passes (``--config``), without its header. One with a header is a
    run's ``config.yaml``, upgraded as such; one without is the user's own, read with today's
    options (those it leaves out take today's defaults), its keys' old names translated, as it may
    be an earlier run's ``config.yaml``."""
    if not isinstance(values, dict):
        return values
    if any(key in values for key in HEADER_KEYS):
        return without_header(upgrade("run-config", values, source, ConfigError))
    return _rename_settings_v1_to_v2(copy.deepcopy(values))


def new_name(key: str, fields: Iterable[str]) -> str | None:
    """The name among ``fields`` (a config's keys) that ``key`` was renamed to, if any: an old name
    given today is refused naming the new one."""
    fields = set(fields)
    tables = [*RENAMED_IN_V2.values(), *RENAMED_OPTIONS_IN_V2.values()]
    return next((table[key] for table in tables if table.get(key) in fields), None)


# ------------------------------------------------------------------------- checkpoint format 0
LEGACY_CHECKPOINT = "checkpoint.pt"  # the first checkpoint format: a pickle
PICKLE_STARTS = (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05")  # torch.save's zip, pickle protocols 2, 4, 5


def looks_like_pickle(path: Path) -> bool:
    """Whether ``path`` starts as a pickle or ``torch.save`` file does."""
    try:
        with open(path, "rb") as handle:
            return handle.read(2) in PICKLE_STARTS
    except OSError:
        return False


def refuse_legacy_checkpoint(checkpoint: Path, error: type[PromptMLRError] = FormatError) -> None:
    """Refuse to resume a run folder whose only checkpoint is a pickle (``checkpoint.pt`` beside
    ``checkpoint``): pickles can run code, so it is never loaded, and the run is not silently
    started over either. Called before any work is done."""
    legacy = Path(checkpoint).with_name(LEGACY_CHECKPOINT)
    if legacy.is_file() and not Path(checkpoint).is_file():
        raise error(f"{legacy} is a pickle: pickles can run code, so promptmlr never loads them; start the run "
                    f"again in a new --out")
