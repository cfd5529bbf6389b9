"""promptmlr's semantic-guided enhancement: a per-location classifier guided by class text, after
CLSL's (He, Xie et al., arXiv:2510.10055, 2025) and with layers of its own.

1. Class features per image from the class's text feature and CLIP's global image feature,
   ``v[b, c] = t_c + MLP([t_c; g_b])``, a residual ReLU MLP (CLSL's ``ttd``: Conv1d, BatchNorm, GELU,
   Conv1d, without the residual, and ``g_b`` the mean of its encoded locations).
2. Each location attends over the classes by scaled cosine, ``e_p = sum_c softmax_c(s cos(x_p, v_c)) v_c``
   (CLSL: a learned low-rank bilinear score), and ``[e_p; x_p]`` goes through a ReLU MLP of width
   ``hidden`` to per-location class logits ``a[p, c]`` (CLSL: GELU and dropout 0.5 at width ``2 D``);
   the image's logit is their softmax-weighted mean ``sum_p softmax_p(a[p, c]) a[p, c]``, as CLSL's.

The locations are first mapped by a learned linear projection ``x_p = V dense_p`` (starting at the
identity) and kept unit length as the text is, where CLSL runs a transformer layer over them. The
``clsl`` method has CLSL's own layers by default (:mod:`promptmlr.models.clsl`) and these as its
``enhancement: promptmlr``; promptmlr (``enhance``) adds these logits to its prompt margins, guided
by fixed class text or by its learned positive prompts, detached (``enhance_text``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


def location_softmax_pool(location_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-location logits ``[B, P, C]`` -> ``sum_p softmax_p(a) a`` ``[B, C]`` and the weights
    ``[B, C, P]`` (CLSL's pooling, ``models/sarlp_clip.py``'s ``logits1``): between the mean and the
    max over locations, so one confident location can carry a small object without the background
    averaging it away."""
    weights = torch.softmax(location_logits, dim=1)
    return (weights * location_logits).sum(1), weights.transpose(1, 2)


class SemanticEnhancement(nn.Module):
    """promptmlr's enhancement: the learned projection of the locations, the class features and the
    per-location classifier with its pooling (items 1 and 2 above)."""

    def __init__(self, dim: int, num_classes: int, hidden: int, attention_scale: float):
        super().__init__()
        self.attention_scale = attention_scale
        self.projection = nn.Linear(dim, dim)
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(dim))
            self.projection.bias.zero_()
        self.semantic = mlp(2 * dim, hidden, dim)
        self.enhance = mlp(2 * dim, hidden, num_classes)

    def locations(self, dense: torch.Tensor) -> torch.Tensor:
        """CLIP's dense map ``[B, P, D]`` -> the projected, unit locations the classifier reads."""
        return F.normalize(self.projection(dense), dim=-1)

    def forward(self, dense: torch.Tensor, image: torch.Tensor, text: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected locations ``[B, P, D]`` (:meth:`locations`), unit global features ``[B, D]``,
        class features ``[C, D]`` -> logits ``[B, C]`` and each class's weights over the locations
        ``[B, C, P]``."""
        semantic = self.semantic_features(text.to(dense.dtype), image, dense.shape[0])
        enhanced = self.attend(dense, semantic)
        return self.pool(self.enhance(torch.cat([enhanced, dense], dim=-1)))

    def semantic_features(self, text: torch.Tensor, image: torch.Tensor, batch: int) -> torch.Tensor:
        """``v[b, c] = t_c + MLP([t_c; g_b])``: ``[B, C, D]``."""
        text = text[None].expand(batch, -1, -1)
        image = image[:, None].expand(-1, text.shape[1], -1)
        return text + self.semantic(torch.cat([text, image], dim=-1))

    def attend(self, dense: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """``e_p = sum_c softmax_c(s * cos(x_p, v_c)) v_c``: what each location ``[B, P, D]`` reads."""
        affinity = torch.einsum("bpd,bcd->bpc", dense, F.normalize(semantic, dim=-1))
        return torch.bmm(torch.softmax(self.attention_scale * affinity, dim=-1), semantic)

    pool = staticmethod(location_softmax_pool)

    @staticmethod
    def activation_floats(batch_size: int, locations: int, dim: int, hidden: int, classes: int) -> int:
        """Floats held for the backward pass (affinity, logits, enhanced + input, hidden per location;
        the semantic features per class)."""
        per_location = 2 * classes + 3 * dim + hidden
        return 2 * batch_size * (locations * per_location + classes * (2 * dim + hidden))
