"""Semantic decoupling: one image feature per category, pooled where that category is.

SARL (Ruan, Xu et al., arXiv:2412.10843, 2024) and HCP's SemanticDecoupling (Chen et al., AAAI
2019; used by SST, SARB and DSRB) split a dense feature map into category-specific features by
attending over locations with a per-class query. Here the query is the class's positive prompt
feature, its text feature, or a learnable vector initialised from either, and the attention is a
temperature-scaled cosine softmax over locations:

    A[b, c, :] = softmax_hw(tau * cos(dense[b, hw], q_c)),   f[b, c] = sum_hw A[b, c, hw] * V(dense[b, hw])

computed as a ``[B, C, HW]`` map and one batched matrix product, so ``[B, C, HW, D]`` never exists.
``V`` is a linear map initialised to the identity, so training starts from CLIP's own space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.models.base import BYTES_PER_FLOAT


class SemanticDecouplingHead(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int, initial_queries: torch.Tensor | None = None,
                 temperature: float = 10.0):
        super().__init__()
        self.value = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(embed_dim))
            self.value.bias.zero_()
        self.queries = None if initial_queries is None else nn.Parameter(initial_queries.detach().clone())
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.num_classes = num_classes

    def forward(self, dense: torch.Tensor, queries: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``dense [B, HW, D]`` -> category features ``[B, C, D]`` and attention ``[B, C, HW]``.

        ``queries [C, D]`` are used when the head has no learnable queries of its own.
        """
        queries = self.queries if self.queries is not None else queries
        if queries is None:
            raise ValueError("the head has no learnable queries; pass the class queries")
        similarity = torch.einsum("bld,cd->bcl", F.normalize(dense, dim=-1), F.normalize(queries, dim=-1))
        attention = torch.softmax(self.log_temperature.exp() * similarity, dim=-1)
        return torch.bmm(attention, self.value(dense)), attention

    def estimate_activation_bytes(self, batch_size: int, locations: int, embed_dim: int) -> int:
        """Similarity, attention (and their gradients) ``[B, C, HW]``, values ``[B, HW, D]`` and
        category features ``[B, C, D]``: linear in C*HW and in C*D, never C*HW*D."""
        per_map = batch_size * self.num_classes * locations
        return BYTES_PER_FLOAT * (4 * per_map + 2 * batch_size * locations * embed_dim
                                  + 2 * batch_size * self.num_classes * embed_dim)
