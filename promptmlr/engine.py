"""The training loop: a plain accelerate loop over frozen features, with evaluation, model
selection on the validation split, label recovery, EMA and resumable checkpoints.

Runs unchanged on CPU, one GPU or several (``accelerate launch -m promptmlr tune ...``), in fp32,
bf16 or fp16. Only the method's learnable parameters are optimised; the frozen encoder's features
come from the feature cache (:mod:`promptmlr.cache`) or are computed under ``no_grad`` per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from promptmlr.backbones.base import ImageFeatures
from promptmlr.cache import (
    ALONE,
    CacheConfig,
    CachedFeatureDataset,
    ProcessGroup,
    build_or_open_cache,
    bytes_to_build,
    cache_root,
    encode,
    estimated_bytes,
    free_bytes,
)
from promptmlr.checkpoint import load_checkpoint, refuse_legacy_checkpoint, restore_rng_states, save_checkpoint
from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.protocol import Splits
from promptmlr.errors import ConfigError, PromptMLRError, check_choice, check_number
from promptmlr.losses import LossConfig, build_loss
from promptmlr.metrics import evaluate
from promptmlr.models.base import MultiLabelMethod
from promptmlr.recovery import RecoveryConfig, RecoveryStats, prototype_similarity, recover_labels
from promptmlr.runs import CHECKPOINT_FILE, LEGACY_CHECKPOINT
from promptmlr.scoring import FeatureBatch, score
from promptmlr.tracking import PROJECT_NAME, TENSORBOARD_DIR, epoch_values, flat_hyperparameters, parse_trackers

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("no", "bf16", "fp16")


class TrainingDivergedError(PromptMLRError, RuntimeError):
    """The loss became NaN or infinite; the message names the batch and the last good checkpoint."""


@dataclass
class TrainConfig:
    """The ``train:`` section of a run's configuration: optimisation, evaluation and its parts."""

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
    report_to: str = "none"  # experiment trackers (promptmlr.tracking): none, tensorboard, wandb, mlflow

    def __post_init__(self) -> None:
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("train.select_on", self.select_on, ("val", "test"))
        check_choice("train.mixed_precision", self.mixed_precision, PRECISIONS)
        parse_trackers(self.report_to)
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"train.threshold is a probability in (0, 1), got {self.threshold}")
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum"):
            check_number(f"train.{name}", getattr(self, name), minimum=1)
        for name in ("weight_decay", "warmup_epochs", "num_workers"):
            check_number(f"train.{name}", getattr(self, name), minimum=0)
        check_number("train.seed", self.seed, minimum=0, maximum=2**32 - 1)  # NumPy's seed range
        check_number("train.lr", self.lr, above=0)
        check_number("train.momentum", self.momentum, minimum=0, below=1)
        check_number("train.ema_decay", self.ema_decay, minimum=0, below=1)


@dataclass
class TrainResult:
    """What ``fit`` leaves: the history, the selected and last states, and the method itself with the
    selected state loaded, plus its test logits (None without a test split)."""

    method: MultiLabelMethod | None = None
    test_logits: np.ndarray | None = None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    last_state: dict[str, torch.Tensor] | None = None
    select_on: str = "val"
    seconds: float = 0.0


class ParameterEMA:
    """Exponential moving average of a method's learnable tensors, swapped in for evaluation."""

    def __init__(self, method: MultiLabelMethod, decay: float):
        self.decay = decay
        # the learnable tensors only, found once: a per-step walk would visit every frozen backbone tensor
        self.parameters = {name: p for name, p in method.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().clone() for name, p in self.parameters.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, parameter in self.parameters.items():
            self.shadow[name].lerp_(parameter.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged values (call twice to restore)."""
        for name, parameter in self.parameters.items():
            live = parameter.detach().clone()
            parameter.copy_(self.shadow[name])
            self.shadow[name] = live


def learnable_state(method: MultiLabelMethod) -> dict[str, torch.Tensor]:
    """A CPU copy of the method's state (the frozen backbone is never part of it)."""
    return {name: tensor.detach().cpu().clone() for name, tensor in method.state_dict().items()}


def process_state() -> PartialState:
    """accelerate's process state, made the way the trainer's Accelerator makes it. Without a GPU
    it must be asked for the CPU: a bare ``PartialState()`` under ``accelerate launch`` (torchrun)
    on a GPU-less machine sees one process, and being a singleton it would keep every later
    Accelerator there, so each process would run the whole job alone."""
    return PartialState(cpu=not torch.cuda.is_available())


def process_group(accelerator: Accelerator) -> ProcessGroup:
    """accelerate's processes as the group that shares the cache's encoding pass."""
    if accelerator.num_processes == 1:
        return ALONE
    return ProcessGroup(accelerator.process_index, accelerator.num_processes,
                        lambda value: broadcast_object_list([value], from_process=0)[0],
                        accelerator.wait_for_everyone)


def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimiser over a method's parameter groups (:meth:`MultiLabelMethod.parameter_groups`),
    each at its ``lr_scale`` times ``train.lr``; the cosine schedule then scales every group alike."""
    groups = [{"params": group["params"], "lr": config.lr * group["lr_scale"]} for group in groups]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


class Trainer:
    """Fits a method on a run's splits. ``hyperparameters`` (the resolved run configuration) are
    recorded by the experiment trackers named in ``config.report_to``."""

    def __init__(self, method: MultiLabelMethod, splits: Splits, config: TrainConfig, run_dir: Path,
                 hyperparameters: dict | None = None):
        self.config = config
        self.splits = splits
        self.run_dir = Path(run_dir)
        self.hyperparameters = hyperparameters or {"train": dataclasses.asdict(config)}
        self.loss_fn = build_loss(config.loss)
        self.trackers = parse_trackers(config.report_to)
        self.accelerator = _accelerator(config, self.run_dir, self.trackers)
        set_seed(config.seed)
        self.method = method.to(self.accelerator.device)
        self.backbone = method.backbone  # frozen: never wrapped by accelerate, unlike the method
        self.use_cache = self._decide_cache()
        # on the device, so a training step gathers its targets without a round trip through the host
        self.labels = torch.from_numpy(splits.train.labels.astype(np.int8)).to(self.accelerator.device)
        self.pseudo_labels = torch.zeros_like(self.labels)

    # --------------------------------------------------------------------------------- data sources
    def _decide_cache(self) -> bool:
        """Whether to cache: ``auto`` says no only when the disk cannot hold what is still to build.
        Decided on the main process and shared, so that every process takes the same path."""
        cache = self.config.cache
        if cache.enabled == "off":
            return False
        parts = [(self.splits.train, self._transforms(train=True, cached=True))]
        parts += [(split, self._transforms(train=False, cached=True))
                  for split in (self.splits.val, self.splits.test) if split is not None]
        rows = sum(len(dataset) * len(transforms) for dataset, transforms in parts)
        size = estimated_bytes(self.backbone, rows, cache.dtype)
        smaller = "" if cache.dtype == "int8" else \
            f" (train.cache.dtype=int8 takes ~{estimated_bytes(self.backbone, rows, 'int8') / 2**30:.1f} GiB)"
        if cache.enabled == "auto":
            group = process_group(self.accelerator)
            root = cache_root(cache.directory)
            needed, free = group.share(
                (bytes_to_build(self.backbone, parts, root, self.config.seed, cache.dtype), free_bytes(root))
                if group.is_main else None)
            if needed > free:
                self._print(f"feature cache off: it needs ~{needed / 2**30:.1f} GiB more and {root} has "
                            f"{free / 2**30:.1f} GiB free; features are computed every step. Point "
                            f"train.cache.directory at a larger disk{smaller}")
                return False
        if size > cache.budget_gb * 2**30:
            self._print(f"feature cache ~{size / 2**30:.1f} GiB exceeds train.cache.budget_gb={cache.budget_gb}: it "
                        f"is built on disk and streamed from there every epoch, so steps wait on the disk where "
                        f"memory cannot hold it{smaller}")
        return True

    def _transforms(self, train: bool, cached: bool | None = None) -> list:
        """The views a split is seen through: with the cache (``cached``, default: whether this run
        caches) training takes ``cache.views`` augmented views, or only the eval view when it is 1."""
        backbone = self.backbone
        cached = self.use_cache if cached is None else cached
        if not train or (cached and self.config.cache.views == 1):
            return [backbone.transform(train=False)]
        augment = backbone.transform(train=True, randaugment=self.config.randaugment, cutout=self.config.cutout)
        return [augment] * (self.config.cache.views if cached else 1)

    def _loader(self, dataset: MultiLabelDataset, train: bool, description: str) -> DataLoader:
        config = self.config
        batch_size = config.batch_size if train else config.eval_batch_size
        transforms = self._transforms(train)
        if self.use_cache:
            cache = build_or_open_cache(
                self.backbone, dataset, transforms, self.config.cache.directory, config.seed,
                config.cache.encode_batch_size(config.eval_batch_size, self.accelerator.device), config.num_workers,
                config.cache.dtype, self.accelerator.autocast,
                description, process_group(self.accelerator))
            source = CachedFeatureDataset(cache)
            loader = DataLoader(source, batch_size=batch_size, shuffle=train, collate_fn=source.collate,
                                pin_memory=torch.cuda.is_available())  # no workers: see CachedFeatureDataset
        else:
            loader = DataLoader(dataset.with_transform(transforms[0], draft_size=self.backbone.image_size),
                                batch_size=batch_size, shuffle=train, num_workers=config.num_workers,
                                pin_memory=torch.cuda.is_available())
        return self.accelerator.prepare_data_loader(loader)

    def _features(self, batch) -> tuple[ImageFeatures, torch.Tensor]:
        if self.use_cache:
            global_features, dense, indices = batch
            return ImageFeatures(global_features.float(), dense.float(), self.backbone.dense_shape[1]), indices
        images, _, indices = batch
        return encode(self.backbone, images, self.accelerator.autocast), indices

    # ------------------------------------------------------------------------------------ training
    def fit(self, resume: bool = False) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        started = time.time()
        train_loader = self._loader(self.splits.train, train=True, description="train")
        eval_loaders = {name: self._loader(dataset, train=False, description=name)
                        for name, dataset in (("val", self.splits.val), ("test", self.splits.test))
                        if dataset is not None}
        if config.recovery.enabled:
            eval_loaders["train-scoring"] = self._loader(self.splits.train, train=False,
                                                         description="train (eval view)")
        groups = [group for group in self.method.parameter_groups() if group["params"]]
        parameters = [p for group in groups for p in group["params"]]
        optimizer = build_optimizer(config, groups) if parameters else None
        steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
        scheduler = None
        if optimizer is not None:
            scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_epochs * steps_per_epoch),
                                                        max(1, config.epochs * steps_per_epoch))
            self.method, optimizer, scheduler = accelerator.prepare(self.method, optimizer, scheduler)
        ema = ParameterEMA(self._unwrapped, config.ema_decay) if config.ema_decay > 0 and parameters else None
        result = TrainResult(select_on=config.select_on)
        self._start_tracking()
        best_score = -math.inf
        start_epoch = 0
        checkpoint_path = self.run_dir / CHECKPOINT_FILE
        if resume:
            refuse_legacy_checkpoint(checkpoint_path, self.run_dir / LEGACY_CHECKPOINT)
        if resume and checkpoint_path.is_file():
            state = load_checkpoint(checkpoint_path)
            start_epoch, best_score = self._restore(state, optimizer, scheduler, ema, result)
            self._print(f"resumed from {checkpoint_path} after epoch {start_epoch}")
        epochs = config.epochs if parameters else 0
        for epoch in range(start_epoch, epochs):
            epoch_started = time.time()
            train_loss = self._train_epoch(epoch, train_loader, optimizer, scheduler, ema, checkpoint_path)
            record = {"epoch": epoch + 1, "train_loss": train_loss, **_learning_rates(scheduler)}
            with _averaged(ema):
                record.update(self._evaluate_splits(eval_loaders))
                if config.recovery.enabled and epoch + 1 >= config.recovery.warmup_epochs:
                    record["recovery"] = self._recover(eval_loaders["train-scoring"], eval_loaders.get("val")).as_dict()
            selection = record.get(f"{config.select_on}_mAP", -math.inf)
            if selection > best_score or result.best_state is None:
                best_score, result.best_epoch = selection, epoch + 1
                with _averaged(ema):
                    result.best_state = learnable_state(self._unwrapped)
            record["seconds"] = time.time() - epoch_started
            result.history.append(record)
            self._print(_epoch_line(record))
            if self.trackers:
                self.accelerator.log(epoch_values(record), step=epoch + 1)
            if accelerator.is_main_process:
                save_checkpoint(checkpoint_path, self._checkpoint(epoch + 1, optimizer, scheduler, ema, result,
                                                                  best_score))
        if not result.history:  # nothing to train (zero-shot): evaluate once
            record = {"epoch": 0, **self._evaluate_splits(eval_loaders)}
            result.history.append(record)
            result.best_epoch = 0
            result.best_state = learnable_state(self._unwrapped)
        with _averaged(ema):
            result.last_state = learnable_state(self._unwrapped)
        result.method = self._unwrapped
        result.method.load_state_dict(result.best_state)
        result.test_logits = self._test_logits(eval_loaders)
        if self.trackers:
            self.accelerator.end_training()
        result.seconds = time.time() - started
        return result

    def _start_tracking(self) -> None:
        if self.trackers:
            self.accelerator.init_trackers(PROJECT_NAME, config=flat_hyperparameters(self.hyperparameters),
                                           init_kwargs={"wandb": {"name": self.run_dir.name},
                                                        "mlflow": {"run_name": self.run_dir.name}})

    @property
    def _unwrapped(self) -> MultiLabelMethod:
        return self.accelerator.unwrap_model(self.method)

    def _targets(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Known labels, plus recovered pseudo-labels where the label is unknown (weighted lower)."""
        rows = indices.to(self.labels.device)
        known = self.labels[rows]
        pseudo = self.pseudo_labels[rows]
        targets = torch.where(known != 0, known, pseudo).float()
        weights = torch.where(known != 0, torch.ones_like(targets),
                              torch.full_like(targets, self.config.recovery.pseudo_weight) * (pseudo != 0))
        return targets, weights

    def _train_epoch(self, epoch: int, loader, optimizer, scheduler, ema, checkpoint_path: Path) -> float:
        accelerator = self.accelerator
        self.method.train()
        self._unwrapped.set_epoch(epoch)
        loader.set_epoch(epoch)
        if isinstance(loader.dataset, CachedFeatureDataset):
            loader.dataset.draw_views(self.config.seed, epoch)
        total, batches = 0.0, 0
        progress = tqdm(loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                        disable=not accelerator.is_local_main_process)
        for step, batch in enumerate(progress):
            features, indices = self._features(batch)
            targets, weights = self._targets(indices)
            with accelerator.accumulate(self.method), accelerator.autocast():
                output = self.method(features)
                loss = self.loss_fn(output.logits, targets, weights)
                loss = loss + sum(self._unwrapped.auxiliary_losses(output, targets, self.loss_fn).values())
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(self._divergence_message(loss, epoch, step, indices, checkpoint_path))
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if ema is not None and accelerator.sync_gradients:
                ema.update()
            total += loss.item()
            batches += 1
            progress.set_postfix(loss=f"{total / batches:.4f}")
        return total / max(batches, 1)

    def _divergence_message(self, loss: torch.Tensor, epoch: int, step: int, indices: torch.Tensor,
                            checkpoint_path: Path) -> str:
        paths = [str(self.splits.train.image_paths[i]) for i in indices.cpu().tolist()[:4]]
        kept = (f"the last good checkpoint is {checkpoint_path} (resume with --resume)"
                if checkpoint_path.is_file() else "no checkpoint was written yet")
        return (f"loss became {loss.item()} at epoch {epoch + 1}, batch {step} (images {paths}...); training "
                f"stopped and {kept}. Lower train.lr, or use mixed_precision bf16 instead of fp16.")

    # ---------------------------------------------------------------------------------- evaluation
    def _batches(self, loader) -> Iterator[FeatureBatch]:
        return (self._features(batch) for batch in loader)

    def _score(self, loader, logits: bool = True) -> np.ndarray:
        """Logits (or probabilities) ``[N, C]`` in dataset order, gathered from every process (the one
        scoring path)."""
        return score(self._unwrapped, self._batches(loader), self.accelerator.autocast,
                     self.accelerator.gather_for_metrics, progress=self.accelerator.is_local_main_process,
                     logits=logits, total=len(loader))

    def _evaluate_splits(self, loaders: dict) -> dict:
        record = {}
        for name in ("val", "test"):
            if name in loaders:
                logits = self._score(loaders[name])
                dataset = getattr(self.splits, name)
                for key, value in evaluate(logits, dataset.labels, self.config.threshold, from_logits=True).items():
                    record[f"{name}_{key}"] = value
        return record

    def _test_logits(self, loaders: dict) -> np.ndarray | None:
        """The test logits of the method as it is (the selected state, for the predictions files)."""
        return self._score(loaders["test"]) if "test" in loaders else None

    # ------------------------------------------------------------------------------------ recovery
    @torch.no_grad()
    def _recover(self, loader, val_loader=None) -> RecoveryStats:
        validation = None
        if self.config.recovery.thresholds == "calibrated" and val_loader is not None:
            validation = (self._score(val_loader, logits=False), self.splits.val.labels)
        if self.config.recovery.prototype_weight == 0:
            probabilities, similarity = self._score(loader, logits=False), None
        else:
            probabilities, similarity = prototype_similarity(
                self._unwrapped, lambda: self._batches(loader), self.labels, self.accelerator.autocast,
                lambda tensor: self.accelerator.reduce(tensor, "sum"), self.accelerator.gather_for_metrics)
        labels = self.labels.cpu().numpy()
        pseudo, stats = recover_labels(probabilities, labels, self.config.recovery, similarity,
                                       self.splits.full_train_labels, validation)
        self.pseudo_labels = torch.from_numpy(pseudo).to(self.labels.device)
        return stats

    # --------------------------------------------------------------------------------- checkpoints
    def _checkpoint(self, epoch: int, optimizer, scheduler, ema, result: TrainResult, best_score: float) -> dict:
        return {
            "epoch": epoch,
            "method": learnable_state(self._unwrapped),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.shadow if ema else None,
            "pseudo_labels": self.pseudo_labels.cpu(),
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            "best_score": best_score,
            "best_epoch": result.best_epoch,
            "best_state": result.best_state,
            "history": result.history,
        }

    def _restore(self, state: dict, optimizer, scheduler, ema, result: TrainResult) -> tuple[int, float]:
        self._unwrapped.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state["ema"] is not None:
            ema.shadow = {name: tensor.to(self.accelerator.device) for name, tensor in state["ema"].items()}
        self.pseudo_labels = state["pseudo_labels"].to(self.labels.device)
        if state.get("scaler") and self.accelerator.scaler is not None:  # fp16's loss scale, on a GPU
            self.accelerator.scaler.load_state_dict(state["scaler"])
        result.best_epoch, result.best_state = state["best_epoch"], state["best_state"]
        result.history = state["history"]
        restore_rng_states(state["rng"])
        return state["epoch"], state["best_score"]

    def _print(self, message: str) -> None:
        self.accelerator.print(message)


def _accelerator(config: TrainConfig, run_dir: Path, trackers: list[str]) -> Accelerator:
    """An Accelerator for this run. accelerate keeps one process-wide state; a second run in the same
    single process (a benchmark, a notebook) with another precision needs it reset first."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != config.mixed_precision and process_state().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision fp16 needs a GPU; use bf16 (or no) on the CPU")
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                       cpu=not torch.cuda.is_available(), log_with=trackers or None,
                       project_config=ProjectConfiguration(project_dir=str(run_dir),
                                                           logging_dir=str(run_dir / TENSORBOARD_DIR)),
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed))


@contextlib.contextmanager
def _averaged(ema: ParameterEMA | None) -> Iterator[None]:
    """Evaluate with the EMA weights (no-op without EMA)."""
    if ema is None:
        yield
        return
    ema.swap()
    try:
        yield
    finally:
        ema.swap()


def _learning_rates(scheduler) -> dict[str, float]:
    """``lr``: the first parameter group's (the prompts'); ``lr_1``, ...: each later group that trains
    at a rate of its own (promptmlr's enhancement at 4x, issue #12), so that none goes unlogged."""
    if scheduler is None:
        return {"lr": 0.0}
    first, *others = scheduler.get_last_lr()
    return {"lr": first, **{f"lr_{index}": rate for index, rate in enumerate(others, 1)}}


def _epoch_line(record: dict) -> str:
    parts = [f"epoch {record['epoch']}"]
    for key in ("train_loss", "val_mAP", "test_mAP"):
        if key in record:
            parts.append(f"{key} {record[key]:.3f}" if "loss" in key else f"{key} {record[key]:.2f}")
    if "recovery" in record:
        recovery = record["recovery"]
        parts.append(f"recovered +{recovery['recovered_positive']}/-{recovery['recovered_negative']}")
    return " | ".join(parts)

