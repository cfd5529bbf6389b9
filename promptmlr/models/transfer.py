"""Structured semantic transfer (SST, Chen et al., AAAI 2022): pseudo-labels for unknown entries
from label co-occurrence within an image and from feature similarity across images.

* Intra-image: :class:`CooccurrenceHead` predicts, for image b and classes (i, j), the probability
  that both are present, trained on the pairs whose labels are known. Where i is a known positive,
  ``P[b, i, j]`` estimates that j is present; an unknown j becomes a positive when the mean of these
  estimates over the image's known positives reaches the threshold.
* Cross-image: :class:`PositiveMemory` keeps, per class, the latest category features of known
  positives; an unknown (b, c) becomes a positive when its feature's mean cosine with class c's
  memory reaches the threshold.

SST keeps pseudo-positives only (so do we) and lowers both thresholds as training goes on
(:func:`transfer_threshold`). SST's inter-image module compares with the current batch's features;
the memory extends that comparison to the last ``size`` positives of every class, so that rare
classes find a partner at batch size 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def transfer_threshold(epoch: int, known_only_epochs: int, start: float, step: float, floor: float) -> float:
    """``start`` at the end of the known-only epochs, ``step`` lower each epoch after it, never below ``floor``."""
    return max(floor, start - step * max(0, epoch - known_only_epochs))


class CooccurrenceHead(nn.Module):
    """``logit[b, i, j] = MLP([f_i; f_j])`` for every ordered pair of image b's category features.

    The first layer's ``W [f_i; f_j] = W_i f_i + W_j f_j`` is computed per class and broadcast over
    pairs, so ``[B, C, C, 2D]`` never exists.
    """

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.first = nn.Linear(embed_dim, hidden)
        self.second = nn.Linear(embed_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)

    def forward(self, category: torch.Tensor) -> torch.Tensor:
        """Category features ``[B, C, D]`` -> pair logits ``[B, C, C]``."""
        hidden = F.relu(self.first(category)[:, :, None] + self.second(category)[:, None, :])
        return self.out(hidden).squeeze(-1)


def cooccurrence_targets(targets: torch.Tensor) -> torch.Tensor:
    """Pair labels ``[B, C, C]`` from labels ``[B, C]`` in {1, -1, 0}: 1 where both classes are known
    positives, -1 where either is a known negative (they cannot both be present), 0 otherwise and on
    the diagonal."""
    positive = (targets > 0).float()
    negative = (targets < 0).float()
    both = positive[:, :, None] * positive[:, None, :]
    either_negative = 1 - (1 - negative[:, :, None]) * (1 - negative[:, None, :])
    pairs = both - either_negative * (1 - both)
    return pairs * (1 - torch.eye(targets.shape[1], device=targets.device))


def intra_image_pseudo_labels(pair_probability: torch.Tensor, targets: torch.Tensor, threshold: float
                              ) -> torch.Tensor:
    """Pseudo-positives ``[B, C]`` (1, else 0) for unknown entries: the mean of ``P[b, i, j]`` over
    image b's known positives i is at least ``threshold``. Known entries are never touched."""
    positive = (targets > 0).float()
    evidence = torch.einsum("bij,bi->bj", pair_probability, positive) / positive.sum(1, keepdim=True).clamp_min(1)
    return ((evidence >= threshold) & (targets == 0)).float()


class PositiveMemory(nn.Module):
    """Per class, a first-in-first-out queue of the last ``size`` unit category features of known
    positives. Buffers, so that a checkpoint holds it and a resumed run continues identically."""

    def __init__(self, num_classes: int, size: int, embed_dim: int):
        super().__init__()
        self.register_buffer("features", torch.zeros(num_classes, size, embed_dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))  # entries written so far

    @torch.no_grad()
    def push(self, category: torch.Tensor, targets: torch.Tensor) -> None:
        """Append each known positive's feature of ``category [B, C, D]`` to its class's queue."""
        size = self.features.shape[1]
        for c in torch.nonzero((targets > 0).any(0)).flatten().tolist():
            positives = category[targets[:, c] > 0, c].to(self.features.dtype)
            kept = positives[-size:]  # more than the queue holds: the older ones would be overwritten anyway
            first = self.count[c] + len(positives) - len(kept)
            self.features[c, (first + torch.arange(len(kept), device=kept.device)) % size] = kept
            self.count[c] += len(positives)

    def mean_similarity(self, category: torch.Tensor) -> torch.Tensor:
        """Mean cosine ``[B, C]`` of each unit category feature with its class's stored positives;
        -1 for a class with none stored yet (no evidence)."""
        filled = torch.arange(self.features.shape[1], device=self.count.device)[None] < self.count[:, None]
        similarity = torch.einsum("bcd,cmd->bcm", category.to(self.features.dtype), self.features)
        mean = (similarity * filled).sum(-1) / filled.sum(-1).clamp_min(1)
        return torch.where(filled.any(-1), mean, torch.full_like(mean, -1.0))


def cross_image_pseudo_labels(similarity: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pseudo-positives ``[B, C]`` for unknown entries whose memory similarity reaches ``threshold``."""
    return ((similarity >= threshold) & (targets == 0)).float()
