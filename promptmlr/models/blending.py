"""Semantic-aware representation blending (SARB, Pu et al., AAAI 2022; DSRB, Pu et al., 2023):
new training entries for unknown labels, made by blending category features that carry a known one.

* Instance level (:func:`instance_blend`): image b's feature for class c, whose label is unknown,
  is blended with the feature for c of an image where c is a known positive.
* Prototype level (:func:`prototype_blend`): one unknown class's feature per image is blended with
  a prototype of the class, made from the class's known positives. DSRB makes the prototypes
  location-aware: one per class and image region (:class:`RegionPrototypes`), a region being where
  a class's feature peaks in an image (:func:`peak_regions`).

:class:`Blender` turns both into training terms for any method with category features. Its rules
are options (:data:`BLEND_SETTINGS`) whose defaults are the authors' code (HCP-MLR-PL,
``model/DSRB.py``, ``loss/DSRB.py``, ``DSRB.py``); promptmlr keeps its own values of them:

* ``blend_targets``: a blended entry's target is the share of the other feature in it, ``1 - alpha``
  or ``1 - beta`` (``mixupInstance_featuremap``, ``mixupPrototype_featuremap``), trained with the
  authors' BCE (:func:`soft_target_bce`), as the run's loss takes labels, not probabilities
  (``soft``); or 1, with the run's loss (``hard``).
* ``blend_entries``: each term averages over the image's known labels and the blended entries, as
  the authors' mixed targets keep the known ones (``known_and_blended``); or the blended ones alone.
* ``blend_shares``: alpha and beta are parameters, trained with the rest and clamped to [0, 1] before
  each use (``DSRB.__init__`` and ``forward``, learnable in ``scripts/DSRB.sh``: ``learned``); or fixed.
* ``prototype_region``: the prototype blended in is of a region drawn at random among the others than
  where the class peaks (``(index - randint(1, 4)) % 4``: ``other``); or of that region (``own``).
* ``prototype_update``: the prototypes are recomputed from a pass over the training set when blending
  starts and every ``prototype_interval`` epochs after (``computePrototype_featuremap``, called from
  ``DSRB.py``'s epoch loop: ``pass``); or follow a moving average over training batches, which needs
  no pass (``moving_average``).
"""

from __future__ import annotations

from dataclasses import MISSING
from typing import Any, Callable, Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.errors import ConfigError
from promptmlr.models.base import LossFn
from promptmlr.options import option

Share = float | torch.Tensor  # the weight of a blend's recipient feature: fixed, or a learned parameter


class BlendInputs(NamedTuple):
    """What the blending reads from a method's output: the features to blend ``[B, C, D]`` and the
    location scores ``[B, C, H*W]`` over ``grid`` that place a class's region (the attention, or DSRB's
    attention times each location's features)."""

    category: torch.Tensor
    scores: torch.Tensor
    grid: tuple[int, int]


def instance_blend(category: torch.Tensor, targets: torch.Tensor, alpha: Share) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha * f[b, c] + (1 - alpha) * f[donor, c]`` where c is unknown in image b and a known positive
    in its donor, image ``B - 1 - b`` (the batch reversed, as SARB's and DSRB's code pair images); the
    features ``[B, C, D]`` and the blended entries ``[B, C]`` (bool)."""
    donor, donor_targets = category.flip(0), targets.flip(0)
    blended = (targets == 0) & (donor_targets > 0)
    return torch.where(blended[..., None], alpha * category + (1 - alpha) * donor, category), blended


def peak_regions(scores: torch.Tensor, grid: tuple[int, int], regions: int) -> torch.Tensor:
    """The region (of a ``regions x regions`` split of the grid, row-major) where each class's
    location scores ``[B, C, H*W]`` peak: ``[B, C]``. The cells split the grid in proportion; on an
    even grid a 2 x 2 split is DSRB's halves at ``H // 2`` (they differ on an odd grid)."""
    height, width = grid
    peak = scores.argmax(-1)
    row = (peak // width) * regions // height
    column = (peak % width) * regions // width
    return row * regions + column


def unknown_picks(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One unknown class drawn at random per image that has one (torch's generator, so a resumed run
    draws the same): ``(images, classes)``. DSRB's code takes the largest of uniform scores over the
    unknown classes (``topK`` 1), the same draw; in an image without an unknown class it would blend
    a known one, here the image is left out."""
    unknown = (targets == 0).float()
    images = torch.nonzero(unknown.sum(1) > 0).flatten()
    if images.numel() == 0:
        return images, images
    return images, torch.multinomial(unknown[images], 1).flatten()


def other_regions(regions: torch.Tensor, cells: int) -> torch.Tensor:
    """For each region index, one of the ``cells - 1`` others, drawn uniformly."""
    return (regions - torch.randint(1, cells, regions.shape, device=regions.device)) % cells


class RegionPrototypes(nn.Module):
    """Per class and region, a prototype of the category features of the class's known positives that
    peak in that region ``[C, R, D]``, and whether it is ``filled`` (a class never seen positive has
    none). Buffers, so that a checkpoint holds them. Filled either by :meth:`assign` (a pass over the
    training set, :class:`RegionSamples`) or by :meth:`update` (a moving average)."""

    def __init__(self, num_classes: int, regions: int, embed_dim: int, momentum: float):
        super().__init__()
        self.regions = regions
        self.momentum = momentum
        self.register_buffer("prototypes", torch.zeros(num_classes, regions * regions, embed_dim))
        self.register_buffer("filled", torch.zeros(num_classes, regions * regions, dtype=torch.bool))

    @property
    def cells(self) -> int:
        return self.prototypes.shape[1]

    @torch.no_grad()
    def update(self, category: torch.Tensor, region: torch.Tensor, targets: torch.Tensor) -> None:
        """Move each (class, region)'s prototype toward the batch mean of its known positives, as a unit
        vector (the moving average)."""
        cells = self.cells
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

    @torch.no_grad()
    def assign(self, prototypes: torch.Tensor, filled: torch.Tensor) -> None:
        self.prototypes.copy_(prototypes)
        self.filled.copy_(filled)


class RegionSamples:
    """The prototypes of a pass over the training set (DSRB's ``computePrototype_featuremap``): per
    class and region, the first ``cap`` known positives seen (in batch order) are kept. A region's
    prototype is their sum over their count plus one, as the authors' per-region mean keeps the zero
    row their collection starts from; a region without any takes the mean over all the class's kept
    samples (which theirs takes without that row); a class without any stays unfilled (theirs fails)."""

    def __init__(self, num_classes: int, cells: int, embed_dim: int, cap: int, device: torch.device):
        self.shape, self.cap = (num_classes, cells), cap
        self.sums = torch.zeros(num_classes * cells, embed_dim, device=device)
        self.counts = torch.zeros(num_classes * cells, dtype=torch.long, device=device)

    def add(self, category: torch.Tensor, region: torch.Tensor, targets: torch.Tensor) -> None:
        batch_index, class_index = torch.nonzero(targets > 0, as_tuple=True)  # image order within a class
        key = class_index * self.shape[1] + region[batch_index, class_index]
        order = torch.argsort(key, stable=True)
        sorted_key = key[order]
        in_batch = torch.bincount(sorted_key, minlength=self.counts.numel())
        rank = torch.arange(key.numel(), device=key.device) - (in_batch.cumsum(0) - in_batch)[sorted_key]
        kept = order[self.counts[sorted_key] + rank < self.cap]
        self.sums.index_add_(0, key[kept], category[batch_index[kept], class_index[kept]].float())
        self.counts += torch.bincount(key[kept], minlength=self.counts.numel())

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prototypes [C, R, D], filled [C, R])``."""
        sums, counts = self.sums.reshape(*self.shape, -1), self.counts.reshape(self.shape)
        region_means = sums / (counts + 1)[..., None]
        class_means = sums.sum(1) / counts.sum(1).clamp_min(1)[:, None]
        prototypes = torch.where(counts[..., None] > 0, region_means, class_means[:, None])
        return prototypes, (counts.sum(1) > 0)[:, None].expand(self.shape)


def prototype_blend(category: torch.Tensor, images: torch.Tensor, classes: torch.Tensor, cells: torch.Tensor,
                    bank: RegionPrototypes, beta: Share) -> tuple[torch.Tensor, torch.Tensor]:
    """``beta * f[b, c] + (1 - beta) * prototype[c, cell]`` for each picked ``(images, classes)`` entry
    with its ``cells``, where that prototype is filled; the features and the blended entries ``[B, C]``
    (bool)."""
    available = bank.filled[classes, cells]
    images, classes, cells = images[available], classes[available], cells[available]
    blended = category.clone()
    prototype = bank.prototypes[classes, cells].to(category.dtype)
    blended[images, classes] = beta * category[images, classes] + (1 - beta) * prototype
    entries = torch.zeros(category.shape[:2], dtype=torch.bool, device=category.device)
    entries[images, classes] = True
    return blended, entries


def soft_target_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """HCP-MLR-PL's ``BCELoss`` (loss/DSRB.py): an entry with target t > 0 costs ``BCE(x, t)``, one
    with t < 0 ``BCE(-x, -t)`` (a known negative: ``-log sigmoid(-x)``); the mean over the entries
    with t != 0, 0 without any."""
    known = (targets != 0).float()
    entry = F.binary_cross_entropy_with_logits(logits.float() * targets.sign(), targets.abs(), reduction="none")
    return (entry * known).sum() / known.sum().clamp_min(1.0)


def blend_targets(targets: torch.Tensor, entries: torch.Tensor, share: Share, soft: bool, with_known: bool
                  ) -> torch.Tensor:
    """The targets of a blending term: on the blended ``entries``, the other feature's share ``1 - share``
    (``soft``) or 1; elsewhere the known labels (``with_known``) or 0, unknown."""
    others = targets if with_known else torch.zeros_like(targets)
    return torch.where(entries, 1 - share if soft else 1.0, others)


# the blending settings of every method that blends (DSRB, promptmlr): name -> (default, help, accepted values);
# the defaults are the authors' (HCP-MLR-PL), see the module docstring
BLEND_SETTINGS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "instance_blend": (True, "DSRB's instance-level blending: an unknown class's feature blended with a known "
                             "positive's from another image", {}),
    "prototype_blend": (True, "DSRB's location-aware prototype blending: an unknown class's feature blended "
                              "with a prototype of the class for an image region", {}),
    "instance_alpha": (0.5, "weight of the recipient's own feature in an instance blend (its start, when learned)",
                       {"minimum": 0, "below": 1}),
    "prototype_beta": (0.5, "weight of the recipient's own feature in a prototype blend (its start, when learned)",
                       {"minimum": 0, "below": 1}),
    "blend_shares": ("learned", "alpha and beta: trained with the rest, clamped to [0, 1] (HCP-MLR-PL), or fixed",
                     {"choices": ("learned", "fixed")}),
    "blend_targets": ("soft", "a blended entry's target: the other feature's share (1 - alpha, 1 - beta) under "
                              "HCP-MLR-PL's BCE, or 1 under the run's loss", {"choices": ("soft", "hard")}),
    "blend_entries": ("known_and_blended", "what each blending term averages over: the known labels and the "
                                           "blended entries (HCP-MLR-PL), or the blended entries alone",
                      {"choices": ("known_and_blended", "blended")}),
    "regions": (2, "prototypes per class: regions x regions cells of the grid", {"minimum": 1}),
    "prototype_region": ("other", "the region whose prototype is blended in: one drawn among the others than "
                                  "where the class peaks (HCP-MLR-PL), or that one", {"choices": ("other", "own")}),
    "prototype_update": ("pass", "prototypes: recomputed from a pass over the training set when blending starts "
                                 "and every prototype_interval epochs (HCP-MLR-PL), or a moving average over "
                                 "training batches", {"choices": ("pass", "moving_average")}),
    "prototype_interval": (5, "epochs between prototype passes (prototype_update pass)", {"minimum": 1}),
    "prototype_samples": (100, "known positives a prototype pass keeps per class and region, the first seen "
                               "(prototype_update pass)", {"minimum": 1}),
    "prototype_momentum": (0.9, "momentum of the prototypes' moving average (prototype_update moving_average)",
                           {"minimum": 0, "below": 1}),
}


def blend_option(name: str, default: Any = MISSING) -> Any:
    """The ``Config`` field of blending setting ``name`` (:data:`BLEND_SETTINGS`): its help and accepted
    values, with a method's own ``default`` where given."""
    shared, help_text, accepted = BLEND_SETTINGS[name]
    return option(shared if default is MISSING else default, help_text, **accepted)


def check_blend_settings(config: Any) -> None:
    """Refuse blending settings that contradict each other (a config with every :data:`BLEND_SETTINGS`)."""
    if config.prototype_blend and config.prototype_region == "other" and config.regions == 1:
        raise ConfigError("prototype_region other needs regions >= 2 (with one region there is no other); "
                          "set prototype_region own or regions 2")


def blend_inert_options(config: Any) -> set[str]:
    """The blending settings a config ignores: a perspective's when it is off, the prototype update's
    not in use, and all of them when neither perspective is on."""
    if not (config.instance_blend or config.prototype_blend):
        return set(BLEND_SETTINGS) - {"instance_blend", "prototype_blend"}
    inert = set() if config.instance_blend else {"instance_alpha"}
    if not config.prototype_blend:
        prototype = {name for name in BLEND_SETTINGS if name.startswith("prototype_")} - {"prototype_blend"}
        return inert | prototype | {"regions"}
    moving = config.prototype_update == "moving_average"
    return inert | ({"prototype_interval", "prototype_samples"} if moving else {"prototype_momentum"})


def _share(value: float, learned: bool) -> Share:
    return nn.Parameter(torch.tensor(float(value))) if learned else float(value)


class Blender(nn.Module):
    """Both perspectives as training terms on a method's :class:`BlendInputs`: the blends are linear, and
    the method's ``classify`` ``[B, C, D] -> [B, C]`` scores them as it scores its own features
    (normalising them first where it does); ``config`` holds every :data:`BLEND_SETTINGS`."""

    def __init__(self, num_classes: int, embed_dim: int, config: Any):
        super().__init__()
        self.config = config
        learned = config.blend_shares == "learned"
        self.alpha = _share(config.instance_alpha, learned and config.instance_blend)
        self.beta = _share(config.prototype_beta, learned and config.prototype_blend)
        self.prototypes = RegionPrototypes(num_classes, config.regions, embed_dim,
                                           config.prototype_momentum) if config.prototype_blend else None

    def losses(self, inputs: BlendInputs, targets: torch.Tensor, classify: Callable[[torch.Tensor], torch.Tensor],
               loss_fn: LossFn, active: bool) -> dict[str, torch.Tensor]:
        """The blending terms (when ``active``: after the known-only epochs); a moving average learns
        from every training batch."""
        config, losses, category = self.config, {}, inputs.category
        if active:
            self._clamp_shares()
        if active and config.instance_blend:
            blended, entries = instance_blend(category, targets, self.alpha)
            losses["instance_blend"] = self._loss(classify(blended), targets, entries, self.alpha, loss_fn)
        if self.prototypes is not None:
            region = peak_regions(inputs.scores.detach(), inputs.grid, config.regions)
            if active:
                images, classes = unknown_picks(targets)
                cells = region[images, classes]
                if config.prototype_region == "other":
                    cells = other_regions(cells, self.prototypes.cells)
                blended, entries = prototype_blend(category, images, classes, cells, self.prototypes, self.beta)
                losses["prototype_blend"] = self._loss(classify(blended), targets, entries, self.beta, loss_fn)
            if config.prototype_update == "moving_average":
                self.prototypes.update(category.detach(), region, targets)
        return losses

    def pass_due(self, blending_epoch: int) -> bool:
        """Whether the prototypes are recomputed before the epoch that is the ``blending_epoch``-th
        (0-based, negative before) since blending started: the first and every
        ``prototype_interval``-th after, as ``DSRB.py``'s epoch loop calls ``computePrototype_featuremap``."""
        return (self.prototypes is not None and self.config.prototype_update == "pass" and blending_epoch >= 0
                and blending_epoch % self.config.prototype_interval == 0)

    @torch.no_grad()
    def read_training_set(self, batches: Iterable[tuple[BlendInputs, torch.Tensor]]) -> None:
        """Recompute the prototypes from a pass: each batch's inputs and known labels."""
        bank = self.prototypes
        samples = RegionSamples(*bank.filled.shape, bank.prototypes.shape[-1], self.config.prototype_samples,
                                bank.prototypes.device)
        for inputs, targets in batches:
            samples.add(inputs.category, peak_regions(inputs.scores, inputs.grid, self.config.regions), targets)
        bank.assign(*samples.prototypes())

    def _clamp_shares(self) -> None:
        with torch.no_grad():
            for share in (self.alpha, self.beta):
                if isinstance(share, nn.Parameter):
                    share.clamp_(0.0, 1.0)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, entries: torch.Tensor, share: Share,
              loss_fn: LossFn) -> torch.Tensor:
        soft = self.config.blend_targets == "soft"
        labels = blend_targets(targets, entries, share, soft, self.config.blend_entries == "known_and_blended")
        return soft_target_bce(logits, labels) if soft else loss_fn(logits, labels)
