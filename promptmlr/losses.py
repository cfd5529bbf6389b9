"""Partial-label losses: only known entries count, and the loss is normalised by how many there are
(ASL can instead sum them, as DualCoOp's and PositiveCoOp's code does: ``loss.reduction``; the sum
is over the batch one process sees at one step, which accelerate then averages over accumulated
steps and processes, so the learning rate of a summed loss assumes one process and no accumulation).

Every loss takes per-class logits ``[B, C]`` (sigmoid = P(positive)), targets in {1, -1, 0} and an
optional per-entry weight (1 for true labels, lower for recovered pseudo-labels, 0 for unknown).
Normalising by the summed weight of known entries keeps the loss scale independent of the known
proportion; DualCoOp instead sums and multiplies by an unpublished weight per proportion.

DualCoOp's ASL is written on the softmax over {negative, positive} scores; since
softmax([s-, s+])[1] = sigmoid(s+ - s-), it is this sigmoid form applied to the margin logit
``s+ - s-`` every method emits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from promptmlr.errors import ConfigError
from promptmlr.options import check_fields, option

EPS = 1e-8
LOSSES = ("asl", "partial-bce", "bce")
REDUCTIONS = ("mean", "sum")


@dataclass
class LossConfig:
    name: str = option("asl", "asl (asymmetric loss), partial-bce (Durand et al.'s normalised BCE over known "
                              "labels) or bce (every unknown label taken as negative)", choices=LOSSES)
    gamma_neg: float = option(2.0, "ASL focusing exponent on negatives (Ridnik et al., ICCV 2021; DualCoOp's "
                                   "setting)", minimum=0)
    gamma_pos: float = option(1.0, "ASL focusing exponent on positives", minimum=0)
    clip: float = option(0.05, "ASL probability margin on negatives (probability shift)", minimum=0, below=1)
    reduction: str = option("mean", "ASL over the known entries: their mean, or their sum (DualCoOp's and "
                                    "PositiveCoOp's code, whose learning rates assume it)", choices=REDUCTIONS)
    detach_focusing: bool = option(False, "ASL's focusing weights held constant in the gradient, as DualCoOp's and "
                                          "PositiveCoOp's copy of ASL (disable_torch_grad_focal_loss)")
    weight: float = option(1.0, "a factor on the loss (DualCoOp's and PositiveCoOp's loss_w, which their code "
                                "sets per known proportion)", above=0)

    def __post_init__(self) -> None:
        check_fields(self, "loss.")
        if self.name != "asl" and (self.reduction != "mean" or self.detach_focusing):
            raise ConfigError(f"loss.reduction and loss.detach_focusing apply to loss.name asl, not {self.name}")


def _known_weights(targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    known = (targets != 0).to(targets.dtype if targets.is_floating_point() else torch.float32)
    return known if weights is None else known * weights


def _normalised(entry_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (entry_loss * weights).sum() / weights.sum().clamp_min(1.0)


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                    gamma_neg: float = 2.0, gamma_pos: float = 1.0, clip: float = 0.05, reduction: str = "mean",
                    detach_focusing: bool = False) -> torch.Tensor:
    """ASL (Ridnik et al., ICCV 2021) over known entries: their weighted mean, or their weighted sum.

    Positives: ``-(1-p)^gamma_pos log p``. Negatives: with the shifted probability
    ``p_m = max(p - clip, 0)``, ``-p_m^gamma_neg log(1 - p_m)``. ``detach_focusing``: the factors
    ``(1-p)^gamma_pos`` and ``p_m^gamma_neg`` pass no gradient, as in DualCoOp's copy of ASL.
    """
    probability = torch.sigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32)))  # float64 stays
    shifted = (probability - clip).clamp(min=0) if clip > 0 else probability
    positive_focus, negative_focus = (1 - probability) ** gamma_pos, shifted ** gamma_neg
    if detach_focusing:
        positive_focus, negative_focus = positive_focus.detach(), negative_focus.detach()
    positive = -positive_focus * torch.log(probability.clamp(min=EPS))
    negative = -negative_focus * torch.log((1 - shifted).clamp(min=EPS))
    entry_loss = torch.where(targets > 0, positive, torch.where(targets < 0, negative, torch.zeros_like(positive)))
    weights = _known_weights(targets, weights)
    return (entry_loss * weights).sum() if reduction == "sum" else _normalised(entry_loss, weights)


def partial_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Partial BCE (Durand et al., CVPR 2019) with their g(p) = 1/p normalisation: each image's BCE
    over its known labels divided by its number of known labels, averaged over images."""
    entry_weights = _known_weights(targets, weights)
    entry_loss = F.binary_cross_entropy_with_logits(logits.float(), (targets > 0).float(), reduction="none")
    per_image_weight = entry_weights.sum(dim=1)
    has_known = per_image_weight > 0
    per_image = (entry_loss * entry_weights).sum(dim=1)[has_known] / per_image_weight[has_known]
    return per_image.mean() if has_known.any() else logits.sum() * 0


def naive_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The baseline that treats every unknown label as negative (mean BCE over all entries)."""
    return F.binary_cross_entropy_with_logits(logits.float(), (targets > 0).float())


def build_loss(config: LossConfig) -> Callable[..., torch.Tensor]:
    """``loss(logits, targets, weights=None)`` for a config, times ``config.weight``."""
    if config.name == "asl":
        def loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
            return asymmetric_loss(logits, targets, weights, config.gamma_neg, config.gamma_pos, config.clip,
                                   config.reduction, config.detach_focusing)
    elif config.name == "partial-bce":
        loss = partial_bce
    elif config.name == "bce":
        loss = naive_bce
    else:
        raise ConfigError(f"loss.name must be one of {', '.join(LOSSES)}, got {config.name!r}")
    if config.weight == 1.0:
        return loss
    return lambda logits, targets, weights=None: config.weight * loss(logits, targets, weights)
