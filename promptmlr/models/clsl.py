"""CLSL: Collaborative Learning of Semantic-aware feature learning and Label recovery (He, Xie et
al., arXiv:2510.10055, 2025), on frozen CLIP.

Three parts in one loop, after the authors' code (``models/sarlp.py``):

1. and 2. Semantic-related feature learning and semantic-guided feature enhancement
   (:class:`~promptmlr.models.enhancement.SemanticEnhancement`): per-class features from the text
   and the image context; each location attends over them, and an MLP turns the location and what
   it attended to into per-location logits, pooled by their own softmax over locations.
3. Label recovery, online: a second head scores the projected locations, ``max_p W x_p``, and
   learns from the known labels with the unknown ones filled in by the first head's detached
   probabilities (soft labels, binary cross-entropy), so each step's recovered labels train the
   shared projection ``x_p = V dense_p`` that the next step's features and recovery read.

What differs: CLIP's dense map is frozen, so the shared, trainable part is the projection ``V``
(:meth:`~promptmlr.models.enhancement.SemanticEnhancement.locations`) instead of the backbone; the
text features are fixed hand-written prompts (or the class descriptions) rather than learned ones;
recovery starts after ``known_only_epochs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.errors import ConfigError
from promptmlr.models.base import BYTES_PER_FLOAT, LossFn, MethodOutput, MultiLabelMethod
from promptmlr.models.enhancement import SemanticEnhancement
from promptmlr.models.factory import register_method
from promptmlr.models.text import class_text_features
from promptmlr.options import check_fields, option


@dataclass
class CLSLConfig:
    hidden: int = option(256, "width of both MLPs", minimum=1)
    attention_scale: float = option(10.0, "s: sharpness of each location's attention over classes", above=0)
    recovery_weight: float = option(0.8, "weight of CLSL's recovery-head loss", minimum=0)
    known_only_epochs: int = option(1, "epochs on known labels only before recovered labels fill the unknown ones",
                                    minimum=0)

    def __post_init__(self) -> None:
        check_fields(self)


def recovered_targets(targets: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """Soft labels ``[B, C]``: 1 / 0 where the label is known, the recovered probability elsewhere
    (a recovered label never overwrites a known one)."""
    return torch.where(targets != 0, (targets > 0).to(probabilities.dtype), probabilities)


@register_method
class CLSL(MultiLabelMethod):
    name = "clsl"
    Config = CLSLConfig

    def __init__(self, backbone, class_names, config: CLSLConfig, descriptions=None):
        super().__init__(backbone, class_names, config, descriptions)
        dim = backbone.embed_dim
        self.register_buffer("text", class_text_features(backbone, class_names, descriptions=self.descriptions),
                             persistent=False)
        self.enhancement = SemanticEnhancement(dim, self.num_classes, config.hidden, config.attention_scale)
        self.recovery_head = nn.Linear(dim, self.num_classes)

    def forward(self, features: ImageFeatures) -> MethodOutput:
        dense = self.enhancement.locations(features.dense_features)
        image = F.normalize(features.global_features, dim=-1)
        logits, weights = self.enhancement(dense, image, self.text)
        extras = {"recovery_logits": self.recovery_head(dense).amax(1)}
        return MethodOutput(logits, weights, features.grid, extras=extras)

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        recovery_logits = output.extras["recovery_logits"]
        if self.epoch < self.config.known_only_epochs:
            loss = loss_fn(recovery_logits, targets)
        else:
            soft = recovered_targets(targets, torch.sigmoid(output.logits.detach().float()))
            loss = F.binary_cross_entropy_with_logits(recovery_logits.float(), soft)
        return {"recovery": self.config.recovery_weight * loss}

    @classmethod
    def text_embeddings_refusal(cls, config: CLSLConfig) -> str:
        return "method clsl scores classes with MLPs over image locations, with no vector per class"

    def class_embeddings(self) -> torch.Tensor:
        raise ConfigError("method clsl scores classes with MLPs over image locations, not with one joint-space "
                          "vector per class, so it has no text embeddings to export; use its run folder's "
                          "best.safetensors with promptmlr predict")

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        return BYTES_PER_FLOAT * SemanticEnhancement.activation_floats(
            batch_size, locations, self.backbone.embed_dim, self.config.hidden, self.num_classes)
