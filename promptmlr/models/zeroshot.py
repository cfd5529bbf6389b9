"""Zero-shot CLIP as a method: fixed class features from templates or a description ensemble."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from promptmlr.backbones.base import ImageFeatures
from promptmlr.models.base import MethodOutput, MultiLabelMethod
from promptmlr.models.factory import register_method
from promptmlr.models.text import DEFAULT_TEMPLATES, class_text_features, standardize_scores


@dataclass
class ZeroShotConfig:
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    use_descriptions: bool = True  # a description ensemble when descriptions are given
    standardize: bool = False  # per-image z-scores across classes (SPARC, 2025)


@register_method
class ZeroShot(MultiLabelMethod):
    """Nothing to train; scores are CLIP's scaled cosine similarities of the global image feature."""

    name = "zeroshot"
    Config = ZeroShotConfig

    def __init__(self, backbone, class_names, config: ZeroShotConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        descriptions = self.descriptions if config.use_descriptions else None
        self.register_buffer("text_features", class_text_features(backbone, class_names, config.templates,
                                                                  descriptions))

    def forward(self, features: ImageFeatures) -> MethodOutput:
        image = F.normalize(features.global_features, dim=-1)
        logits = self.backbone.logit_scale * image @ self.text_features.T
        return MethodOutput(standardize_scores(logits) if self.config.standardize else logits)

    def class_embeddings(self) -> torch.Tensor:
        return self.text_features
