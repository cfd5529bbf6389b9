"""SST: Structured Semantic Transfer (Chen, Pu et al., AAAI 2022), on frozen CLIP.

The paper's pipeline (fine-tuned ResNet-101, semantic decoupling, GGNN, element-wise classifier)
becomes :class:`CategoryMethod` on CLIP's dense map; its two transfer modules
(:mod:`promptmlr.models.transfer`) are kept as published:

    L = L_cls(y) + w_cooc * L(P, y_pairs) + w_con * L_contrastive
        + [after known_only_epochs] w_intra * L_cls(y_intra) + w_inter * L_cls(y_inter)

with ``L`` the run's partial-label loss (ASL by default; the paper uses partial BCE), pair labels
from the known labels (:func:`cooccurrence_targets`), and pseudo-positives from co-occurrence within
the image and from similarity to other images' positives, their thresholds falling from 0.95 by
0.025 per epoch to 0.75 (the paper's schedule, counted here from the end of the known-only epochs). What
differs: no GGNN; a per-class memory of positives instead of the batch for the cross-image module
(see :mod:`.transfer`); 2 known-only epochs of a 10-epoch run instead of 5 of 20.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import BYTES_PER_FLOAT, LossFn, MethodOutput
from promptmlr.models.category import CategoryConfig, CategoryMethod
from promptmlr.models.factory import register_method
from promptmlr.models.transfer import (
    CooccurrenceHead,
    PositiveMemory,
    cooccurrence_targets,
    cross_image_pseudo_labels,
    intra_image_pseudo_labels,
    transfer_threshold,
)
from promptmlr.options import option


@dataclass
class SSTConfig(CategoryConfig):
    cooccurrence_hidden: int = option(128, "width of the co-occurrence pair MLP", minimum=1)
    cooccurrence_weight: float = option(10.0, "weight of SST's co-occurrence loss", minimum=0)
    intra_weight: float = option(1.0, "loss weight of intra-image pseudo-labels; 0: off", minimum=0)
    inter_weight: float = option(1.0, "loss weight of cross-image pseudo-labels; 0: off", minimum=0)
    memory_size: int = option(100, "known positives kept per class for the cross-image module", minimum=1)
    threshold_start: float = option(0.95, "threshold of both pseudo-labels (co-occurrence probability, cross-image "
                                          "similarity) when the known-only epochs end", minimum=-1, maximum=1)
    threshold_step: float = option(0.025, "how much the threshold falls each epoch after that", minimum=0)
    threshold_floor: float = option(0.75, "the threshold never falls below this", minimum=-1, maximum=1)


@register_method
class SST(CategoryMethod):
    name = "sst"
    Config = SSTConfig

    def __init__(self, backbone, class_names, config: SSTConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        self.cooccurrence = CooccurrenceHead(backbone.embed_dim, config.cooccurrence_hidden)
        self.memory = PositiveMemory(self.num_classes, config.memory_size, backbone.embed_dim)

    def forward(self, features: ImageFeatures) -> MethodOutput:
        output = super().forward(features)
        if self.training:  # the pair map only serves the training terms
            output.extras["pair_logits"] = self.cooccurrence(output.category_features)
        return output

    def threshold(self) -> float:
        config = self.config
        return transfer_threshold(self.epoch, config.known_only_epochs, config.threshold_start,
                                  config.threshold_step, config.threshold_floor)

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        config = self.config
        losses = super().auxiliary_losses(output, targets, loss_fn)
        pair_logits = output.extras["pair_logits"]
        pairs = cooccurrence_targets(targets)
        losses["cooccurrence"] = config.cooccurrence_weight * loss_fn(pair_logits.flatten(1), pairs.flatten(1))
        category = output.category_features.detach()
        if self.warmed_up:
            threshold = self.threshold()
            if config.intra_weight:
                intra = intra_image_pseudo_labels(torch.sigmoid(pair_logits.detach().float()), targets, threshold)
                losses["intra"] = config.intra_weight * loss_fn(output.logits, intra)
            if config.inter_weight:
                inter = cross_image_pseudo_labels(self.memory.mean_similarity(category), targets, threshold)
                losses["inter"] = config.inter_weight * loss_fn(output.logits, inter)
        self.memory.push(category, targets)
        return losses

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        pairs = BYTES_PER_FLOAT * 2 * batch_size * self.num_classes ** 2 * self.config.cooccurrence_hidden
        return super().estimate_activation_bytes(batch_size, locations) + pairs
