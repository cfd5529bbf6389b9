"""What every method shares: its output and its base class (the registry is in :mod:`.factory`).

A method scores C classes from a frozen backbone's image features. It takes :class:`ImageFeatures`
rather than pixels so that the engine can compute features once and cache them (the encoder is
frozen); the backbone stays attached for its text encoder, which learnable prompts go through.

Every method emits one logit per class whose sigmoid is P(positive). DualCoOp's two-way softmax
over {negative, positive} scores is the same thing: softmax([s_neg, s_pos])[1] = sigmoid(s_pos - s_neg).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from promptmlr.backbones.base import FrozenCLIP, ImageFeatures
from promptmlr.models.prompts import PromptLearner

BYTES_PER_FLOAT = 4
LossFn = Callable[..., torch.Tensor]  # loss(logits, targets, weights=None), see promptmlr.losses


@dataclass
class MethodOutput:
    """Per-class logits ``[B, C]`` and, where the method has them, per-class spatial attention
    ``[B, C, H*W]`` over ``grid``, category-specific features ``[B, C, D]``, the class features
    ``[C, D]`` they were scored against, and ``extras``: whatever else the method's own training
    terms need from the forward pass (a co-occurrence map, a second branch's logits)."""

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    category_features: torch.Tensor | None = None
    class_features: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def attention_maps(self) -> torch.Tensor | None:
        """Attention reshaped to images ``[B, C, H, W]`` for visualisation."""
        if self.attention is None or self.grid is None:
            return None
        return self.attention.reshape(*self.attention.shape[:2], *self.grid)


class MultiLabelMethod(nn.Module):
    """Base class: subclasses set ``name`` and ``Config`` (a dataclass whose fields are declared with
    :func:`promptmlr.options.option`, their help and allowed values, and whose ``__post_init__`` checks
    them, so that config resolution refuses a bad option before any data or weights are touched) and
    implement ``forward``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    learns: ClassVar[bool] = True  # False: nothing to train (zero-shot), so no epoch is selected

    def __init__(self, backbone: FrozenCLIP, class_names: Sequence[str], config: Any,
                 descriptions: Mapping[str, Sequence[str]] | None = None):
        super().__init__()
        self.backbone = backbone
        self.class_names = list(class_names)
        self.config = config
        self.descriptions = {name: list(descriptions[name]) for name in class_names} if descriptions else None
        self.epoch = 0  # the training epoch under way (0-based), set by the engine
        self.epoch_fraction = 0.0  # the share of this epoch's batches already trained, set by the engine

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine before each training epoch, so that known-only epochs and schedules (SST's
        pseudo-label thresholds, DSRB's blending start) follow the epoch also after a resume."""
        self.epoch, self.epoch_fraction = epoch, 0.0

    def set_epoch_fraction(self, fraction: float) -> None:
        """Called by the engine before each training batch with ``batch index / batches per epoch``, for
        terms that ramp in within an epoch (HCP-MLR-PL's first-epoch ramp, :mod:`.category`)."""
        self.epoch_fraction = fraction

    @property
    def epochs_trained(self) -> float:
        """Training progress in epochs: the epoch under way plus the share of it done."""
        return self.epoch + self.epoch_fraction

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, features: ImageFeatures) -> MethodOutput:
        raise NotImplementedError

    @contextlib.contextmanager
    def fixed_prompts(self, autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> Iterator[None]:
        """Evaluate with every learnable prompt encoded once for the whole block instead of once per
        batch (see :meth:`PromptLearner.fixed`); pass the autocast the batches run under, so that the
        prompts are encoded at the precision they would be per batch."""
        with contextlib.ExitStack() as stack:
            for module in self.modules():
                if isinstance(module, PromptLearner):
                    stack.enter_context(module.fixed(autocast))
            yield

    def supervised_logits(self, output: MethodOutput) -> list[torch.Tensor]:
        """The logits ``[B, C]`` the run's partial-label loss trains, each on its own loss, summed:
        ``output.logits`` by default. A method whose prediction averages branches returns the branches,
        so that each learns to predict alone (an ensemble of learners, not one sum fitted jointly)."""
        return [output.logits]

    def training_loss(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """A batch's whole training loss: ``loss_fn`` on each of :meth:`supervised_logits` (per-entry
        ``weights`` if given), plus :meth:`auxiliary_losses`. The engine and the benchmarks' training
        steps both call it, so that a method trains the same wherever it runs."""
        loss = sum(loss_fn(logits, targets, weights) for logits in self.supervised_logits(output))
        return loss + sum(self.auxiliary_losses(output, targets, loss_fn).values())

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        """Extra training terms beyond the loss on :meth:`supervised_logits` (none by default).

        Called in training only, once per batch after the forward pass; ``targets`` are the batch's
        labels in {1, -1, 0}, and ``loss_fn`` is the run's partial-label loss, for terms on other
        logits or on pseudo-labelled targets.
        """
        return {}

    def wants_training_pass(self) -> bool:
        """Whether the method reads the whole training set (:meth:`training_pass`) before the epoch
        :meth:`set_epoch` set, as DSRB recomputes its prototypes; never by default."""
        return False

    def training_pass(self, batches: Iterable[tuple[ImageFeatures, torch.Tensor]]) -> None:
        """Read every training batch once, its features and known labels in {1, -1, 0}; the engine
        calls it without gradient and in evaluation mode when :meth:`wants_training_pass` says so."""
        raise NotImplementedError(f"method {self.name} reads no training pass")

    def fits_on_validation(self) -> bool:
        """Whether the method fits something on the validation split before each evaluation
        (promptmlr's weights over its branches); never by default. The engine then scores the
        validation split, hands :meth:`validation_fit_inputs` of every batch to :meth:`fit_on_validation`,
        and evaluates after it: the fitted values are part of the method's state, so the epoch selected
        and the checkpoint keep them."""
        return False

    def validation_fit_inputs(self, output: MethodOutput) -> torch.Tensor:
        """What :meth:`fit_on_validation` reads from a validation batch's output, rows first ``[B, ...]``."""
        raise NotImplementedError(f"method {self.name} fits nothing on the validation split")

    def fit_on_validation(self, inputs: np.ndarray, labels: np.ndarray) -> None:
        """Fit on the whole validation split: :meth:`validation_fit_inputs` of every image ``[N, ...]``
        in dataset order and its known labels ``[N, C]`` in {1, -1, 0}."""
        raise NotImplementedError(f"method {self.name} fits nothing on the validation split")

    def class_embeddings(self) -> torch.Tensor:
        """Unit-norm joint-space vector per class ``[C, D]`` (its positive prompt feature): a plain
        classifier usable with open_clip or transformers alone."""
        raise NotImplementedError

    @classmethod
    def text_embeddings_refusal(cls, config: Any) -> str | None:
        """Why the ``text-embeddings`` export would not reproduce the scores of this method under
        ``config`` (its ``Config``), or None when it does; a class method, so that an export is
        refused from a prompts file's header, before any backbone is loaded. It does when, for every
        class c, the method's logit is an increasing affine function of ``normalize(global image
        feature) @ class_embeddings()[c]``: the export then ranks each class's images exactly as the
        method does (the same AP). Refused by default; a method that scores with one vector per class
        on the global feature returns None (``tests/test_reliability_numerics.py`` checks every
        registered method)."""
        return f"method {cls.name} does not score with one vector per class on the global image feature"

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters as optimiser groups, each ``{"params": [...], "lr_scale": s}``: the
        engine trains a group at ``s`` times ``train.lr``. One group at scale 1 by default; a method
        composed of parts that each need their own step size (promptmlr's prompts and its CLSL
        enhancement) splits them."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        """Rough forward activation memory for a batch (the part that grows with C and HW)."""
        return BYTES_PER_FLOAT * batch_size * self.num_classes * 2

    def summary(self, batch_size: int, locations: int) -> str:
        mebibytes = self.estimate_activation_bytes(batch_size, locations) / 2**20
        return (f"method {self.name}: {self.trainable_parameter_count():,} trainable parameters; "
                f"~{mebibytes:.1f} MiB head activations per batch of {batch_size} "
                f"({self.num_classes} classes x {locations} locations)")

    def describe(self) -> dict:
        return {"method": self.name, "method_config": dataclasses.asdict(self.config)}
