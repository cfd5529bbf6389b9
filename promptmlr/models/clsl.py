"""CLSL: Collaborative Learning of Semantic-aware feature learning and Label recovery (He, Xie et
al., arXiv:2510.10055, 2025), on frozen CLIP.

Three parts in one loop, after the authors' code (``models/sarlp.py``):

1. Semantic-related feature learning: a feature per class and image from the class's text feature
   and the image's global feature, ``v[b, c] = t_c + MLP([t_c; g_b])`` (label correlations enter
   through the shared MLP and the image context).
2. Semantic-guided feature enhancement: each location attends over the classes,
   ``e_p = sum_c softmax_c(cos(x_p, v_c) * s) v_c``, and ``[e_p; x_p]`` goes through an MLP to
   per-location class logits ``a[p, c]``; the image's logit is their attention-weighted mean
   ``sum_p softmax_p(a[p, c]) a[p, c]``, the method's output.
3. Label recovery, online: a second head scores the projected locations, ``max_p W x_p``, and
   learns from the known labels with the unknown ones filled in by the first head's detached
   probabilities (soft labels, binary cross-entropy), so each step's recovered labels train the
   shared projection ``x_p = V dense_p`` that the next step's features and recovery read.

What differs: CLIP's dense map is frozen, so the shared, trainable part is the projection ``V``
(starting at the identity) instead of the backbone; the text features are fixed hand-written prompts
(or the class descriptions) rather than learned ones; recovery starts after ``warmup_epochs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.backbones.base import ImageFeatures
from promptmlr.errors import ConfigError, check_number
from promptmlr.models.base import BYTES_PER_FLOAT, LossFn, MethodOutput, MultiLabelMethod
from promptmlr.models.factory import register_method
from promptmlr.models.text import class_text_features


@dataclass
class CLSLConfig:
    hidden: int = 256  # width of both MLPs
    attention_scale: float = 10.0  # s: sharpness of each location's attention over classes
    recovery_weight: float = 0.8  # CLSL's weight of the recovery head's loss
    warmup_epochs: int = 1  # epochs on known labels only before recovered labels fill the unknown ones

    def __post_init__(self) -> None:
        check_number("hidden", self.hidden, minimum=1)
        check_number("attention_scale", self.attention_scale, above=0)
        check_number("recovery_weight", self.recovery_weight, minimum=0)
        check_number("warmup_epochs", self.warmup_epochs, minimum=0)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


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
        self.projection = nn.Linear(dim, dim)
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(dim))
            self.projection.bias.zero_()
        self.semantic = _mlp(2 * dim, config.hidden, dim)
        self.enhance = _mlp(2 * dim, config.hidden, self.num_classes)
        self.recovery_head = nn.Linear(dim, self.num_classes)

    def forward(self, features: ImageFeatures) -> MethodOutput:
        dense = F.normalize(self.projection(features.dense_features), dim=-1)  # [B, P, D], unit as the text
        batch = dense.shape[0]
        image = F.normalize(features.global_features, dim=-1)[:, None].expand(-1, self.num_classes, -1)
        text = self.text.to(dense.dtype)[None].expand(batch, -1, -1)
        semantic = text + self.semantic(torch.cat([text, image], dim=-1))  # [B, C, D]
        affinity = torch.einsum("bpd,bcd->bpc", dense, F.normalize(semantic, dim=-1))
        enhanced = torch.bmm(torch.softmax(self.config.attention_scale * affinity, dim=-1), semantic)
        location_logits = self.enhance(torch.cat([enhanced, dense], dim=-1))  # [B, P, C]
        weights = torch.softmax(location_logits, dim=1)
        logits = (weights * location_logits).sum(1)
        extras = {"recovery_logits": self.recovery_head(dense).amax(1)}
        return MethodOutput(logits, weights.transpose(1, 2), features.grid, extras=extras)

    def auxiliary_losses(self, output: MethodOutput, targets: torch.Tensor, loss_fn: LossFn
                         ) -> dict[str, torch.Tensor]:
        recovery_logits = output.extras["recovery_logits"]
        if self.epoch < self.config.warmup_epochs:
            loss = loss_fn(recovery_logits, targets)
        else:
            soft = recovered_targets(targets, torch.sigmoid(output.logits.detach().float()))
            loss = F.binary_cross_entropy_with_logits(recovery_logits.float(), soft)
        return {"recovery": self.config.recovery_weight * loss}

    def class_embeddings(self) -> torch.Tensor:
        raise ConfigError("method clsl scores classes with MLPs over image locations, not with one joint-space "
                          "vector per class, so it has no text embeddings to export; use its run folder's "
                          "best.safetensors with promptmlr predict")

    def estimate_activation_bytes(self, batch_size: int, locations: int) -> int:
        dim, hidden, classes = self.backbone.embed_dim, self.config.hidden, self.num_classes
        per_location = 2 * classes + 3 * dim + hidden  # affinity, logits, enhanced + input, hidden
        return BYTES_PER_FLOAT * 2 * batch_size * (locations * per_location + classes * (2 * dim + hidden))
