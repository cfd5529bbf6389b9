"""Semantic-aware representation blending (SARB, Pu et al., AAAI 2022; DSRB, Pu et al., 2023):
new training entries for unknown labels, made by blending category features that carry a known one.

* Instance level (:func:`instance_blend`): image b's feature for class c, whose label is unknown,
  is blended with the feature for c of an image where c is a known positive; the blend takes that
  label (positive).
* Prototype level (:func:`prototype_blend`): an unknown class's feature is blended with a stable
  prototype of the class (the class's known positives, averaged), and takes the label positive.
  DSRB makes the prototypes location-aware: one per class and image region
  (:class:`RegionPrototypes`), the region being where the image's attention for the class peaks.

Both return the blended features ``[B, C, D]`` (equal to the input elsewhere) and the labels ``[B, C]``
to train them with: 1 on blended entries, 0 (unknown, ignored by the partial-label loss) elsewhere.
:class:`Blender` turns them into training terms for any method with category features.
"""

from __future__ import annotations

from dataclasses import MISSING
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.models.base import LossFn, MethodOutput
from promptmlr.options import option


def instance_blend(category: torch.Tensor, targets: torch.Tensor, alpha: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend ``alpha * f[b, c] + (1 - alpha) * f[donor, c]`` where c is unknown in image b and a
    known positive in its donor (image ``B - 1 - b``, SARB's pairing of a batch with its reverse)."""
    donor, donor_targets = category.flip(0), targets.flip(0)
    blend = ((targets == 0) & (donor_targets > 0))[..., None]
    mixed = F.normalize(alpha * category + (1 - alpha) * donor, dim=-1)
    return torch.where(blend, mixed, category), blend.squeeze(-1).float()


def attention_regions(attention: torch.Tensor, grid: tuple[int, int], regions: int) -> torch.Tensor:
    """The region (of a ``regions x regions`` split of the grid, row-major) holding each class's
    attention peak ``[B, C]``, from attention ``[B, C, H*W]``."""
    height, width = grid
    peak = attention.argmax(-1)
    row = (peak // width) * regions // height
    column = (peak % width) * regions // width
    return row * regions + column


class RegionPrototypes(nn.Module):
    """Per class and region, an exponential moving average of the unit category features of known
    positives whose attention peaks in that region (DSRB's location-aware prototypes; DSRB clusters
    a full pass of features each epoch, the moving average needs no extra pass). Buffers, so that a
    checkpoint holds them."""

    def __init__(self, num_classes: int, regions: int, embed_dim: int, momentum: float):
        super().__init__()
        self.regions = regions
        self.momentum = momentum
        self.register_buffer("prototypes", torch.zeros(num_classes, regions * regions, embed_dim))
        self.register_buffer("filled", torch.zeros(num_classes, regions * regions, dtype=torch.bool))

    @torch.no_grad()
    def update(self, category: torch.Tensor, region: torch.Tensor, targets: torch.Tensor) -> None:
        """Move each (class, region)'s prototype toward the batch mean of its known positives."""
        cells = self.prototypes.shape[1]
        batch_index, class_index = torch.nonzero(targets > 0, as_tuple=True)
        key = class_index * cells + region[batch_index, class_index]
        sums = torch.zeros(self.filled.numel(), category.shape[-1], device=category.device)
        sums.index_add_(0, key, category[batch_index, class_index].float())
        counts = torch.bincount(key, minlength=self.filled.numel())
        seen = (counts > 0).reshape(self.filled.shape)
        means = (sums / counts.clamp_min(1)[:, None]).reshape(self.prototypes.shape)
        keep = torch.where(self.filled, self.momentum, 0.0)[..., None]  # a first sighting sets the prototype
        updated = F.normalize(keep * self.prototypes + (1 - keep) * means, dim=-1)
        self.prototypes.copy_(torch.where(seen[..., None], updated, self.prototypes))
        self.filled |= seen


def prototype_blend(category: torch.Tensor, region: torch.Tensor, targets: torch.Tensor,
                    bank: RegionPrototypes, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, one unknown class drawn at random (torch's generator, so a resumed run draws
    the same) is blended ``beta * f + (1 - beta) * prototype[c, region]``, the region being where the
    image attends for c; images without an unknown class, or whose prototype is not yet filled, are
    left alone."""
    unknown = (targets == 0).float()
    has_unknown = unknown.sum(1) > 0
    images = torch.nonzero(has_unknown).flatten()
    blended, labels = category.clone(), torch.zeros_like(targets, dtype=category.dtype)
    if images.numel() == 0:
        return blended, labels
    classes = torch.multinomial(unknown[images], 1).flatten()
    cells = region[images, classes]
    available = bank.filled[classes, cells]
    images, classes, cells = images[available], classes[available], cells[available]
    prototype = bank.prototypes[classes, cells].to(category.dtype)
    blended[images, classes] = F.normalize(beta * category[images, classes] + (1 - beta) * prototype, dim=-1)
    labels[images, classes] = 1.0
    return blended, labels


# the blending settings of every method that blends (DSRB, promptmlr): name -> (default, help, bounds)
BLEND_SETTINGS: dict[str, tuple[Any, str, dict[str, float]]] = {
    "instance_blend": (True, "DSRB's instance-level blending: an unknown class's feature blended with a known "
                             "positive's from another image", {}),
    "prototype_blend": (True, "DSRB's location-aware prototype blending: an unknown class's feature blended "
                              "with the class's prototype for its region", {}),
    "instance_alpha": (0.5, "weight of the recipient's own feature in an instance blend", {"minimum": 0, "below": 1}),
    "prototype_beta": (0.5, "weight of the recipient's own feature in a prototype blend", {"minimum": 0, "below": 1}),
    "regions": (2, "prototypes per class: regions x regions cells of the grid", {"minimum": 1}),
    "prototype_momentum": (0.9, "momentum of the prototypes' moving average", {"minimum": 0, "below": 1}),
}


def blend_option(name: str, default: Any = MISSING) -> Any:
    """The ``Config`` field of blending setting ``name`` (:data:`BLEND_SETTINGS`): its help and range,
    with a method's own ``default`` where given."""
    shared, help_text, bounds = BLEND_SETTINGS[name]
    return option(shared if default is MISSING else default, help_text, **bounds)


class Blender(nn.Module):
    """Both perspectives as training terms: ``loss(classify(blend), 1)`` for each switched-on one,
    ``classify`` being the method's own scoring of category features ``[B, C, D] -> [B, C]``."""

    def __init__(self, num_classes: int, embed_dim: int, instance: bool, prototype: bool, alpha: float,
                 beta: float, regions: int, momentum: float):
        super().__init__()
        self.instance, self.alpha, self.beta = instance, alpha, beta
        self.prototypes = RegionPrototypes(num_classes, regions, embed_dim, momentum) if prototype else None

    def losses(self, output: MethodOutput, targets: torch.Tensor, classify: Callable[[torch.Tensor], torch.Tensor],
               loss_fn: LossFn, active: bool) -> dict[str, torch.Tensor]:
        """The blending terms (when ``active``: after the known-only epochs); the prototypes learn from every
        training batch."""
        category, losses = output.category_features, {}
        if active and self.instance:
            blended, labels = instance_blend(category, targets, self.alpha)
            losses["instance_blend"] = loss_fn(classify(blended), labels)
        if self.prototypes is not None:
            region = attention_regions(output.attention.detach(), output.grid, self.prototypes.regions)
            if active:
                blended, labels = prototype_blend(category, region, targets, self.prototypes, self.beta)
                losses["prototype_blend"] = loss_fn(classify(blended), labels)
            self.prototypes.update(category.detach(), region, targets)
        return losses
