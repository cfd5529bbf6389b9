"""The Python API behind the commands: tune a method on a dataset, evaluate prompts, zero-shot.

``tune`` goes data -> partial-label mask -> validation split -> frozen backbone -> method -> engine
-> run folder. Every function here returns plain results and writes files; the CLI only prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from accelerate.utils import set_seed

from promptmlr.backbones import FrozenCLIP, create_backbone
from promptmlr.config import CacheConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from promptmlr.data import build_dataset, make_partial_labels, mask_sha256, split_validation
from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.sandbox import default_synthetic_root
from promptmlr.descriptions import Descriptions, check_classes, load_descriptions, shipped_descriptions_path
from promptmlr.engine import Splits, Trainer
from promptmlr.errors import ConfigError
from promptmlr.export import save_prompts
from promptmlr.metrics import evaluate
from promptmlr.models import MultiLabelMethod, build_method
from promptmlr.runs import (
    BEST_PROMPTS,
    LAST_PROMPTS,
    PREDICTIONS_STEM,
    split_metrics,
    summary_table,
    write_config,
    write_metrics,
    write_predictions,
    write_summary,
)


@dataclass
class TuneResult:
    run_dir: Path
    metrics: dict
    table: str


def load_splits(config: DataConfig) -> tuple[Splits, str]:
    """Training data masked by the partial-label protocol, a validation split carved from it, the
    test split, and the SHA-256 of the mask."""
    train = build_dataset(config.dataset, dataset_root(config), config.train_split, **config.options)
    if len(train) == 0:
        raise ConfigError(f"{config.dataset}/{config.train_split} has no images under {config.root}")
    partial = make_partial_labels(train.labels, config.known, config.mask_seed, config.mask_scheme)
    masked = train.with_labels(partial)
    if config.val_fraction > 0:
        train_rows, val_rows = split_validation(partial, config.val_fraction, config.val_seed)
    else:
        train_rows, val_rows = np.arange(len(train)), None
    test = None
    if config.test_split:
        test = build_dataset(config.dataset, dataset_root(config), config.test_split, **config.options)
    splits = Splits(train=masked.subset(train_rows), val=masked.subset(val_rows) if val_rows is not None else None,
                    test=test, full_train_labels=train.labels[train_rows])
    return splits, mask_sha256(partial)


def dataset_root(config: DataConfig) -> Path:
    """Where the dataset's files are; the synthetic world has a default folder of its own."""
    if config.root is None:
        if config.dataset == "synthetic":
            return default_synthetic_root()
        raise ConfigError(f"dataset {config.dataset} needs --data-root (where its files are)")
    return Path(config.root)


def resolve_descriptions(model: ModelConfig, dataset: str, class_names: list[str]) -> tuple[Descriptions | None, str]:
    """The class descriptions to use and where they came from ('none' when there are none)."""
    choice = model.descriptions
    if choice in (None, "none"):
        return None, "none"
    if choice == "auto":
        path = shipped_descriptions_path(dataset)
        if path is None:
            return None, "none"
        descriptions = load_descriptions(path)
        if set(descriptions) != set(class_names):  # shipped for the standard class list; the user's may differ
            return None, f"none ({path} does not match this dataset's classes)"
        return check_classes(descriptions, class_names, str(path)), str(path)
    return check_classes(load_descriptions(choice), class_names, choice), choice


def build_backbone(model: ModelConfig) -> FrozenCLIP:
    return create_backbone(model.backbone, image_size=model.image_size, dense_mode=model.dense_mode)


def tune(config: RunConfig, run_dir: str | Path, resume: bool = False, log=print) -> TuneResult:
    """Train ``config.model.method`` on ``config.data`` and fill ``run_dir`` (see :mod:`promptmlr.runs`)."""
    started = time.time()
    run_dir = Path(run_dir)
    splits, mask_hash = load_splits(config.data)
    backbone = build_backbone(config.model)
    class_names = splits.train.class_names
    descriptions, descriptions_source = resolve_descriptions(config.model, config.data.dataset, class_names)
    set_seed(config.train.seed)  # random prompt contexts and embeddings start the same in every run
    method = build_method(config.model.method, backbone, class_names, descriptions, **config.model.options)
    locations = _locations(backbone)
    log(f"data {config.data.dataset}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
        f"{len(splits.test) if splits.test else 0} test images, {len(class_names)} classes, "
        f"{config.data.known:.0%} of training labels known (mask sha256 {mask_hash[:12]}…)")
    log(f"backbone {backbone.spec} at {backbone.image_size}px ({locations} locations); descriptions: "
        f"{descriptions_source}")
    log(method.summary(config.train.batch_size, locations))
    write_config(run_dir, config.to_dict())
    trainer = Trainer(method, splits, config.train, run_dir)
    result = trainer.fit(resume=resume)
    best = result.history[result.best_epoch - 1] if result.best_epoch > 0 else result.history[0]
    last = result.history[-1]
    unwrapped = trainer._unwrapped
    for file_name, state, record in ((BEST_PROMPTS, result.best_state, best), (LAST_PROMPTS, result.last_state, last)):
        unwrapped.load_state_dict(state)
        save_prompts(unwrapped, run_dir / file_name, thresholds=[config.train.threshold] * len(class_names),
                     metrics=record, mask_sha256=mask_hash,
                     extra={"selected_on": result.select_on, "epoch": record["epoch"]})
    unwrapped.load_state_dict(result.best_state)
    if splits.test is not None:
        scores = trainer.scores_for("test")
        write_predictions(run_dir / PREDICTIONS_STEM, splits.test.image_paths, class_names, scores,
                          splits.test.labels)
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
    write_metrics(run_dir, metrics)
    notes = [f"mask sha256: {mask_hash}", f"backbone: {backbone.spec} (weights {backbone.fingerprint[:12]}…)",
             f"trainable parameters: {metrics['trainable_parameters']:,}",
             f"wall time: {metrics['total_seconds']:.0f} s"]
    write_summary(run_dir, f"{config.model.method} on {config.data.dataset}, {config.data.known:.0%} known "
                           f"(test set)", table, notes)
    return TuneResult(run_dir, metrics, table)


def _locations(backbone: FrozenCLIP) -> int:
    grid = backbone.dense_shape[1]
    return grid[0] * grid[1]


def evaluate_method(method: MultiLabelMethod, dataset: MultiLabelDataset, batch_size: int = 128,
                    num_workers: int = 2, threshold: float = 0.5) -> tuple[dict, np.ndarray]:
    """Metrics and probabilities of ``method`` on a labelled dataset (features computed live)."""
    config = TrainConfig(eval_batch_size=batch_size, num_workers=num_workers, threshold=threshold, epochs=0,
                         cache=CacheConfig(enabled="off"))
    trainer = Trainer(method, Splits(train=dataset, val=None, test=dataset), config, Path("."))
    scores = trainer.scores_for("test")
    return evaluate(scores, dataset.labels, threshold), scores
