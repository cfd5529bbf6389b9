"""Zero-shot CLIP as a method: fixed class features from templates or a description ensemble."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from promptmlr.backbones.base import ImageFeatures
from promptmlr.errors import ConfigError
from promptmlr.models.base import MethodOutput, MultiLabelMethod
from promptmlr.models.factory import register_method
from promptmlr.models.text import DEFAULT_TEMPLATES, class_text_features, standardize_scores
from promptmlr.options import option


@dataclass
class ZeroShotConfig:
    templates: list[str] = option(help="prompt templates averaged per class, {} standing for the class name",
                                  factory=lambda: list(DEFAULT_TEMPLATES), allowed="one or more, each with {}")
    use_descriptions: bool = option(True, "score with the class descriptions' ensemble when there are descriptions")
    standardize: bool = option(False, "per-image z-scores of the scores across classes (SPARC, 2025)")

    def __post_init__(self) -> None:
        if not self.templates:
            raise ConfigError("templates must hold at least one template, e.g. 'a photo of a {}.'")
        for template in self.templates:
            try:
                names_the_class = template.format("\0") != template.format("\1")
            except (AttributeError, IndexError, KeyError, ValueError):  # not a string; {name}; {1}; '{'
                names_the_class = False
            if not names_the_class:
                raise ConfigError(f"templates: {template!r} must hold {{}} where the class name goes, "
                                  f"e.g. 'a photo of a {{}}.'")


@register_method
class ZeroShot(MultiLabelMethod):
    """Nothing to train; scores are CLIP's scaled cosine similarities of the global image feature."""

    name = "zeroshot"
    Config = ZeroShotConfig
    learns = False

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

    @classmethod
    def text_embeddings_refusal(cls, config: ZeroShotConfig) -> str | None:
        """Logits are ``logit_scale`` times the exported scores, unless standardised per image."""
        if config.standardize:
            return ("method zeroshot with standardize on turns each image's scores into z-scores across the "
                    "classes, which changes how a class ranks the images")
        return None
