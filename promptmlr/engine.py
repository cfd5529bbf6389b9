"""The training loop: a plain accelerate loop over frozen features, with evaluation, model
selection on the validation split, label recovery, EMA and resumable checkpoints.

Runs unchanged on CPU, one GPU or several (``accelerate launch -m promptmlr tune ...``), in fp32,
bf16 or fp16. Only the method's learnable parameters are optimised; the frozen encoder's features
come from a :class:`~promptmlr.features.FeatureSource`: the feature cache, or the encoder under
``no_grad`` per batch.

Hooks observe the loop without changing it (the speed benchmark times it with them):
``Trainer(..., hooks=[hook])`` enters the context manager ``hook(phase)`` around every phase named
in :data:`PHASES`. A Trainer has none by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from transformers import get_cosine_schedule_with_warmup

from promptmlr.cache import CacheConfig
from promptmlr.checkpoint import CheckpointError, load_checkpoint, restore_rng_states, save_checkpoint
from promptmlr.data.protocol import Splits
from promptmlr.errors import ConfigError, PromptMLRError
from promptmlr.features import FeatureSource
from promptmlr.losses import LossConfig, build_loss
from promptmlr.metrics import evaluate
from promptmlr.migrations import refuse_legacy_checkpoint
from promptmlr.models.base import MultiLabelMethod
from promptmlr.options import check_fields, option
from promptmlr.progress import progress_bar
from promptmlr.recovery import RecoveryConfig, RecoveryStats, prototype_similarity, recover_labels
from promptmlr.runs import CHECKPOINT_FILE
from promptmlr.scoring import collect, method_outputs, score
from promptmlr.tracking import (
    PROJECT_NAME,
    TENSORBOARD_DIR,
    TRACKERS,
    epoch_values,
    flat_hyperparameters,
    parse_trackers,
)

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "step", "onecycle")
PRECISIONS = ("no", "bf16", "fp16")
# What a Trainer tells its hooks, in the order a run first reaches each; a phase spans all of its work.
PHASES = (
    "caching",             # once per fit: the loaders, building (or opening) the feature caches (whether
                           # to cache is decided before, when the Trainer is made)
    "training",            # each training epoch
    "evaluation",          # scoring val and test after each epoch (or once, untrained), and the final test logits
    "evaluation prompts",  # within evaluation or recovery: the prompts encoded once for a scoring pass
                           # (label recovery's prototype passes encode theirs within recovery)
    "recovery",            # label recovery after an epoch
    "checkpoint",          # writing the checkpoint after each epoch
)
PhaseHook = Callable[[str], ContextManager[None]]  # called with a phase's name; its context spans the phase


class TrainingDivergedError(PromptMLRError, RuntimeError):
    """The loss, the learned tensors or the scores of an epoch became NaN or infinite; the message names
    where, and the last good checkpoint (a diverged epoch is never checkpointed)."""


@dataclass
class TrainConfig:
    """The ``train:`` section of a run's configuration: optimisation, evaluation and its parts."""

    epochs: int = option(20, "training epochs", minimum=1)
    batch_size: int = option(32, "training images per batch", minimum=1)
    eval_batch_size: int = option(128, "images per batch when scoring (evaluation, recovery)", minimum=1)
    optimizer: str = option("adamw", "optimiser of the method's learnable parameters (adam: weight decay as an L2 "
                                     "term in the gradient, as HCP-MLR-PL's and CLSL's Adam)", choices=OPTIMIZERS)
    lr: float = option(2e-3, "peak learning rate (a method's parts may scale it, e.g. enhance_lr_scale)", above=0)
    weight_decay: float = option(1e-4, "weight decay of the optimiser", minimum=0)
    momentum: float = option(0.9, "SGD momentum (optimizer sgd only)", minimum=0, below=1)
    lr_warmup_epochs: float = option(1.0, "linear learning-rate warm-up before the cosine or step decay, in epochs "
                                          "(onecycle rises by lr_pct_start instead)", minimum=0)
    lr_schedule: str = option("cosine", "learning-rate schedule after the warm-up: cosine decay to 0; step: times "
                                        "lr_step_gamma every lr_step_epochs (HCP-MLR-PL's StepLR); onecycle: "
                                        "torch's OneCycleLR (CLSL's), whose own warm-up is lr_pct_start",
                              choices=LR_SCHEDULES)
    lr_step_epochs: int = option(10, "epochs between the step schedule's decays", minimum=1)
    lr_step_gamma: float = option(0.1, "factor of each of the step schedule's decays", above=0, maximum=1)
    lr_pct_start: float = option(0.2, "fraction of the steps the onecycle schedule spends rising", above=0, below=1)
    grad_accum: int = option(1, "batches whose gradients are accumulated into one optimiser step", minimum=1)
    mixed_precision: str = option("no", "autocast precision: no (fp32), bf16 or fp16 (fp16 needs a GPU)",
                                  choices=PRECISIONS)
    ema_decay: float = option(0.0, "decay of an exponential moving average of the learnable parameters, "
                                   "evaluated in their place; 0: off", minimum=0, below=1)
    seed: int = option(0, "seed of initialisation, batch order and augmentation", minimum=0,
                       maximum=2**32 - 1)  # NumPy's seed range
    num_workers: int = option(2, "data-loader worker processes decoding images", minimum=0)
    randaugment: bool = option(False, "RandAugment on training images (DualCoOp's recipe)")
    cutout: bool = option(False, "Cutout on training images (DualCoOp's recipe)")
    select_on: str = option("val", "split whose mAP selects the best epoch; test is the anchors' habit, "
                                   "flagged in the results", choices=("val", "test"))
    threshold: float = option(0.5, "probability above which a label counts as predicted (the F1 metrics)",
                              above=0, below=1, refusal="train.threshold is a probability in (0, 1), got {value}")
    loss: LossConfig = option(help="the training loss (train.loss.*)", factory=LossConfig)
    recovery: RecoveryConfig = option(help="label recovery: pseudo-labels for unknown labels (train.recovery.*)",
                                      factory=RecoveryConfig)
    cache: CacheConfig = option(help="the frozen-feature cache (train.cache.*)", factory=CacheConfig)
    report_to: str = option("none", "experiment trackers that log each epoch, comma-separated (--report-to)",
                            allowed=f"none, or any of {', '.join(TRACKERS)}")

    def __post_init__(self) -> None:
        check_fields(self, "train.")
        parse_trackers(self.report_to)


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


def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimiser over a method's parameter groups (:meth:`MultiLabelMethod.parameter_groups`),
    each at its ``lr_scale`` times ``train.lr``; the cosine schedule then scales every group alike."""
    groups = [{"params": group["params"], "lr": config.lr * group["lr_scale"]} for group in groups]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, warmup_steps: int
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.lr_schedule`` over ``train.epochs`` epochs, stepped once per optimiser step. The step
    schedule counts its decays in whole epochs from the start, as ``StepLR(step_size=lr_step_epochs)``
    stepped per epoch does in HCP-MLR-PL's training loops."""
    total_steps = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
                                                   total_steps=total_steps, pct_start=config.lr_pct_start)
    if config.lr_schedule == "step":
        step_length = config.lr_step_epochs * steps_per_epoch

        def factor(step: int) -> float:
            warmup = step / warmup_steps if step < warmup_steps else 1.0  # as the cosine schedule's warm-up
            return warmup * config.lr_step_gamma ** (step // step_length)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


class Trainer:
    """Fits a method on a run's splits. ``hyperparameters`` (the resolved run configuration) are
    recorded by the experiment trackers named in ``config.report_to``; ``hooks`` are entered around
    each phase of the run (:data:`PHASES`); ``checkpoint_extra`` is saved with every checkpoint
    (the API stores the run's configuration there, to refuse a resume under another one)."""

    def __init__(self, method: MultiLabelMethod, splits: Splits, config: TrainConfig, run_dir: Path,
                 hyperparameters: dict | None = None, hooks: Sequence[PhaseHook] = (),
                 checkpoint_extra: dict | None = None):
        self.config = config
        self.splits = splits
        self.run_dir = Path(run_dir)
        self.hyperparameters = hyperparameters or {"train": dataclasses.asdict(config)}
        self.hooks = tuple(hooks)
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.loss_fn = build_loss(config.loss)
        self.trackers = parse_trackers(config.report_to)
        self.accelerator = _accelerator(config, self.run_dir, self.trackers)
        set_seed(config.seed)
        self.method = method.to(self.accelerator.device)
        self.features = FeatureSource(method.backbone, splits, config, self.accelerator)
        # on the device, so a training step gathers its targets without a round trip through the host
        self.labels = torch.from_numpy(splits.train.labels.astype(np.int8)).to(self.accelerator.device)
        self.pseudo_labels = torch.zeros_like(self.labels)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Every hook's context around phase ``name`` (one of :data:`PHASES`)."""
        with contextlib.ExitStack() as stack:
            for hook in self.hooks:
                stack.enter_context(hook(name))
            yield

    # ------------------------------------------------------------------------------------ training
    def fit(self, resume: bool = False, checkpoint: dict | None = None) -> TrainResult:
        """Train, evaluate and select; ``resume`` continues from the run folder's checkpoint
        (``checkpoint``: its state, when the caller has read it already)."""
        config, accelerator = self.config, self.accelerator
        started = time.time()
        if getattr(self.splits, config.select_on) is None and type(self._unwrapped).learns:
            # selecting on a missing split would keep the first epoch and call it selected
            raise ConfigError(f"train.select_on {config.select_on}: this run has no {config.select_on} split to "
                              f"select an epoch on; select on the split it has")
        if self.splits.val is None and self._unwrapped.fits_on_validation():
            # the values it would fit would stay at their start, unsaid
            raise ConfigError(f"method {self._unwrapped.name} chooses values on the validation split before each "
                              f"evaluation, and this run has none; give it a validation split")
        with self._phase("caching"):
            train_loader = self.features.loader(self.splits.train, train=True, description="train")
            eval_loaders = {name: self.features.loader(dataset, train=False, description=name)
                            for name, dataset in (("val", self.splits.val), ("test", self.splits.test))
                            if dataset is not None}
            if config.recovery.enabled:
                eval_loaders["train-scoring"] = self.features.loader(self.splits.train, train=False,
                                                                     description="train (eval view)")
        groups = [group for group in self.method.parameter_groups() if group["params"]]
        parameters = [p for group in groups for p in group["params"]]
        optimizer = build_optimizer(config, groups) if parameters else None
        steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
        scheduler = None
        if optimizer is not None:
            warmup_steps, total_steps = (int(config.lr_warmup_epochs * steps_per_epoch),
                                         max(1, config.epochs * steps_per_epoch))
            if config.lr_schedule == "onecycle":
                warmup_steps = 0  # OneCycleLR's own rise (lr_pct_start) is its warm-up
            if total_steps == 1 and warmup_steps > 0:
                # a warm-up's first step is at learning rate 0: the only step of a run would change nothing
                warmup_steps = 0
                self._print(f"this run makes one optimiser step ({config.epochs} epoch of {len(train_loader)} "
                            f"batch(es), grad_accum {config.grad_accum}): it is taken at train.lr, without the "
                            f"warm-up, which would take it at 0 and learn nothing")
            scheduler = build_scheduler(config, optimizer, steps_per_epoch, warmup_steps)
            self.method, optimizer, scheduler = accelerator.prepare(self.method, optimizer, scheduler)
        ema = ParameterEMA(self._unwrapped, config.ema_decay) if config.ema_decay > 0 and parameters else None
        result = TrainResult(select_on=config.select_on)
        self._start_tracking()
        best_score = -math.inf
        start_epoch = 0
        checkpoint_path = self.run_dir / CHECKPOINT_FILE
        if resume:
            refuse_legacy_checkpoint(checkpoint_path, CheckpointError)
        if resume and (checkpoint is not None or checkpoint_path.is_file()):
            state = checkpoint if checkpoint is not None else load_checkpoint(checkpoint_path)
            start_epoch, best_score = self._restore(state, optimizer, scheduler, ema, result)
            self._print(f"resumed from {checkpoint_path} after epoch {start_epoch}")
        epochs = config.epochs if parameters else 0
        for epoch in range(start_epoch, epochs):
            epoch_started = time.time()
            with self._phase("training"):
                train_loss = self._train_epoch(epoch, train_loader, optimizer, scheduler, ema, checkpoint_path)
            # a step can leave NaN or inf weights behind a finite loss: such an epoch is neither scored
            # nor checkpointed, so the checkpoint on disk stays the last finite one
            self._check_finite_state(epoch, ema, checkpoint_path)
            record = {"epoch": epoch + 1, "train_loss": train_loss, **_learning_rates(scheduler)}
            with _averaged(ema):
                with self._phase("evaluation"):
                    record.update(self._evaluate_splits(eval_loaders, epoch, checkpoint_path))
                if config.recovery.enabled and epoch + 1 >= config.recovery.known_only_epochs:
                    with self._phase("recovery"):
                        recovery = self._recover(eval_loaders["train-scoring"], eval_loaders.get("val"))
                    record["recovery"] = recovery.as_dict()
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
            with self._phase("checkpoint"):
                if accelerator.is_main_process:
                    save_checkpoint(checkpoint_path, self._checkpoint(epoch + 1, optimizer, scheduler, ema, result,
                                                                      best_score))
        if not result.history:  # nothing to train (zero-shot): evaluate once
            with self._phase("evaluation"):
                record = {"epoch": 0, **self._evaluate_splits(eval_loaders)}
            result.history.append(record)
            result.best_epoch = 0
            result.best_state = learnable_state(self._unwrapped)
        with _averaged(ema):
            result.last_state = learnable_state(self._unwrapped)
        result.method = self._unwrapped
        result.method.load_state_dict(result.best_state)
        with self._phase("evaluation"):
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
        self._unwrapped.set_epoch(epoch)
        self.features.start_epoch(loader, epoch)
        if self._unwrapped.wants_training_pass():
            self._training_pass(loader)
        self.method.train()
        total, batches = 0.0, 0
        progress = progress_bar(loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                                disable=not accelerator.is_local_main_process)
        for step, batch in enumerate(progress):
            self._unwrapped.set_epoch_fraction(step / len(loader))
            features, indices = self.features.from_batch(batch)
            targets, weights = self._targets(indices)
            with accelerator.accumulate(self.method), accelerator.autocast():
                output = self.method(features)
                loss = self._unwrapped.training_loss(output, targets, self.loss_fn, weights)
                if not torch.isfinite(loss):
                    paths = [str(self.splits.train.image_paths[i]) for i in indices.cpu().tolist()[:4]]
                    raise TrainingDivergedError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, batch {step} (images {paths}...); "
                        f"{_divergence_advice(epoch, checkpoint_path)}")
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

    @torch.no_grad()
    def _training_pass(self, loader) -> None:
        """The method's pass over the training batches before an epoch (:meth:`MultiLabelMethod.training_pass`:
        DSRB's prototypes), with their known labels, in evaluation mode, as HCP-MLR-PL's prototype pass runs.
        Each process reads the batches it trains on."""
        method = self._unwrapped
        method.eval()
        labels = self.labels
        batches = ((features, labels[indices.to(labels.device)].float())
                   for features, indices in self.features.batches(loader))
        with self.accelerator.autocast():
            method.training_pass(progress_bar(batches, desc="training-set pass", total=len(loader), leave=False,
                                              disable=not self.accelerator.is_local_main_process))

    @torch.no_grad()
    def _check_finite_state(self, epoch: int, ema: ParameterEMA | None, checkpoint_path: Path) -> None:
        """Refuse an epoch whose learned tensors (or their EMA) hold NaN or inf: every later score and
        the checkpoint would be built on them. One reduction per tensor, read back once."""
        named = [(name, tensor) for name, tensor in self._unwrapped.state_dict().items() if tensor.is_floating_point()]
        named += [(f"the EMA of {name}", tensor) for name, tensor in (ema.shadow.items() if ema else ())]
        if not named:
            return
        finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in named]).cpu()
        if not finite.all():
            name, tensor = named[int((~finite).nonzero()[0])]
            raise TrainingDivergedError(
                f"training diverged in epoch {epoch + 1}: {name} holds {int((~torch.isfinite(tensor)).sum())} NaN "
                f"or infinite value(s) after the epoch's last step, though its loss was finite; "
                f"{_divergence_advice(epoch, checkpoint_path)}")

    # ---------------------------------------------------------------------------------- evaluation
    def _score(self, loader, logits: bool = True) -> np.ndarray:
        """Logits (or probabilities) ``[N, C]`` in dataset order, gathered from every process (the one
        scoring path)."""
        return score(self._unwrapped, self.features.batches(loader), self.accelerator.autocast,
                     self.accelerator.gather_for_metrics, progress=self.accelerator.is_local_main_process,
                     logits=logits, total=len(loader), encoding=lambda: self._phase("evaluation prompts"),
                     rows=len(loader.dataset))

    def _evaluate_splits(self, loaders: dict, epoch: int = -1, checkpoint_path: Path | None = None) -> dict:
        """The metrics of val and test after ``epoch`` (0-based; -1: untrained). Logits that are not all
        finite are refused: mAP would rank NaNs as if they were scores and still report a number."""
        record = {}
        if "val" in loaders and self._unwrapped.fits_on_validation():
            self._fit_on_validation(loaders["val"])
        for name in ("val", "test"):
            if name in loaders:
                logits = self._score(loaders[name])
                if not np.isfinite(logits).all():
                    bad = f"{int((~np.isfinite(logits)).sum())} of the {logits.size} {name} logits are NaN or infinite"
                    if epoch < 0:  # nothing was trained: the fixed tensors or the features are at fault
                        raise TrainingDivergedError(f"{bad} before any training: the backbone's features or the "
                                                    f"method's fixed text features are not finite")
                    raise TrainingDivergedError(
                        f"training diverged in epoch {epoch + 1}: {bad}, though every learned tensor is finite (the "
                        f"largest entry is {_largest_entry(self._unwrapped):.3g}); "
                        f"{_divergence_advice(epoch, checkpoint_path)}")
                dataset = getattr(self.splits, name)
                for key, value in evaluate(logits, dataset.labels, self.config.threshold, from_logits=True).items():
                    record[f"{name}_{key}"] = value
        return record

    def _fit_on_validation(self, loader) -> None:
        """The method's fit on the validation split (:meth:`MultiLabelMethod.fits_on_validation`), through
        the one scoring path; every process gathers the whole split and fits the same values."""
        method = self._unwrapped
        outputs = method_outputs(method, self.features.batches(loader), self.accelerator.autocast,
                                 lambda: self._phase("evaluation prompts"))
        inputs, _ = collect(outputs, method.validation_fit_inputs, self.accelerator.gather_for_metrics,
                            rows=len(loader.dataset))
        method.fit_on_validation(inputs, self.splits.val.labels)

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
                self._unwrapped, lambda: self.features.batches(loader), self.labels, self.accelerator.autocast,
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
            **self.checkpoint_extra,
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


def _divergence_advice(epoch: int, checkpoint_path: Path | None) -> str:
    """What a divergence leaves and what to do. The checkpoint on disk is that of the epoch before
    ``epoch`` (0-based), as a diverged epoch is never saved. ``--resume`` restores every RNG, so under
    the same settings it diverges again at the same place: the fix is a new run."""
    if checkpoint_path is not None and checkpoint_path.is_file():
        kept = f"the last good checkpoint is {checkpoint_path}, after epoch {epoch}"
    else:
        kept = "no checkpoint was written yet"
    return (f"training stopped and {kept}. Start a new run with a lower train.lr (or mixed_precision bf16 "
            f"instead of fp16); --resume repeats these settings")


def _largest_entry(method: MultiLabelMethod) -> float:
    return max((float(tensor.detach().abs().max()) for tensor in method.state_dict().values()
                if tensor.is_floating_point() and tensor.numel()), default=0.0)


def _learning_rates(scheduler) -> dict[str, float]:
    """``lr``: the first parameter group's (the prompts'); ``lr_1``, ...: each later group that trains
    at a rate of its own (promptmlr's enhancement at 4x), so that none goes unlogged."""
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

