"""A linear probe on frozen CLIP features (strong on MLR-PL per PositiveCoOp, Rawlekar et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import MethodOutput, MultiLabelMethod
from promptmlr.models.factory import register_method
from promptmlr.models.text import class_text_features
from promptmlr.options import check_fields, option

POOLINGS = ("global", "dense")


@dataclass
class LinearConfig:
    features: str = option("global", "what is probed: CLIP's global embedding, or the mean of the dense features",
                           choices=POOLINGS)
    init_scale: float = option(10.0, "the weights start as this times the zero-shot class features", above=0)

    def __post_init__(self) -> None:
        check_fields(self)


def zero_shot_linear(backbone, class_names, init_scale: float) -> nn.Linear:
    """A linear classifier on the unit image feature that starts as ``init_scale`` times the
    zero-shot one (as LP-FT, Kumar et al. 2022), so training starts from CLIP's ranking rather than
    from noise."""
    classifier = nn.Linear(backbone.embed_dim, len(class_names))
    with torch.no_grad():
        classifier.weight.copy_(init_scale * class_text_features(backbone, class_names))
        classifier.bias.zero_()
    return classifier


@register_method
class LinearProbe(MultiLabelMethod):
    """``logits = W x + b`` on the unit-norm image feature, W starting from the zero-shot classifier
    (:func:`zero_shot_linear`)."""

    name = "linear"
    Config = LinearConfig

    def __init__(self, backbone, class_names, config: LinearConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        self.classifier = zero_shot_linear(backbone, class_names, config.init_scale)

    def forward(self, features: ImageFeatures) -> MethodOutput:
        pooled = features.global_features if self.config.features == "global" else features.dense_features.mean(1)
        return MethodOutput(self.classifier(F.normalize(pooled, dim=-1)))

    def class_embeddings(self) -> torch.Tensor:
        return F.normalize(self.classifier.weight.detach(), dim=-1)

    @classmethod
    def text_embeddings_refusal(cls, config: LinearConfig) -> str | None:
        """On the global feature, logit c is ``|w_c|`` times the exported score plus ``b_c``."""
        if config.features != "global":
            return "method linear with features dense probes the mean of the dense features, not the global one"
        return None
