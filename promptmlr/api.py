"""The Python API: what the ``promptmlr`` commands do, as functions (``promptmlr.tune`` and friends).

Keyword arguments mirror the command-line flags (``tune(dataset="voc2007", data_root=..., known=0.1)``
is ``promptmlr tune --dataset voc2007 --data-root ... --known 0.1``); anything else goes in
``overrides``, a nested dict (``{"train": {"lr": 0.01}}``) or ``--set``-style strings
(``["train.lr=0.01"]``). Each function returns a typed result and writes what the command writes;
the CLI only parses arguments and prints these results.

``tune`` goes config -> data (mask, validation split) -> frozen backbone -> method -> engine -> run
folder (:mod:`promptmlr.runs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from accelerate.utils import broadcast_object_list, set_seed

from promptmlr import completion, migrations
from promptmlr.backbones import FrozenCLIP, list_backbones
from promptmlr.backbones.factory import BACKBONE_ALIASES, BACKBONE_SOURCES, check_image_size, create_backbone
from promptmlr.cache import check_cache_directory
from promptmlr.checkpoint import CheckpointError, load_checkpoint
from promptmlr.config import (
    LOGISTICS,
    RunConfig,
    apply_layer,
    checked,
    load_run_config,
    parse_assignment,
    recorded_data_identity,
    resolve_config,
    run_config_from,
)
from promptmlr.data.custom import custom_format
from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.protocol import (
    DataConfig,
    MaskedTraining,
    Splits,
    check_images_exist,
    dataset_root,
    load_split,
    load_splits,
    masked_training_split,
    split_options,
    training_splits,
)
from promptmlr.data.registry import DATASETS
from promptmlr.data.textfiles import DatasetError
from promptmlr.engine import PhaseHook, Trainer, learnable_state, process_state
from promptmlr.errors import RunInterrupted, UsageError, check_choice, check_number, one_line
from promptmlr.files import atomic_write, check_writable_target, write_json_atomic, write_texts_together
from promptmlr.inference import Prediction, expand_images, predict_images
from promptmlr.metrics import evaluate as compute_metrics
from promptmlr.metrics import sigmoid
from promptmlr.migrations import refuse_legacy_checkpoint
from promptmlr.models import ModelConfig, MultiLabelMethod, build_method
from promptmlr.models.factory import METHODS, build_backbone, method_class, resolve_descriptions
from promptmlr.options import ConfigRow, describe
from promptmlr.prompt_files import export_text_embeddings, read_header, refuse_text_embeddings, save_prompts
from promptmlr.prompt_files import load_prompts as load_prompts_file
from promptmlr.runs import (
    BEST_PROMPTS,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LAST_PROMPTS,
    METRICS_FILE,
    PREDICTIONS_STEM,
    check_out,
    config_differences,
    data_sha256,
    default_run_dir,
    is_folder,
    prompts_path,
    run_files,
    run_lock,
    split_metrics,
    summary_table,
    write_config,
    write_metrics,
    write_predictions,
    write_summary,
)
from promptmlr.scoring import dataset_batches, score
from promptmlr.tagger import (
    DEFAULT_OPSET,
    OnnxTagger,
    check_opset,
    export_tagger,
    predict_with_tagger,
    require_export_packages,
    tagger_metadata,
)
from promptmlr.tracking import check_trackers

Overrides = Mapping[str, Any] | Sequence[str | Mapping[str, Any]] | None
Log = Callable[[str], None]


@dataclass
class TuneResult:
    """A finished ``tune`` run: its folder and files, its metrics and the learned method (with the
    selected epoch's weights)."""

    run_dir: Path
    config: RunConfig
    metrics: dict
    table: str
    method: MultiLabelMethod

    @property
    def test_metrics(self) -> dict:
        """The selected epoch's test metrics (``{"mAP": ..., "CF1": ...}``)."""
        return split_metrics(self.metrics["best"], "test")

    @property
    def files(self) -> dict[str, Path]:
        names = {"config": CONFIG_FILE, "metrics": METRICS_FILE, "best_prompts": BEST_PROMPTS,
                 "last_prompts": LAST_PROMPTS, "predictions": f"{PREDICTIONS_STEM}.csv"}
        return {key: self.run_dir / name for key, name in names.items() if (self.run_dir / name).is_file()}


@dataclass
class EvalResult:
    """Metrics and logits of a method on one labelled split."""

    name: str  # what was evaluated, e.g. 'best.safetensors on voc2007/test'
    metrics: dict
    logits: np.ndarray  # [N, C], in the dataset's order
    dataset: MultiLabelDataset
    notes: list[str] = field(default_factory=list)  # e.g. which backbone and descriptions were used

    @property
    def scores(self) -> np.ndarray:
        """Probabilities ``[N, C]`` (float64: a float32 sigmoid rounds large logits to 1)."""
        return sigmoid(self.logits)

    @property
    def table(self) -> str:
        return summary_table({self.name: self.metrics})


@dataclass
class LoadedPrompts:
    """A learned-prompts file rebuilt on its backbone: the method and the file's header."""

    method: MultiLabelMethod
    header: dict
    path: Path


# ---------------------------------------------------------------------------------------------- tune
def tune(dataset: str | None = None, *, data_root: str | Path | None = None, known: float | None = None,
         method: str | None = None, backbone: str | None = None, image_size: int | None = None,
         descriptions: str | None = None, config: str | Path | RunConfig | None = None,
         out: str | Path | None = None, epochs: int | None = None, seed: int | None = None,
         select_on: str | None = None, report_to: str | None = None,
         dataset_options: Mapping[str, Any] | None = None, overrides: Overrides = None,
         resume: bool = False, log: Log = print) -> TuneResult:
    """Learn ``method`` on ``dataset`` with a proportion ``known`` of its training labels, into the run
    folder ``out`` (default ``runs/<dataset>-<method>-known<p>-seed<s>-<time>``).

    ``config`` is a YAML file (or a :class:`RunConfig`) under the flags. A folder that already holds
    a run is refused unless ``resume=True``, which continues it from its last checkpoint with the
    configuration it was started with (so nothing else may be given, except ``data_root`` where the
    run's data has moved: it is checked to be the same data).
    """
    # (flag, config key): value; None means not given
    flags = {("--dataset", "data.dataset"): dataset, ("--data-root", "data.root"): data_root,
             ("--known", "data.known"): known, ("--method", "model.method"): method,
             ("--backbone", "model.backbone"): backbone, ("--image-size", "model.image_size"): image_size,
             ("--descriptions", "model.descriptions"): descriptions, ("--epochs", "train.epochs"): epochs,
             ("--seed", "train.seed"): seed, ("--select-on", "train.select_on"): select_on,
             ("--report-to", "train.report_to"): report_to,
             ("dataset options", "data.options"): dict(dataset_options) if dataset_options else None}
    if resume:
        given = {("--config", ""): config, ("--set/overrides", ""): overrides, **flags}
        given.pop(("--data-root", "data.root"))
        return _resume(out, [flag for (flag, _), value in given.items() if value is not None], data_root, log)
    if isinstance(config, RunConfig):
        run_config = _apply(config, [*_flag_overrides(flags), *_overrides(overrides)])
    else:
        run_config = resolve_config(dataset, config, [*_flag_overrides(flags), *_overrides(overrides)])
    run_dir = Path(out) if out is not None else default_run_dir(
        run_config.data.dataset, run_config.model.method, run_config.data.known, run_config.train.seed)
    check_out(run_dir)
    held = run_files(run_dir)
    if held:
        raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out "
                         f"(it holds {', '.join(held)})")
    root = _absolute_root(run_config.data).root
    if root is not None and Path(root) == Path(run_dir).resolve():
        raise UsageError(f"--out {run_dir} is the data root: the run's files would mix with the dataset's; "
                         f"choose another --out")
    return run(run_config, run_dir, log=log)


def _resume(out: str | Path | None, given: list[str], data_root: str | Path | None, log: Log) -> TuneResult:
    if out is None:
        raise UsageError("--resume needs --out RUN_DIR naming an existing run folder")
    run_dir = Path(out)
    check_out(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        held = run_files(run_dir)
        if held:
            raise UsageError(f"{run_dir} holds {', '.join(held)} but no {CONFIG_FILE}, so the "
                             f"configuration it was started with is unknown; restore {CONFIG_FILE}, or start a new "
                             f"run with another --out")
        raise UsageError(f"--resume needs --out RUN_DIR naming an existing run folder; {run_dir} holds no run")
    if given:
        raise UsageError(f"--resume continues {out} with the configuration it was started with; leave out "
                         f"{', '.join(given)} (or start a new run with another --out)")
    refuse_legacy_checkpoint(run_dir / CHECKPOINT_FILE, CheckpointError)  # before any work
    config = load_run_config(run_dir / CONFIG_FILE)
    if data_root is not None:  # the run's data moved: the same data, checked against its record
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(data_root)))
    check_trackers(config.train.report_to)
    return run(config, run_dir, resume=True, log=log)


def _flag_overrides(flags: Mapping[tuple[str, str], Any]) -> list[dict]:
    """``{("--known", "data.known"): 0.1, ("--seed", "train.seed"): None}`` -> ``[{"data": {"known": 0.1}}]``."""
    overrides = []
    for (_, key), value in flags.items():
        if value is not None:
            section, name = key.split(".")
            overrides.append({section: {name: value}})
    return overrides


def _overrides(overrides: Overrides) -> list[dict]:
    """``overrides`` as a list of nested dicts: one dict, or a list of dicts and ``a.b=c`` strings."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [dict(overrides)]
    return [parse_assignment(item) if isinstance(item, str) else dict(item) for item in overrides]


def _apply(config: RunConfig, overrides: list[dict]) -> RunConfig:
    for override in overrides:
        config = apply_layer(config, override, "overrides")
    return checked(config)


def run(config: RunConfig, run_dir: str | Path, resume: bool = False, log: Log = print,
        hooks: Sequence[PhaseHook] = ()) -> TuneResult:
    """Train ``config.model.method`` on ``config.data`` and fill ``run_dir``: the step below
    :func:`tune`, for a resolved config (benchmarks use it): it does not refuse a folder that holds a
    run, but it locks the folder while it writes (:func:`promptmlr.runs.run_lock`). ``hooks`` go to
    the :class:`~promptmlr.engine.Trainer`, entered around each phase of training (the speed
    benchmark times them)."""
    started = time.time()
    run_dir = Path(run_dir)
    config = checked(config, trackers=False)  # a config changed in Python is checked like any other
    # the run folder records where the data is, so it must say so from any working directory
    config = dataclasses.replace(config, data=_absolute_root(config.data))
    try:
        with _folder_lock(run_dir, log):
            return _run_locked(config, run_dir, resume, log, started, hooks)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: name the run, so that the CLI can say how to resume it
        raise RunInterrupted(run_dir) from interrupt


PATH_OPTIONS = ("labels", "classes")  # dataset options naming files, read relative to the working folder


def _absolute_root(data: DataConfig) -> DataConfig:
    """``data`` with its root and the files its options name made absolute, so that a run folder
    used from another working folder reads the same files. Links are kept, not resolved: a root
    that is a link may be pointed elsewhere when the data moves (the data is checked, not its path)."""
    options = {key: os.path.abspath(os.path.expanduser(value)) if key in PATH_OPTIONS and isinstance(value, str)
               else value for key, value in data.options.items()}
    root = os.path.abspath(os.path.expanduser(data.root)) if data.root is not None else None
    return dataclasses.replace(data, root=root, options=options)


@contextlib.contextmanager
def _folder_lock(run_dir: Path, log: Log) -> Iterator[None]:
    """The run folder's lock, taken by the main process; with several processes (``accelerate
    launch``) its outcome is broadcast, so that all refuse together instead of the others going on."""
    state = process_state()
    if state.num_processes == 1:
        with run_lock(run_dir, log):
            yield
        return
    with contextlib.ExitStack() as stack:
        refusal = [None]
        if state.is_main_process:
            try:
                stack.enter_context(run_lock(run_dir, log))
            except UsageError as error:
                refusal = [str(error)]
        broadcast_object_list(refusal)
        if refusal[0]:
            raise UsageError(refusal[0])
        yield


def _run_locked(config: RunConfig, run_dir: Path, resume: bool, log: Log, started: float,
                hooks: Sequence[PhaseHook] = ()) -> TuneResult:
    recorded, checkpoint = (_resumable(run_dir, config, log) if resume else (None, None))
    splits, mask_hash = load_splits(config.data)
    identity = _data_identity(config.data, splits, mask_hash)
    if recorded is not None:
        _check_data_identity(run_dir, recorded, identity,
                             "continue it with --resume --data-root pointing at the run's data")
    check_images_exist(splits)
    check_cache_directory(config.train.cache)
    backbone = build_backbone(config.model)
    class_names = splits.train.class_names
    method, descriptions_source = _fresh_method(config, backbone, class_names)
    if checkpoint is not None:
        _check_checkpoint_fits(run_dir / CHECKPOINT_FILE, checkpoint, method)
    locations = _locations(backbone)
    log(f"data {config.data.dataset}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
        f"{len(splits.test) if splits.test else 0} test images, {len(class_names)} classes, "
        f"{config.data.known:.0%} of training labels known (mask sha256 {mask_hash[:12]}…)")
    log(f"backbone {backbone.spec} at {backbone.image_size}px ({locations} locations); descriptions: "
        f"{descriptions_source}")
    log(method.summary(config.train.batch_size, locations))
    main = process_state().is_main_process  # the other processes of a multi-GPU run write no files
    if main:
        write_config(run_dir, config.to_dict(), identity)
    started_with = {**migrations.header("run-config"), **config.to_dict()}
    result = Trainer(method, splits, config.train, run_dir, hyperparameters=config.to_dict(), hooks=hooks,
                     checkpoint_extra={RUN_CONFIG_KEY: started_with}).fit(resume, checkpoint)
    method = result.method
    best = result.history[result.best_epoch - 1] if result.best_epoch > 0 else result.history[0]
    last = result.history[-1]
    if result.best_epoch == 0:  # nothing to train (zero-shot): one result, nothing selected
        rows = {"untrained (nothing to learn)": split_metrics(best, "test")}
    else:
        selected_label = f"selected on {result.select_on} (epoch {best['epoch']})"
        if result.select_on == "test":
            selected_label += " ⚠ selected on the test set, as the anchors do"
        rows = {selected_label: split_metrics(best, "test"),
                f"last (epoch {last['epoch']})": split_metrics(last, "test")}
    table = summary_table(rows)
    metrics = {
        "dataset": config.data.dataset, "method": config.model.method, "backbone": backbone.spec,
        "backbone_fingerprint": backbone.fingerprint, "descriptions": descriptions_source,
        "known": config.data.known, "seed": config.train.seed, "mask_sha256": mask_hash,
        "selected_on": result.select_on, "best_epoch": result.best_epoch,
        "best": best, "last": last, "history": result.history,
        "trainable_parameters": method.trainable_parameter_count(),
        "train_seconds": result.seconds, "total_seconds": time.time() - started,
    }
    notes = [f"mask sha256: {mask_hash}", f"backbone: {backbone.spec} (weights {backbone.fingerprint[:12]}…)",
             f"trainable parameters: {metrics['trainable_parameters']:,}",
             f"wall time: {metrics['total_seconds']:.0f} s"]
    if main:
        thresholds = [config.train.threshold] * len(class_names)
        for file_name, state, record in ((LAST_PROMPTS, result.last_state, last),
                                         (BEST_PROMPTS, result.best_state, best)):
            method.load_state_dict(state)  # the best state last: the method returned holds it
            save_prompts(method, run_dir / file_name, thresholds=thresholds, metrics=record, mask_sha256=mask_hash,
                         extra={"selected_on": result.select_on, "epoch": record["epoch"]})
        if result.test_logits is not None:
            write_predictions(run_dir / PREDICTIONS_STEM, splits.test.image_paths, class_names, result.test_logits,
                              splits.test.labels)
        write_metrics(run_dir, metrics)
        write_summary(run_dir, f"{config.model.method} on {config.data.dataset}, {config.data.known:.0%} known "
                               f"(test set)", table, notes)
    return TuneResult(run_dir, config, metrics, table, method)


def _fresh_method(config: RunConfig, backbone: FrozenCLIP, class_names: Sequence[str]
                  ) -> tuple[MultiLabelMethod, str]:
    """The run's method, untrained, on ``backbone``, and where its class descriptions came from; its
    random prompt contexts and embeddings are drawn from the run's seed, the same in every run."""
    descriptions, source = resolve_descriptions(config.model.descriptions, config.data.dataset, class_names)
    set_seed(config.train.seed)
    return build_method(config.model.method, backbone, class_names, descriptions, **config.model.options), source


RUN_CONFIG_KEY = "run_config"  # the checkpoint's copy of the configuration the run started with


def _resumable(run_dir: Path, config: RunConfig, log: Log) -> tuple[dict | None, dict | None]:
    """Before any work on ``--resume``: the data identity ``config.yaml`` records, and the
    checkpoint, which must have been written under this very configuration (a hand-edited
    ``config.yaml`` would relabel results, or mismatch the learned tensors). What only says where
    or how fast a run goes may differ (:data:`promptmlr.config.LOGISTICS`, e.g. a cache directory
    of this machine's); the data under another ``data.root`` is checked against the record instead."""
    recorded = recorded_data_identity(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else None
    if recorded is None and (run_dir / CONFIG_FILE).is_file():
        log(f"{run_dir / CONFIG_FILE} records no data identity (an older run): the data under "
            f"{config.data.root or 'the default folder'} is not checked against what the run was trained on")
    _require_data_root(run_dir, config.data, "continue it with --resume --data-root pointing at the run's data")
    path = run_dir / CHECKPOINT_FILE
    if os.path.lexists(path) and not path.is_file():
        raise UsageError(f"{path} is not a file; a checkpoint cannot be read from it or written over it: move it "
                         f"away, or start a new run with another --out")
    if not path.is_file():
        return recorded, None
    checkpoint = load_checkpoint(path)
    if RUN_CONFIG_KEY in checkpoint:
        started = run_config_from(checkpoint[RUN_CONFIG_KEY], f"{path} (its run configuration)").to_dict()
        changed = config_differences(started, config.to_dict(), ignore=LOGISTICS | {"data.root"})
        if changed:
            shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            raise UsageError(f"{run_dir / CONFIG_FILE} differs from the configuration the run started with "
                             f"({shown}); --resume continues a run only as it started: undo the change, or start a "
                             f"new run with --config {run_dir / CONFIG_FILE} --out NEW_DIR")
    return recorded, checkpoint


def _check_checkpoint_fits(path: Path, checkpoint: dict, method: MultiLabelMethod) -> None:
    """The checkpoint's learned tensors are the ones ``method`` has, name for name and shape for
    shape (a checkpoint from before it recorded its configuration may belong to another one)."""
    saved = checkpoint.get("method")
    expected = {name: tuple(tensor.shape) for name, tensor in learnable_state(method).items()}
    found = {name: tuple(tensor.shape) for name, tensor in saved.items()} if isinstance(saved, dict) else {}
    if found != expected:
        differing = sorted(name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name))
        details = ", ".join(f"{name} {found.get(name, 'absent')} vs {expected.get(name, 'absent')}"
                            for name in differing[:4])
        raise UsageError(f"{path} does not fit {method.name} as configured (checkpoint vs config: {details}); it "
                         f"was written under another configuration: restore the run's {CONFIG_FILE}, or start a "
                         f"new run with another --out")


def _data_identity(data: DataConfig, splits: Splits, mask_hash: str) -> dict[str, Any]:
    """What identifies the data a run uses, without reading a pixel (:func:`promptmlr.runs.data_sha256`)."""
    root = dataset_root(data)
    training = [(splits.train.image_paths, splits.full_train_labels)]
    if splits.val is not None:
        training.append((splits.val.image_paths, splits.val.labels))
    identity = {"root": str(root), "protocol": _protocol(data), "mask_sha256": mask_hash,
                "training_sha256": data_sha256(root, splits.train.class_names, training)}
    if splits.test is not None:
        identity.update(test_split=data.test_split, test_sha256=_split_sha256(root, splits.test))
    return identity


def _protocol(data: DataConfig) -> dict[str, Any]:
    """The settings that decide which training images and labels a run uses, beside the data itself."""
    return {key: value for key, value in dataclasses.asdict(data).items() if key not in ("root", "test_split")}


def _split_sha256(root: Path, dataset: MultiLabelDataset) -> str:
    return data_sha256(root, dataset.class_names, [(dataset.image_paths, dataset.labels)])


IDENTITY_NAMES = {"mask_sha256": "the partial-label mask", "training_sha256": "the training images or labels",
                  "test_sha256": "the test images or labels"}


def _require_data_root(run_dir: Path, data: DataConfig, fix: str) -> None:
    """The data root a run folder records is a folder here; else one line naming it and ``fix``."""
    if data.root is not None and not Path(data.root).is_dir():
        raise UsageError(f"{run_dir}: its data root {data.root} is not a folder here; {fix}")


def _check_data_identity(run_dir: Path, recorded: dict, found: dict, fix: str) -> None:
    """Refuse data that is not the data ``run_dir`` was run on, naming what differs and ``fix``. The
    training data and its mask are compared under the same protocol only: a run resumed before its
    first checkpoint may have had its ``data`` settings changed, and starts over under them."""
    keys = ["test_sha256"] if recorded.get("test_split") == found.get("test_split") else []
    if recorded.get("protocol", found.get("protocol")) == found.get("protocol"):
        keys += ["mask_sha256", "training_sha256"]
    differing = [key for key in keys if key in recorded and key in found and recorded[key] != found[key]]
    if differing:
        what = ", ".join(f"{IDENTITY_NAMES[key]} (sha256 {str(recorded[key])[:12]}… recorded, "
                         f"{found[key][:12]}… found)" for key in differing)
        raise UsageError(f"{run_dir} was run on other data than the data under {found.get('root')}: {what} differ; "
                         f"{fix} (it was at {recorded.get('root', 'an unrecorded place')})")


def _locations(backbone: FrozenCLIP) -> int:
    grid = backbone.dense_shape[1]
    return grid[0] * grid[1]


# ---------------------------------------------------------------------------------- evaluate, zeroshot
def evaluate_method(method: MultiLabelMethod, dataset: MultiLabelDataset, batch_size: int = 128,
                    num_workers: int = 2, threshold: float = 0.5, name: str = "") -> EvalResult:
    """Metrics and logits of ``method`` on a labelled dataset (features computed on the fly, on
    the GPU when there is one). A split without a positive label has no mAP: refused before scoring."""
    if not (dataset.labels == 1).any():
        raise DatasetError(f"{dataset.name}/{dataset.split} holds no positive label, so its mAP cannot be computed; "
                           f"score a labelled split (--split) or fix its label file")
    method.to(process_state().device)
    logits = score(method, dataset_batches(method.backbone, dataset, batch_size, num_workers), progress=False,
                   logits=True, rows=len(dataset))
    metrics = compute_metrics(logits, dataset.labels, threshold, from_logits=True)
    return EvalResult(name or f"{method.name} on {dataset.name}", metrics, logits, dataset)


def evaluate(prompts: str | Path, dataset: str | None = None, *, data_root: str | Path | None = None,
             split: str = "test", which: str = "best", dataset_options: Mapping[str, Any] | None = None,
             batch_size: int = 128, num_workers: int = 2) -> EvalResult:
    """Score a run folder's ``which`` prompts (or a prompts file) on a labelled split; a run folder
    remembers its dataset and where its data is, and receives ``eval_<dataset>_<split>.json``.

    A run folder's own data (no ``dataset`` given; ``data_root`` where it has moved) is checked to
    be the data the run was trained and tested on, and its prompts file to be the run's own, before
    anything is scored; other data is scored by naming its ``dataset`` too."""
    path = prompts_path(prompts, which)
    run_dir = Path(prompts) if is_folder(Path(prompts)) else None
    data = _dataset_for(dataset, data_root, dataset_options, split, run_dir)
    recorded = None
    if run_dir is not None and dataset is None:
        if data_root is not None:  # the run's data, moved to the root given
            data = dataclasses.replace(data, root=str(data_root))
        recorded = recorded_data_identity(run_dir / CONFIG_FILE)
        _check_prompts_are_the_runs(path, load_run_config(run_dir / CONFIG_FILE), recorded)
        _require_data_root(run_dir, data, "pass --data-root pointing at the run's data")
    labelled = load_split(data, split)
    digest = _split_sha256(dataset_root(data), labelled) if run_dir is not None else None
    if recorded is not None:
        fix = ("to score other data, name its dataset too: --dataset NAME --data-root DIR" if data_root is not None
               else "pass --data-root pointing at the run's data")
        _check_evaluated_data(run_dir, recorded, data, split, digest, fix)
    loaded = load_prompts_file(path, class_names=labelled.class_names)
    threshold = (loaded[1].get("thresholds") or [0.5])[0]
    result = evaluate_method(loaded[0], labelled, batch_size, num_workers, threshold,
                             name=f"{path.name} on {labelled.name}/{split}")
    if run_dir is not None and dataset is None and recorded is None:
        result.notes.append(f"{run_dir} records no data identity (an older run), so the data under "
                            f"{Path(data.root).resolve() if data.root else 'the default folder'} was not "
                            f"checked against what it was trained on")
    if run_dir is not None:
        target = run_dir / f"eval_{labelled.name}_{split}.json"
        root = dataset_root(data)
        record = {**migrations.header("evaluation"), **result.metrics,
                  "evaluated": {"prompts": path.name, "dataset": labelled.name, "split": split, "root": str(root),
                                "data_sha256": digest}}
        try:  # the scores are the result: a folder that cannot take them must not hide them
            write_json_atomic(target, record)
        except OSError as error:
            result.notes.append(f"could not write {target} ({one_line(error)}); these scores are not saved")
    return result


def _check_evaluated_data(run_dir: Path, recorded: dict, data: DataConfig, split: str, digest: str,
                          fix: str) -> None:
    """The split about to be scored (``digest``: its :func:`_split_sha256`) is the run's: its test
    split by that digest, any other split by the training data's (which costs reading the training
    labels)."""
    found: dict[str, Any] = {"root": str(dataset_root(data)), "protocol": _protocol(data), "test_split": split}
    if split == recorded.get("test_split"):
        found["test_sha256"] = digest
    else:
        splits, mask_hash = load_splits(data)
        identity = _data_identity(data, splits, mask_hash)
        found.update(mask_sha256=identity["mask_sha256"], training_sha256=identity["training_sha256"])
    _check_data_identity(run_dir, recorded, found, fix)


def _check_prompts_are_the_runs(path: Path, config: RunConfig, recorded: dict | None) -> None:
    """A run folder's prompts file was learned by that run: its method and, where recorded, its
    partial-label mask are the run's (a file copied in from another run would be scored and
    reported as this one's)."""
    header = read_header(path)
    mask = recorded.get("mask_sha256") if recorded else None
    if header.get("method") != config.model.method:
        raise UsageError(f"{path} holds {header.get('method')} prompts, but the run in {path.parent} is "
                         f"{config.model.method}: it is another run's file; put the run's own file back, or eval the "
                         f"file by itself with --dataset")
    if mask is not None and header.get("mask_sha256") not in (None, mask):
        raise UsageError(f"{path} was learned with another partial-label mask (sha256 "
                         f"{str(header.get('mask_sha256'))[:12]}…) than the run in {path.parent} ({mask[:12]}…): it "
                         f"is another run's file; put the run's own file back, or eval the file by itself with "
                         f"--dataset")


def zeroshot(dataset: str, *, data_root: str | Path | None = None, backbone: str = "sandbox",
             image_size: int | None = None, split: str = "test", descriptions: str | None = None,
             standardize: bool = False, dataset_options: Mapping[str, Any] | None = None,
             batch_size: int = 128, num_workers: int = 2) -> EvalResult:
    """Zero-shot CLIP on a labelled split: templates, or a description ensemble (``descriptions``:
    a file, ``none``, or by default the shipped ``prompts/<dataset>.yaml``)."""
    labelled = load_split(_dataset_for(dataset, data_root, dataset_options, split), split)
    model = ModelConfig(backbone=backbone, image_size=image_size, descriptions=descriptions or "auto")
    frozen = build_backbone(model)
    chosen, source = resolve_descriptions(model.descriptions, labelled.name, labelled.class_names)
    method = build_method("zeroshot", frozen, labelled.class_names, chosen, standardize=standardize)
    result = evaluate_method(method, labelled, batch_size, num_workers, name="zeroshot")
    result.notes.append(f"zero-shot {frozen.spec} on {labelled.name}/{split}; descriptions: {source}")
    return result


def _dataset_for(dataset: str | None, data_root: str | Path | None, options: Mapping[str, Any] | None,
                 split: str, run_dir: Path | None = None) -> DataConfig:
    """The dataset named, or else the one ``run_dir`` was trained on (with its loader options, whose
    ``labels`` file is its training split's). Options given with the dataset are for the one split
    read, ``split``: a ``labels`` file given here is that split's."""
    if dataset is None:
        if run_dir is None:
            raise UsageError("--dataset is required (only a run folder remembers its dataset)")
        return load_run_config(run_dir / CONFIG_FILE).data
    return DataConfig(dataset=dataset, root=str(data_root) if data_root is not None else None,
                      train_split=split, options=dict(options or {}))


# ----------------------------------------------------------------------------------------------- complete
@dataclass
class CompletionResult:
    """A completed split: the files written (by role: ``labels``, ``report_json``, ``report_md``,
    ``classes`` or ``filled``, ``review``) and the JSON report's content."""

    files: dict[str, Path]
    report: dict

    @property
    def summary(self) -> str:
        """One line: how much was filled, at what estimated precision, and where."""
        return f"{completion.totals_line(self.report)}; labels: {self.files['labels']}, report: " \
               f"{self.files['report_md']}"


def complete(run_dir: str | Path, out: str | Path, *, split: str | None = None, precision: float = 0.95,
             format: str | None = None, review: int = 0, cross_fit: int = 0, calibration: str = "validation",
             which: str = "best", data_root: str | Path | None = None, force: bool = False, batch_size: int = 128,
             num_workers: int = 2, log: Log = print) -> CompletionResult:
    """Fill the unknown labels of a run's ``split`` (default: its training split, under the run's
    mask) where the run's ``which`` model reaches ``precision`` on the validation split, into ``out``
    (``format`` jsonl, csv, or ``same`` as the dataset; default: ``out``'s suffix), with a report
    beside it and, with ``review``, the N entries most worth labelling (:mod:`promptmlr.completion`).
    ``cross_fit`` K >= 2 calibrates the classes that validation cannot by K-fold cross-fitting (K
    more trainings of the run's configuration; training split only); ``calibration`` "cross-fit"
    calibrates every class on those out-of-fold scores and fills from them, so that the scores filled
    from and those calibrated on come alike from models that never saw the image. Everything is checked before
    any image is scored, and nothing is written until every file is ready; the files of an earlier
    completion are replaced only with ``force``, the dataset's own files never."""
    check_number("--precision", precision, above=0, below=1)
    for flag, value in (("--review", review), ("--cross-fit", cross_fit)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{flag} must be a whole number, got {value!r}")
        check_number(flag, value, minimum=0)
    if cross_fit == 1:
        raise UsageError("--cross-fit must be 0 (off) or a number of folds of at least 2, got 1")
    check_choice("--calibration", calibration, completion.CALIBRATIONS, UsageError)
    if calibration == "cross-fit" and not cross_fit:
        raise UsageError("--calibration cross-fit calibrates on out-of-fold scores: give the folds with --cross-fit K "
                         "(K >= 2, e.g. 3)")
    run_dir, out = Path(run_dir), Path(out)
    if not is_folder(run_dir) or not (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); pass the folder promptmlr tune wrote")
    config = load_run_config(run_dir / CONFIG_FILE)
    data = config.data if data_root is None else dataclasses.replace(config.data, root=str(data_root))
    split = split or data.train_split
    on_training = split == data.train_split
    chosen_format = completion.output_format(format, out, _own_format(data, split))
    if cross_fit and not on_training:
        raise UsageError(f"--cross-fit scores the run's training split out of fold; it cannot apply to --split "
                         f"{split} (leave it out, or complete {data.train_split})")
    if data.val_fraction == 0:
        raise UsageError(f"{run_dir} was trained without a validation split (data.val_fraction=0), and the "
                         f"thresholds are chosen on one; train a run with --set data.val_fraction=0.1")
    path = prompts_path(run_dir, which)
    recorded = recorded_data_identity(run_dir / CONFIG_FILE)
    _check_prompts_are_the_runs(path, config, recorded)
    _require_data_root(run_dir, data, "pass --data-root pointing at the run's data")
    files = completion.companion_files(out, chosen_format, review > 0)
    own = _dataset_files(data, split)
    _check_completion_targets(out, files, own, force)

    training = masked_training_split(data)
    if recorded is not None:
        found = {**_data_identity(data, training_splits(training, None), training.mask_sha256), "test_split": None}
        _check_data_identity(run_dir, recorded, found, "pass --data-root pointing at the run's data")
    if cross_fit > len(training.train_rows):
        raise UsageError(f"--cross-fit {cross_fit}: the training split has {len(training.train_rows)} training "
                         f"images, fewer than the folds; use fewer folds")
    target = training.dataset if on_training else _completion_split(data, split)
    validation = training.dataset.subset(training.val_rows)
    check_images_exist(Splits(train=target, val=validation, test=None))
    result = _completed(config, path, training, validation, target, on_training, precision, cross_fit,
                        calibration, which, batch_size, num_workers, log)
    source = {"run_dir": str(run_dir.resolve()), "method": config.model.method, "prompts": path.name,
              "dataset": data.dataset, "split": split, "root": str(dataset_root(data)),
              "mask_sha256": training.mask_sha256, "data_checked": recorded is not None,
              "label_format": chosen_format, "calibration": calibration}
    record = completion.report(result, source)
    texts = _completion_texts(files, record, result, target, training, review)
    write_texts_together(texts)
    for stale in completion.possible_files(out):  # --force: what an earlier completion left, not written now
        if stale not in texts and stale.is_file() and os.path.realpath(stale) not in own:
            stale.unlink()
    return CompletionResult(files, record)


def _completed(config: RunConfig, prompts: Path, training: MaskedTraining, validation: MultiLabelDataset,
               target: MultiLabelDataset, on_training: bool, precision: float, cross_fit: int, calibration: str,
               which: str, batch_size: int, num_workers: int, log: Log) -> completion.Completion:
    """``target`` completed by the run's model, calibrated on ``validation`` (the training split's
    validation rows), and cross-fitted when ``cross_fit`` asks for it: the classes that validation
    cannot calibrate, or every class with ``calibration`` "cross-fit"."""
    method = load_prompts_file(prompts, class_names=target.class_names)[0]
    method.to(process_state().device)
    probabilities = _probabilities(method, target, batch_size, num_workers)
    val_probabilities = (probabilities[training.val_rows] if on_training
                         else _probabilities(method, validation, batch_size, num_workers))
    result = completion.complete_labels(probabilities, target.labels, val_probabilities, validation.labels,
                                        precision, target.class_names)
    every_class = calibration == "cross-fit"
    lacking = list(range(len(target.class_names))) if every_class else (
        completion.needs_cross_fit(result) if cross_fit else [])
    reason = "every class" if every_class else f"{len(lacking)} class(es) that validation cannot calibrate"
    if lacking:
        identity = {"folds": cross_fit, "which": which, "mask_sha256": training.mask_sha256,
                    "prompts_sha256": hashlib.sha256(prompts.read_bytes()).hexdigest(),
                    "rows": len(training.dataset), "classes": training.dataset.class_names}
        stored = completion.out_of_fold_path(prompts.parent, cross_fit, which)
        out_of_fold = completion.load_out_of_fold(stored, identity)
        if out_of_fold is None:
            log(f"cross-fitting {reason}: {cross_fit} trainings")
            out_of_fold = _out_of_fold_probabilities(config, training, validation, val_probabilities, cross_fit,
                                                     which, batch_size, num_workers, log)
            _keep_out_of_fold(stored, out_of_fold, identity, log)
        else:
            log(f"cross-fitting {reason}: out-of-fold scores read back from {stored}")
        refit = completion.complete_labels(out_of_fold, target.labels, out_of_fold, target.labels, precision,
                                           target.class_names, evidence=f"cross-fitted ({cross_fit} folds)")
        result = completion.with_cross_fitted(result, refit, lacking)
    return result


def _completion_texts(files: dict[str, Path], record: dict, result: completion.Completion,
                      target: MultiLabelDataset, training: MaskedTraining, review: int) -> dict[Path, str]:
    """Every file's text, by path, the label file last."""
    folder = files["labels"].parent
    texts = {files["report_json"]: json.dumps(record, indent=2) + "\n",
             files["report_md"]: completion.summary_markdown(record)}
    if "classes" in files:
        texts[files["classes"]] = "\n".join(target.class_names) + "\n"
    if "filled" in files:
        texts[files["filled"]] = completion.filled_table(target.image_paths, target.class_names, result, folder)
    if review:
        entries = completion.review_candidates(result, training.dataset.labels, review)
        texts[files["review"]] = completion.review_table(entries, target.image_paths, target.class_names, folder)
    texts[files["labels"]] = completion.labels_text(files["labels"].suffix[1:], target.image_paths,
                                                    target.class_names, result, folder)
    return texts


def _probabilities(method: MultiLabelMethod, dataset: MultiLabelDataset, batch_size: int,
                   num_workers: int) -> np.ndarray:
    """``method``'s probabilities ``[N, C]`` for every image of ``dataset``, encoded on the fly."""
    return score(method, dataset_batches(method.backbone, dataset, batch_size, num_workers), progress=False,
                 rows=len(dataset))


def _out_of_fold_probabilities(config: RunConfig, training: MaskedTraining, validation: MultiLabelDataset,
                               val_probabilities: np.ndarray, folds: int, which: str, batch_size: int,
                               num_workers: int, log: Log) -> np.ndarray:
    """Probabilities ``[N, C]`` of the whole training split, each row from a model that did not train
    on it: the validation rows from the run's (given), the training rows from ``folds`` models of the
    run's configuration, each trained without one fold (a seeded draw), selected on validation (or
    the last epoch, with ``which`` last, as the run's model was)."""
    probabilities = np.empty(training.dataset.labels.shape, dtype=np.float64)
    probabilities[training.val_rows] = val_probabilities
    held_out_folds = np.array_split(np.random.RandomState(config.train.seed).permutation(training.train_rows), folds)
    backbone = build_backbone(config.model)
    train_config = dataclasses.replace(config.train, report_to="none", select_on="val")
    for fold, held_out in enumerate(held_out_folds, 1):
        kept = np.setdiff1d(training.train_rows, held_out)
        log(f"cross-fitting fold {fold}/{folds}: training on {len(kept)} images, scoring {len(held_out)}")
        method = _fresh_method(config, backbone, training.dataset.class_names)[0]
        with tempfile.TemporaryDirectory(prefix="promptmlr-cross-fit-") as scratch:
            splits = Splits(train=training.dataset.subset(kept), val=validation, test=None)
            fitted = Trainer(method, splits, train_config, Path(scratch)).fit()
        if which == "last":
            fitted.method.load_state_dict(fitted.last_state)
        probabilities[held_out] = _probabilities(fitted.method, training.dataset.subset(held_out), batch_size,
                                                 num_workers)
    return probabilities


def _keep_out_of_fold(path: Path, probabilities: np.ndarray, identity: dict, log: Log) -> None:
    """Keep out-of-fold scores in the run folder for the next completion; a folder that cannot take
    them costs the trainings again next time, not this completion."""
    try:
        completion.save_out_of_fold(path, probabilities, identity)
    except OSError as error:
        log(f"could not keep the out-of-fold scores in {path} ({one_line(error)}); the next --cross-fit trains again")


def _own_format(data: DataConfig, split: str) -> str | None:
    """The format of the dataset's own label files where it can hold unknown labels, else None."""
    if data.dataset in ("jsonl", "csv"):
        return data.dataset
    if data.dataset == "synthetic":
        return "csv"
    if data.dataset == "custom":
        return custom_format(dataset_root(data), split, split_options(data, split).get("labels"))
    return None


def _completion_split(data: DataConfig, split: str) -> MultiLabelDataset:
    """A split other than the training one, labels as its file has them (no mask: the mask is the
    training split's protocol)."""
    try:
        return load_split(data, split)
    except DatasetError as error:  # an unknown split name, or one whose file is missing
        raise type(error)(f"--split {split}: {error}") from None


def _check_completion_targets(out: Path, files: dict[str, Path], read: set[str], force: bool) -> None:
    """Before any work: ``out`` names a file in a folder that can take it, none of the files to write
    is one the dataset reads (``read``, real paths; even with ``force``: its partial labels would be
    lost), and none exists unless ``force``."""
    check_writable_target("--out", out, "completed.jsonl")
    for path in files.values():
        if os.path.realpath(path) in read:
            raise UsageError(f"--out {out} would overwrite {path}, a file of the dataset itself; write the "
                             f"completion elsewhere (the partial labels must stay as they are)")
    held = [path for path in completion.possible_files(out) if os.path.lexists(path)]
    if held and not force:
        raise UsageError(f"--out {out}: {', '.join(str(path) for path in held)} already exist(s); pass --force to "
                         f"replace them, or choose another --out")


def _dataset_files(data: DataConfig, split: str) -> set[str]:
    """The real paths of the files the run's dataset reads for its training, test and ``split``
    splits: those its options name, and the split, class and metadata files of its root."""
    root = dataset_root(data)
    named = [Path(value) for key, value in data.options.items() if key in PATH_OPTIONS and isinstance(value, str)]
    splits = {data.train_split, data.test_split, split} - {None}
    own = [root / f"{name}{suffix}" for name in splits for suffix in (".jsonl", ".csv", ".classes.txt")]
    return {os.path.realpath(path) for path in [*named, *own, root / "classes.txt", root / "meta.json"]}


# ------------------------------------------------------------------------------ prompts: load, use, export
def load_prompts(source: str | Path, *, which: str = "best", backbone: FrozenCLIP | None = None,
                 class_names: Sequence[str] | None = None) -> LoadedPrompts:
    """The method stored in a prompts file, or in a run folder's ``which`` prompts, rebuilt on the
    backbone its header names (or on ``backbone``, which must have the same weights)."""
    path = prompts_path(source, which)
    method, header = load_prompts_file(path, backbone, class_names)
    return LoadedPrompts(method, header, path)


def predict(images: str | Path | Iterable[str | Path], prompts: str | Path | None = None, *,
            model: str | Path | None = None, which: str | None = None, threshold: float | None = None,
            topk: int | None = None, heatmaps: str | Path | None = None, batch_size: int = 32) -> list[Prediction]:
    """Labels for image files and folders of images, from ``prompts`` (a prompts file, or a run
    folder's ``which`` prompts, default best; run by PyTorch) or ``model`` (an ONNX tagger from
    ``export(format="onnx")``, run by onnxruntime alone); an unreadable image carries an ``error``
    instead of stopping the others. Default threshold: the file's, else 0.5."""
    if (prompts is None) == (model is None):
        raise UsageError("predict: give --prompts (a prompts file or run folder) or --model (an exported .onnx "
                         "tagger), one of the two")
    if topk is not None:
        check_number("--topk", topk, minimum=1)
    if threshold is not None:
        check_number("--threshold", threshold, minimum=0, maximum=1)
    if model is not None and heatmaps is not None:
        raise UsageError("--heatmaps needs --prompts: an ONNX tagger gives label scores, not attention maps")
    if model is not None and which is not None:
        raise UsageError("--which applies to --prompts RUN_DIR; an ONNX tagger holds the epoch it was exported from")
    inputs = [images] if isinstance(images, (str, Path)) else list(images)
    paths = expand_images(inputs)
    if not paths:
        raise UsageError(f"no images found in {', '.join(map(str, inputs))}")
    if model is not None:
        tagger = OnnxTagger(model)
        chosen = threshold if threshold is not None else tagger.thresholds
        return predict_with_tagger(tagger, paths, threshold=chosen, top_k=topk, batch_size=batch_size)
    loaded = load_prompts(prompts, which=which or "best")
    loaded.method.to(process_state().device)
    chosen = threshold if threshold is not None else loaded.header.get("thresholds")
    return predict_images(loaded.method, paths, threshold=chosen, top_k=topk,
                          heatmap_dir=Path(heatmaps) if heatmaps is not None else None, batch_size=batch_size)


EXPORT_FORMATS = ("promptmlr", "text-embeddings", "onnx")


def export(run_dir: str | Path, out: str | Path, *, format: str = "promptmlr", which: str = "best",
           image_size: int | None = None, opset: int | None = None, backbone: str | None = None,
           force: bool = False) -> Path:
    """Write a run's learned model to ``out``: ``promptmlr`` copies the prompts file (everything,
    reloadable), ``text-embeddings`` writes a plain ``[C, D]`` classifier (.safetensors or .npy),
    ``onnx`` one graph from images to logits with its metadata (see :mod:`promptmlr.tagger`), at the
    run's input size or ``image_size``, in ONNX ``opset``. ``backbone``: the spec of the run's
    weights where they are now, if they moved (refused unless its weights are the run's). An
    existing ``out`` is replaced only with ``force``."""
    run_dir, out = Path(run_dir), Path(out)
    if format not in EXPORT_FORMATS:
        raise UsageError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    if format != "onnx" and (image_size is not None or opset is not None):
        raise UsageError(f"--image-size and --opset apply to --format onnx only, not {format}")
    if format == "promptmlr" and backbone is not None:
        raise UsageError("--backbone applies to --format onnx and text-embeddings, which load the run's weights")
    if image_size is not None:
        check_image_size("--image-size", image_size)
    if opset is not None:
        check_opset(opset)
    if format == "onnx":
        require_export_packages()
    if not is_folder(run_dir):
        raise UsageError(f"{run_dir} is not a run folder")
    source = prompts_path(run_dir, which)
    with _writing(out):
        check_writable_target("export --out", out, "tagger.onnx" if format == "onnx" else source.name)
        if format == "onnx" and out.suffix.lower() != ".onnx":
            raise UsageError(f"export --out {out}: an ONNX tagger's file name ends in .onnx")
        if os.path.lexists(out) and not force:
            raise UsageError(f"export --out {out} already exists; pass --force to replace it, or choose another --out")
    header = read_header(source)  # a file that is not a prompts file is refused before anything is loaded
    if format == "promptmlr":
        with _writing(out):
            return atomic_write(out, lambda temp: shutil.copyfile(source, temp))
    if format == "text-embeddings":
        method_type = method_class(header["method"])
        refuse_text_embeddings(method_type, method_type.Config(**header.get("method_config", {})))
    stored = header["backbone"]
    weights = create_backbone(backbone or stored["spec"], image_size=image_size or stored["image_size"],
                              dense_mode=stored["dense_mode"])
    method, header = load_prompts_file(source, weights)
    if format == "text-embeddings":
        with _writing(out):
            return export_text_embeddings(method, out)
    run = {"folder": run_dir.resolve().name, "which": which, "epoch": header.get("epoch"),
           "selected_on": header.get("selected_on"), "mask_sha256": header.get("mask_sha256"),
           "prompts_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
           "trained_image_size": stored["image_size"], "metrics": header.get("metrics")}
    with _writing(out):
        return export_tagger(method, out, tagger_metadata(method, header, run), opset or DEFAULT_OPSET)


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """An ``OSError`` while ``out`` is checked or written (a file where a folder should be, a
    read-only folder, a name too long) as one line that names ``--out``."""
    try:
        yield
    except OSError as error:
        raise UsageError(f"export --out {out}: cannot write it ({one_line(error)}); choose another --out") from None


# ------------------------------------------------------------------------------ configuration, registries
def describe_config(method: str | None = None, dataset: str | None = None, *, config: str | Path | None = None,
                    overrides: Overrides = None) -> list[ConfigRow]:
    """Every key of the configuration ``tune`` would run with, resolved as ``tune`` resolves it (the
    defaults, the dataset's shipped config, the method's recipes, ``config``, ``overrides``): one row
    per key with its value, its dataclass default, what it accepts and its help. ``model.options`` is
    expanded into the method's own options (``model.options.n_ctx``), with the method's defaults."""
    flags = {("--dataset", "data.dataset"): dataset, ("--method", "model.method"): method}
    resolved = resolve_config(dataset, config, [*_flag_overrides(flags), *_overrides(overrides)])
    options = method_class(resolved.model.method).Config(**resolved.model.options)
    backbones = [*BACKBONE_ALIASES.names(), *(f"{prefix}:..." for prefix in BACKBONE_SOURCES.names())]
    registered = {"data.dataset": DATASETS.names(), "model.method": METHODS.names(), "model.backbone": backbones}
    rows: list[ConfigRow] = []
    for row in describe(resolved):
        if row.key in registered:  # what a registry holds is listed from it, never by hand
            row = dataclasses.replace(row, allowed=" | ".join(registered[row.key]))
        rows += describe(options, "model.options.") if row.key == "model.options" else [row]
    return rows


def list_registered() -> dict[str, Any]:
    """What can be named: ``methods`` (in the results tables' order), ``datasets`` (name -> one-line
    description), ``backbones`` (registered name -> the spec it stands for) and ``backbone_sources``
    (prefix -> the spec it takes, e.g. ``openclip:<arch>[:<pretrained-tag-or-file>]``)."""
    sources = {prefix: (inspect.getdoc(loader) or f"{prefix}:...").splitlines()[0].strip("`. ")
               for prefix, loader in BACKBONE_SOURCES.items()}
    return {"methods": METHODS.names(), "datasets": {name: spec.description for name, spec in DATASETS.items()},
            "backbones": list_backbones(), "backbone_sources": sources}
