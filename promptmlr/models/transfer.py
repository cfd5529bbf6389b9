"""Structured semantic transfer (SST, Chen et al., AAAI 2022): pseudo-labels for unknown entries
from label co-occurrence within an image and from feature similarity across images.

* Intra-image: a pair head predicts, for image b and classes (i, j), the probability that both are
  present (:class:`PairClassifierHead`, the ``intra_*`` branch of the authors' ``model/SST.py``, or
  :class:`OrderedPairHead`), trained on pair labels from the known labels
  (:func:`authors_cooccurrence_loss`, or :func:`cooccurrence_targets` under the run's loss). Where
  i is a known positive, ``P[b, i, j]`` estimates that j is present; an unknown j becomes a positive
  when the mean of these estimates over the image's known positives reaches the threshold
  (:func:`intra_image_pseudo_labels`, their ``getIntraPseudoLabel``).
* Cross-image: :class:`PositiveMemory` keeps, per class, the latest category features of known
  positives (their ``posFeature``, ``interExampleNumber`` of them); an unknown (b, c) becomes a
  positive when its feature's mean cosine with class c's memory reaches the threshold
  (:func:`cross_image_pseudo_labels`, their ``getInterPseudoLabel``).

Both thresholds start at 0.95 when the known-only epochs end and fall by 0.025 after each epoch, to
0.75 (:func:`transfer_threshold`; ``SST.py``'s ``main`` lowers ``intraBCEMargin`` and
``interBCEMargin`` so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from promptmlr.losses import asymmetric_loss
from promptmlr.models.base import BYTES_PER_FLOAT
from promptmlr.models.category import element_wise_parameters

MEMORY_RULES = ("authors", "filled")


def transfer_threshold(epoch: int, known_only_epochs: int, start: float, step: float, floor: float) -> float:
    """``start`` at the end of the known-only epochs, ``step`` lower each epoch after it, never below ``floor``."""
    return max(floor, start - step * max(0, epoch - known_only_epochs))


class PairClassifierHead(nn.Module):
    """SST's co-occurrence branch (``model/SST.py``: ``intra_fc_1``, ``intra_fc_2``, ``intra_fc_3``,
    ``intra_classifiers``): for each unordered pair ``i < j`` of classes,

        logit[b, (i, j)] = <w_ij, fc3(relu(fc2([fc1(f_i); fc1(f_j)])))> + b_ij

    with weights ``w_ij``, ``b_ij`` of its own per pair (drawn as their ``Element_Wise_Layer``), returned
    as a symmetric ``[B, C, C]`` map (0 on the diagonal, which no rule reads). ``fc2`` of the
    concatenation is computed per class and gathered per pair (``W [g_i; g_j] = W_1 g_i + W_2 g_j``)."""

    def __init__(self, num_classes: int, embed_dim: int, reduced: int, hidden: int):
        super().__init__()
        self.reduce = nn.Linear(embed_dim, reduced)  # their intra_fc_1
        self.pair = nn.Linear(2 * reduced, hidden)  # intra_fc_2
        self.hidden = nn.Linear(hidden, hidden)  # intra_fc_3
        self.weight, self.bias = element_wise_parameters(num_classes * (num_classes - 1) // 2, hidden)
        self.register_buffer("pairs", torch.triu_indices(num_classes, num_classes, 1), persistent=False)

    def forward(self, category: torch.Tensor) -> torch.Tensor:
        """Category features ``[B, C, D]`` (as decoupled) -> pair logits ``[B, C, C]``."""
        reduced = self.reduce(category)
        width = reduced.shape[-1]
        left = reduced @ self.pair.weight[:, :width].T
        right = reduced @ self.pair.weight[:, width:].T
        first, second = self.pairs
        hidden = self.hidden(F.relu(left[:, first] + right[:, second] + self.pair.bias))  # [B, pairs, hidden]
        logits = (hidden * self.weight).sum(-1) + self.bias
        grid = logits.new_zeros(category.shape[0], category.shape[1], category.shape[1])
        grid[:, first, second] = logits
        grid[:, second, first] = logits
        return grid

    def estimate_activation_bytes(self, batch_size: int, num_classes: int) -> int:
        """The pair activations ``[B, pairs, hidden]`` held for the backward pass: the sum before the
        ReLU, after it, after fc3, and its product with the pair weights."""
        return BYTES_PER_FLOAT * 4 * batch_size * self.weight.numel()


class OrderedPairHead(nn.Module):
    """``logit[b, i, j] = MLP([f_i; f_j])`` for every ordered pair of image b's unit category features,
    one MLP for all pairs. The first layer's ``W [f_i; f_j] = W_i f_i + W_j f_j`` is computed per class
    and broadcast over pairs, so ``[B, C, C, 2D]`` never exists."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.first = nn.Linear(embed_dim, hidden)
        self.second = nn.Linear(embed_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)

    def forward(self, category: torch.Tensor) -> torch.Tensor:
        """Unit category features ``[B, C, D]`` -> pair logits ``[B, C, C]``."""
        hidden = F.relu(self.first(category)[:, :, None] + self.second(category)[:, None, :])
        return self.out(hidden).squeeze(-1)

    def estimate_activation_bytes(self, batch_size: int, num_classes: int) -> int:
        """The pair activations ``[B, C, C, hidden]``, before and after the ReLU."""
        return BYTES_PER_FLOAT * 2 * batch_size * num_classes ** 2 * self.first.weight.shape[0]


def authors_cooccurrence_loss(pair_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SST's co-occurrence loss (``loss/SST.py``, ``intraAsymmetricLoss`` as ``SST.py`` builds it): every
    pair of distinct classes is a target, 1 where both are known positives and else 0 (an unknown label
    counts as absent), under ASL with ``gamma_neg`` 2, ``gamma_pos`` 1 and clip 0.05; the mean over all
    pairs and images. On a symmetric map the mean over ordered pairs is theirs over pairs ``i < j``."""
    positive = (targets > 0).float()
    both = positive[:, :, None] * positive[:, None, :]
    off_diagonal = 1 - torch.eye(targets.shape[1], device=targets.device)
    return asymmetric_loss(pair_logits, (2 * both - 1) * off_diagonal, gamma_neg=2.0, gamma_pos=1.0, clip=0.05)


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
    positive = (targets > 0).to(pair_probability.dtype)
    evidence = torch.einsum("bij,bi->bj", pair_probability, positive) / positive.sum(1, keepdim=True).clamp_min(1)
    return ((evidence >= threshold) & (targets == 0)).float()


class PositiveMemory(nn.Module):
    """Per class, the latest ``size`` unit category features of known positives. Buffers, so that a
    checkpoint holds it and a resumed run continues identically.

    ``rule`` says how a batch's positives enter and how a feature is compared with what is stored
    (:meth:`mean_similarity`): ``authors``, as HCP-MLR-PL's ``posFeature``: it starts as zeros,
    ``updateFeature`` stacks a batch's positives (in batch order) above the stored ones and keeps the
    top ``size``, and ``getInterPseudoLabel`` takes the mean cosine over all of it, an empty slot
    counting 0; ``filled``, a first-in-first-out ring, the mean over the filled slots only, and no
    evidence (-1) for a class with none."""

    def __init__(self, num_classes: int, size: int, embed_dim: int, rule: str):
        super().__init__()
        if rule not in MEMORY_RULES:
            raise ValueError(f"memory rule must be one of {', '.join(MEMORY_RULES)}, got {rule!r}")
        self.rule = rule
        self.register_buffer("features", torch.zeros(num_classes, size, embed_dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))  # entries written so far

    @torch.no_grad()
    def push(self, category: torch.Tensor, targets: torch.Tensor) -> None:
        """Store each known positive's feature of ``category [B, C, D]`` for its class."""
        size = self.features.shape[1]
        for c in torch.nonzero((targets > 0).any(0)).flatten().tolist():
            positives = category[targets[:, c] > 0, c].to(self.features.dtype)
            if self.rule == "authors":
                self.features[c] = torch.cat((positives, self.features[c]))[:size]
            else:
                kept = positives[-size:]  # more than the ring holds: the older ones would be overwritten anyway
                first = self.count[c] + len(positives) - len(kept)
                self.features[c, (first + torch.arange(len(kept), device=kept.device)) % size] = kept
            self.count[c] += len(positives)

    def mean_similarity(self, category: torch.Tensor) -> torch.Tensor:
        """Mean cosine ``[B, C]`` of each unit category feature with its class's stored positives, by
        the memory's ``rule``."""
        similarity = torch.einsum("bcd,cmd->bcm", category.to(self.features.dtype), self.features)
        if self.rule == "authors":
            return similarity.mean(-1)  # an empty slot is zeros: cosine 0
        filled = torch.arange(self.features.shape[1], device=self.count.device)[None] < self.count[:, None]
        mean = (similarity * filled).sum(-1) / filled.sum(-1).clamp_min(1)
        return torch.where(filled.any(-1), mean, torch.full_like(mean, -1.0))


def cross_image_pseudo_labels(similarity: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pseudo-positives ``[B, C]`` for unknown entries whose memory similarity reaches ``threshold``."""
    return ((similarity >= threshold) & (targets == 0)).float()
