"""``promptmlr.scoring.collect``: batches in any order become one array in row order, with or
without the split's size known in advance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptmlr.scoring import collect


class _Output:
    def __init__(self, wide: torch.Tensor):
        self.wide = wide
        self.logits = wide[:, :3]  # a view of a larger output, as a method's logits often are


def _batches(order: np.ndarray, values: np.ndarray, batch: int):
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        wide = torch.cat([torch.from_numpy(values[rows]), torch.zeros(len(rows), 100)], dim=1)
        yield _Output(wide), torch.from_numpy(rows)


@pytest.mark.parametrize("rows", [None, 10])
def test_collect_returns_every_row_in_order_in_an_array_of_its_own(rows):
    values = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    order = np.random.default_rng(1).permutation(10)  # batches in shuffled order, as several processes give
    collected, found = collect(_batches(order, values, 4), lambda output: output.logits, rows=rows)
    np.testing.assert_array_equal(found, np.arange(10))
    np.testing.assert_array_equal(collected, values)
    assert collected.dtype == np.float32 and collected.base is None  # its own memory, not a view of an output


def test_collect_refuses_a_split_size_its_batches_do_not_cover():
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    with pytest.raises(ValueError, match="scored 2 of the split's 4 rows"):
        collect(_batches(np.array([3, 1]), values, 1), lambda output: output.logits, rows=4)
