"""A validation split carved from the training set, for model selection without the test set.

The anchors (DualCoOp, HCP-MLR-PL) select epochs and hyper-parameters on the test set; promptmlr
holds out part of the *training* images instead and touches the test set only when asked.
Multi-label data cannot be stratified exactly, so the split is a seeded random draw, repaired so
that every class with at least two known positives has a positive on both sides where possible
(rare classes first). It uses only the labels it is given: with partial labels, only known
positives count, which is all a user of partially labelled data can see.
"""

from __future__ import annotations

import numpy as np

from promptmlr.data.labels import POSITIVE, as_label_matrix
from promptmlr.data.textfiles import DatasetError


def split_validation(labels: np.ndarray, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices of ``labels`` into ``(train_idx, val_idx)``, both sorted, deterministic.

    ``val_idx`` has ``round(fraction * N)`` rows (at least 1). The draw order comes from NumPy's
    legacy ``RandomState(seed)``, whose stream NumPy keeps fixed across versions.
    """
    matrix = as_label_matrix(labels)
    count = matrix.shape[0]
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be in (0, 1), got {fraction}")
    if count < 2:
        raise DatasetError(f"cannot carve a validation split from {count} training image(s); add images, or "
                           "train without one: --set data.val_fraction=0")
    size = min(max(1, round(fraction * count)), count - 1)
    order = np.random.RandomState(seed).permutation(count)
    positive = matrix == POSITIVE
    total = positive.sum(axis=0)
    protected = total >= 2  # classes that can keep a positive on both sides
    in_val = np.zeros(count, dtype=bool)
    val_positives = np.zeros(matrix.shape[1], dtype=np.int64)

    def try_move(row: int, force: bool = False) -> bool:
        """Move ``row`` to validation unless that takes a protected class's last training positive."""
        classes = positive[row] & protected
        if in_val[row] or not (force or np.all(total[classes] - val_positives[classes] >= 2)):
            return False
        in_val[row] = True
        val_positives[positive[row]] += 1
        return True

    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count)
    moved = 0
    for column in np.argsort(total, kind="stable"):  # rarest classes first get a validation positive
        if moved < size and protected[column] and val_positives[column] == 0:
            candidates = np.flatnonzero(positive[:, column])
            moved += any(try_move(row) for row in candidates[np.argsort(rank[candidates])])
    for force in (False, True):  # fill in draw order; force only if the constraints left too few
        for row in order:
            if moved >= size:
                break
            moved += try_move(row, force)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)
