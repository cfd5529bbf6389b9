"""Weights for an ensemble's branches, chosen on the validation split.

Branches trained each on its own loss make different errors, and averaging their logits cancels
some of them; but a mean weighs every branch alike, also one that is weak on this encoder (the dense
branches of a backbone whose patch tokens hold little). The weights are chosen where the run's
epoch is chosen: the validation mAP, on the known labels of data none of the branches trained on.
They are a convex combination (non-negative, summing to 1, as the mean's are), so the fused logits
stay on the branches' own scale, searched on a grid of the simplex that holds the mean; a handful
of weights cannot fit the noise a per-class weight would. The cross-entropy on the same labels is
not the criterion: it rewards the branch whose probabilities are calibrated best, not the one that
ranks best, and the ranking is what mAP, and the epoch's selection, measure.
"""

from __future__ import annotations

import itertools

import numpy as np

from promptmlr.metrics import mean_average_precision

GRID_STEP = 0.1  # the grid's spacing: 286 candidates for 4 branches, 66 for 3


def simplex_grid(branches: int, step: float = GRID_STEP) -> np.ndarray:
    """Every weight vector ``[M, K]`` whose entries are multiples of ``step`` summing to 1, and the
    mean (``1 / K`` each, on the grid only where ``step`` divides it); the mean is row 0."""
    units = round(1 / step)
    points = [counts for counts in itertools.product(range(units + 1), repeat=branches - 1) if sum(counts) <= units]
    grid = np.array([[*counts, units - sum(counts)] for counts in points], dtype=np.float64) / units
    return np.concatenate([np.full((1, branches), 1.0 / branches), grid])


def validated_weights(branch_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The weights ``[K]`` of :func:`simplex_grid` whose fused logits ``sum_k w_k logits_k``
    (``branch_logits`` ``[N, K, C]``) give the highest mAP on ``labels`` ``[N, C]`` (1 / -1 known,
    0 unknown); of equal ones the closest to the mean, so a split that cannot tell them apart keeps
    the mean. The mean when no class has a known positive."""
    branches = branch_logits.shape[1]
    grid = simplex_grid(branches)
    if not (labels == 1).any():
        return grid[0]
    scores = np.array([mean_average_precision(np.einsum("nkc,k->nc", branch_logits, weights), labels)
                       for weights in grid])
    distance = ((grid - grid[0]) ** 2).sum(1)
    best = np.flatnonzero(scores == scores.max())
    return grid[best[np.argmin(distance[best])]]
