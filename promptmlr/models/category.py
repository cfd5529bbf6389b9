"""The HCP family on frozen CLIP: one feature per category, each scored by its own class's classifier.

SST (Chen et al., AAAI 2022), SARB (Pu et al., AAAI 2022) and DSRB (Pu et al., 2023) share one
pipeline (HCP-MLR-PL): semantic decoupling (Chen et al., AAAI 2019) pools a feature per category
from a fine-tuned ResNet's map with word-embedding-guided attention, a GGNN propagates the
category features, and an element-wise classifier scores feature c for class c only. On frozen
CLIP, :class:`CategoryMethod` keeps the decoupling (:class:`SemanticDecouplingHead` on CLIP's dense
map, its queries starting from the classes' text features) and the per-category classifier (starting
from CLIP's zero-shot classifier, so training starts from CLIP's ranking); the GGNN is left out: the
label interactions it models are what SST's and DSRB's transfer terms add on top.

Both papers also pull a class's category features together across images and push them away from
the same class's features in images where it is absent (:func:`category_contrastive_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import LossFn, MethodOutput, MultiLabelMethod
from promptmlr.models.head import SemanticDecouplingHead
from promptmlr.models.text import class_text_features
from promptmlr.options import check_fields, option


@dataclass
class CategoryConfig:
    attention_temperature: float = option(10.0, "initial temperature of the decoupling head's spatial softmax "
                                                "(learned)", above=0)
    init_scale: float = option(10.0, "each class's classifier starts as this times its text feature", above=0)
    contrastive_weight: float = option(0.05, "weight of HCP-MLR-PL's category contrastive loss; 0: off", minimum=0)
    known_only_epochs: int = option(2, "epochs on known labels only before the terms that fill unknown labels join",
                                    minimum=0)

    def __post_init__(self) -> None:
        check_fields(self)


class CategoryClassifier(nn.Module):
    """``logit[b, c] = <w_c, f[b, c]> + b_c``: class c's weights see only class c's feature (HCP's
    element-wise classifier), starting from ``init_scale`` times the class's text feature."""

    def __init__(self, class_features: torch.Tensor, init_scale: float):
        super().__init__()
        self.weight = nn.Parameter(init_scale * class_features.detach().clone())
        self.bias = nn.Parameter(torch.zeros(class_features.shape[0]))

    def forward(self, category: torch.Tensor) -> torch.Tensor:
        """Unit category features ``[B, C, D]`` -> logits ``[B, C]``."""
        return (category * self.weight).sum(-1) + self.bias

    def directions(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=-1)


def category_contrastive_loss(category: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """HCP-MLR-PL's contrastive term on unit category features ``[B, C, D]``: for every class, each
    pair of images where it is a known positive costs ``1 - cos`` (pulled together), each pair of a
    known positive and a known negative ``1 + cos`` (pushed apart); the mean over all such pairs."""
    similarity = torch.einsum("icd,jcd->cij", category, category)  # [C, B, B]
    positive = (targets > 0).T.float()  # [C, B]
    negative = (targets < 0).T.float()
    both_positive = positive[:, :, None] * positive[:, None, :]
    both_positive = both_positive * (1 - torch.eye(category.shape[0], device=category.device))
    positive_negative = positive[:, :, None] * negative[:, None, :]
    total = (both_positive * (1 - similarity)).sum() + (positive_negative * (1 + similarity)).sum()
    return total / (both_positive.sum() + positive_negative.sum()).clamp_min(1.0)


class CategoryMethod(MultiLabelMethod):
    """Decoupled category features scored by :class:`CategoryClassifier`; subclasses add their
    transfer terms in :meth:`auxiliary_losses` and set ``name`` and ``Config`` (a
    :class:`CategoryConfig`)."""

    Config = CategoryConfig

    def __init__(self, backbone, class_names, config: CategoryConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        text = class_text_features(backbone, class_names, descriptions=self.descriptions)
        self.head = SemanticDecouplingHead(backbone.embed_dim, self.num_classes, text, config.attention_temperature)
        self.classifier = CategoryClassifier(text, config.init_scale)

    @property
    def warmed_up(self) -> bool:
        return self.epoch >= self.config.known_only_epochs

    def forward(self, features: ImageFeatures) -> MethodOutput:
        category, attention = self.head(features.dense_features)
        category = F.normalize(category, dim=-1)
        return MethodOutput(self.classifier(category), attention, features.grid, category,
                            self.classifier.directions())

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        if self.config.contrastive_weight == 0:
            return {}
        return {"contrastive": self.config.contrastive_weight
                * category_contrastive_loss(output.category_features, targets)}

    def class_embeddings(self) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier.directions()

    @classmethod
    def text_embeddings_refusal(cls, config: CategoryConfig) -> str:
        return (f"method {cls.name} scores a feature pooled for each class from the dense map, with that "
                f"class's own classifier")

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        return self.head.estimate_activation_bytes(batch_size, locations, self.backbone.embed_dim)
