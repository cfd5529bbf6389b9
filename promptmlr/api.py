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
import inspect
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from accelerate.utils import broadcast_object_list, set_seed

from promptmlr import migrations
from promptmlr.backbones import FrozenCLIP, list_backbones
from promptmlr.backbones.factory import BACKBONE_ALIASES, BACKBONE_SOURCES
from promptmlr.checkpoint import CheckpointError
from promptmlr.config import RunConfig, apply_layer, checked, load_run_config, parse_assignment, resolve_config
from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.protocol import DataConfig, check_images_exist, load_split, load_splits
from promptmlr.data.registry import DATASETS
from promptmlr.engine import PhaseHook, Trainer, process_state
from promptmlr.errors import UsageError, check_number
from promptmlr.files import atomic_write, write_json_atomic
from promptmlr.inference import Prediction, expand_images, predict_images
from promptmlr.metrics import evaluate as compute_metrics
from promptmlr.metrics import sigmoid
from promptmlr.migrations import refuse_legacy_checkpoint
from promptmlr.models import ModelConfig, MultiLabelMethod, build_method
from promptmlr.models.factory import METHODS, build_backbone, method_class, resolve_descriptions
from promptmlr.options import ConfigRow, describe
from promptmlr.prompt_files import export_text_embeddings, read_header, save_prompts
from promptmlr.prompt_files import load_prompts as load_prompts_file
from promptmlr.runs import (
    BEST_PROMPTS,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LAST_PROMPTS,
    METRICS_FILE,
    PREDICTIONS_STEM,
    default_run_dir,
    holds_run,
    prompts_path,
    run_lock,
    split_metrics,
    summary_table,
    write_config,
    write_metrics,
    write_predictions,
    write_summary,
)
from promptmlr.scoring import dataset_batches, score
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
    configuration it was started with (so nothing else may be given).
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
        return _resume(out, [flag for (flag, _), value in given.items() if value is not None], log)
    if isinstance(config, RunConfig):
        run_config = _apply(config, [*_flag_overrides(flags), *_overrides(overrides)])
    else:
        run_config = resolve_config(dataset, config, [*_flag_overrides(flags), *_overrides(overrides)])
    run_dir = Path(out) if out is not None else default_run_dir(
        run_config.data.dataset, run_config.model.method, run_config.data.known, run_config.train.seed)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file, not a folder; choose another --out")
    if holds_run(run_dir):
        raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    return run(run_config, run_dir, log=log)


def _resume(out: str | Path | None, given: list[str], log: Log) -> TuneResult:
    if out is None or not (Path(out) / CONFIG_FILE).is_file():
        raise UsageError("--resume needs --out RUN_DIR naming an existing run folder")
    if given:
        raise UsageError(f"--resume continues {out} with the configuration it was started with; leave out "
                         f"{', '.join(given)} (or start a new run with another --out)")
    refuse_legacy_checkpoint(Path(out) / CHECKPOINT_FILE, CheckpointError)  # before any work
    config = load_run_config(Path(out) / CONFIG_FILE)
    check_trackers(config.train.report_to)
    return run(config, Path(out), resume=True, log=log)


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
    with _folder_lock(run_dir, log):
        return _run_locked(config, run_dir, resume, log, started, hooks)


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
    splits, mask_hash = load_splits(config.data)
    check_images_exist(splits)
    backbone = build_backbone(config.model)
    class_names = splits.train.class_names
    descriptions, descriptions_source = resolve_descriptions(config.model.descriptions, config.data.dataset,
                                                             class_names)
    set_seed(config.train.seed)  # random prompt contexts and embeddings start the same in every run
    method = build_method(config.model.method, backbone, class_names, descriptions, **config.model.options)
    locations = _locations(backbone)
    log(f"data {config.data.dataset}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
        f"{len(splits.test) if splits.test else 0} test images, {len(class_names)} classes, "
        f"{config.data.known:.0%} of training labels known (mask sha256 {mask_hash[:12]}…)")
    log(f"backbone {backbone.spec} at {backbone.image_size}px ({locations} locations); descriptions: "
        f"{descriptions_source}")
    log(method.summary(config.train.batch_size, locations))
    main = process_state().is_main_process  # the other processes of a multi-GPU run write no files
    if main:
        write_config(run_dir, config.to_dict())
    result = Trainer(method, splits, config.train, run_dir, hyperparameters=config.to_dict(),
                     hooks=hooks).fit(resume=resume)
    method = result.method
    best = result.history[result.best_epoch - 1] if result.best_epoch > 0 else result.history[0]
    last = result.history[-1]
    selected_label = f"selected on {result.select_on} (epoch {best['epoch']})"
    if result.select_on == "test":
        selected_label += " ⚠ selected on the test set, as the anchors do"
    rows = {selected_label: split_metrics(best, "test"), f"last (epoch {last['epoch']})": split_metrics(last, "test")}
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


def _locations(backbone: FrozenCLIP) -> int:
    grid = backbone.dense_shape[1]
    return grid[0] * grid[1]


# ---------------------------------------------------------------------------------- evaluate, zeroshot
def evaluate_method(method: MultiLabelMethod, dataset: MultiLabelDataset, batch_size: int = 128,
                    num_workers: int = 2, threshold: float = 0.5, name: str = "") -> EvalResult:
    """Metrics and logits of ``method`` on a labelled dataset (features computed on the fly, on
    the GPU when there is one)."""
    method.to(process_state().device)
    logits = score(method, dataset_batches(method.backbone, dataset, batch_size, num_workers), progress=False,
                   logits=True)
    metrics = compute_metrics(logits, dataset.labels, threshold, from_logits=True)
    return EvalResult(name or f"{method.name} on {dataset.name}", metrics, logits, dataset)


def evaluate(prompts: str | Path, dataset: str | None = None, *, data_root: str | Path | None = None,
             split: str = "test", which: str = "best", dataset_options: Mapping[str, Any] | None = None,
             batch_size: int = 128, num_workers: int = 2) -> EvalResult:
    """Score a run folder's ``which`` prompts (or a prompts file) on a labelled split; a run folder
    remembers its dataset, and receives ``eval_<dataset>_<split>.json``."""
    path = prompts_path(prompts, which)
    run_dir = Path(prompts) if Path(prompts).is_dir() else None
    data = _dataset_for(dataset, data_root, dataset_options, run_dir)
    labelled = load_split(data, split)
    loaded = load_prompts_file(path, class_names=labelled.class_names)
    threshold = (loaded[1].get("thresholds") or [0.5])[0]
    result = evaluate_method(loaded[0], labelled, batch_size, num_workers, threshold,
                             name=f"{path.name} on {labelled.name}/{split}")
    if run_dir is not None:
        write_json_atomic(run_dir / f"eval_{labelled.name}_{split}.json",
                          {**migrations.header("evaluation"), **result.metrics})
    return result


def zeroshot(dataset: str, *, data_root: str | Path | None = None, backbone: str = "sandbox",
             image_size: int | None = None, split: str = "test", descriptions: str | None = None,
             standardize: bool = False, dataset_options: Mapping[str, Any] | None = None,
             batch_size: int = 128, num_workers: int = 2) -> EvalResult:
    """Zero-shot CLIP on a labelled split: templates, or a description ensemble (``descriptions``:
    a file, ``none``, or by default the shipped ``prompts/<dataset>.yaml``)."""
    labelled = load_split(_dataset_for(dataset, data_root, dataset_options), split)
    model = ModelConfig(backbone=backbone, image_size=image_size, descriptions=descriptions or "auto")
    frozen = build_backbone(model)
    chosen, source = resolve_descriptions(model.descriptions, labelled.name, labelled.class_names)
    method = build_method("zeroshot", frozen, labelled.class_names, chosen, standardize=standardize)
    result = evaluate_method(method, labelled, batch_size, num_workers, name="zeroshot")
    result.notes.append(f"zero-shot {frozen.spec} on {labelled.name}/{split}; descriptions: {source}")
    return result


def _dataset_for(dataset: str | None, data_root: str | Path | None, options: Mapping[str, Any] | None,
                 run_dir: Path | None = None) -> DataConfig:
    """The dataset named, or else the one ``run_dir`` was trained on (with its loader options)."""
    if dataset is None:
        if run_dir is None:
            raise UsageError("--dataset is required (only a run folder remembers its dataset)")
        return load_run_config(run_dir / CONFIG_FILE).data
    return DataConfig(dataset=dataset, root=str(data_root) if data_root is not None else None,
                      options=dict(options or {}))


# ------------------------------------------------------------------------------ prompts: load, use, export
def load_prompts(source: str | Path, *, which: str = "best", backbone: FrozenCLIP | None = None,
                 class_names: Sequence[str] | None = None) -> LoadedPrompts:
    """The method stored in a prompts file, or in a run folder's ``which`` prompts, rebuilt on the
    backbone its header names (or on ``backbone``, which must have the same weights)."""
    path = prompts_path(source, which)
    method, header = load_prompts_file(path, backbone, class_names)
    return LoadedPrompts(method, header, path)


def predict(images: str | Path | Iterable[str | Path], prompts: str | Path, *, which: str = "best",
            threshold: float | None = None, topk: int | None = None, heatmaps: str | Path | None = None,
            batch_size: int = 32) -> list[Prediction]:
    """Labels for image files and folders of images; an unreadable image carries an ``error``
    instead of stopping the others. Default threshold: the prompts file's, else 0.5."""
    if topk is not None:
        check_number("--topk", topk, minimum=1)
    if threshold is not None:
        check_number("--threshold", threshold, minimum=0, maximum=1)
    inputs = [images] if isinstance(images, (str, Path)) else list(images)
    paths = expand_images(inputs)
    if not paths:
        raise UsageError(f"no images found in {', '.join(map(str, inputs))}")
    loaded = load_prompts(prompts, which=which)
    loaded.method.to(process_state().device)
    chosen = threshold if threshold is not None else loaded.header.get("thresholds")
    return predict_images(loaded.method, paths, threshold=chosen, top_k=topk,
                          heatmap_dir=Path(heatmaps) if heatmaps is not None else None, batch_size=batch_size)


def export(run_dir: str | Path, out: str | Path, *, format: str = "promptmlr", which: str = "best") -> Path:
    """Write a run's learned prompts to ``out``: ``promptmlr`` copies the prompts file (everything,
    reloadable), ``text-embeddings`` writes a plain ``[C, D]`` classifier (.safetensors or .npy)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a run folder")
    source = prompts_path(run_dir, which)
    if format == "promptmlr":
        read_header(source)  # refuse to copy something that is not a prompts file
        return atomic_write(out, lambda temp: shutil.copyfile(source, temp))
    if format == "text-embeddings":
        return export_text_embeddings(load_prompts_file(source)[0], out)
    raise UsageError(f"format must be promptmlr or text-embeddings, got {format!r}")


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
