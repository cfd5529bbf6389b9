"""The validation split carved from training data: size, determinism, positives on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from promptmlr.data import DatasetError, read_label_matrix, split_validation


def random_labels(images: int, classes: int, rate: float, seed: int = 0) -> np.ndarray:
    return np.where(np.random.RandomState(seed).rand(images, classes) < rate, 1, -1).astype(np.int8)


def test_partition_size_and_determinism():
    labels = random_labels(1000, 20, 0.1)
    train, val = split_validation(labels)
    assert len(val) == 100 and len(train) == 900
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)
    again = split_validation(labels)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(split_validation(labels, seed=1)[1], val)
    assert len(split_validation(labels, fraction=0.25)[1]) == 250


def test_rare_classes_keep_a_positive_on_both_sides():
    labels = random_labels(500, 30, 0.05)
    labels[:, 0] = -1
    labels[[17, 401], 0] = 1  # exactly two positives
    labels[:, 1] = -1
    labels[[3, 250, 499], 1] = 1
    labels[:, 2] = -1
    labels[42, 2] = 1  # a single positive cannot be on both sides
    train, val = split_validation(labels, fraction=0.1, seed=3)
    positive = labels == 1
    for column in np.flatnonzero(positive.sum(axis=0) >= 2):
        assert positive[val, column].any() and positive[train, column].any(), column
    assert len(val) == 50


def test_only_known_positives_count_on_partial_labels():
    labels = random_labels(300, 5, 0.2)
    labels[:, 4] = 0
    labels[[5, 9], 4] = 1  # the only known positives of class 4
    train, val = split_validation(labels, seed=2)
    assert {5, 9} & set(val) and {5, 9} & set(train)


def test_voc_trainval_split_covers_every_class(shared_data):
    labels = read_label_matrix(shared_data / "voc2007-hcp-partial-labels" / "original-labels" / "train.txt")
    train, val = split_validation(labels)
    assert len(val) == 501 and len(train) == 4510
    assert (labels[val] == 1).any(axis=0).all() and (labels[train] == 1).any(axis=0).all()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_zero_one_is_an_error(fraction):
    with pytest.raises(DatasetError, match=r"validation fraction must be in \(0, 1\)"):
        split_validation(random_labels(10, 2, 0.5), fraction=fraction)


def test_too_few_images_is_an_error():
    with pytest.raises(DatasetError, match="from 1 training image.*data.val_fraction=0"):
        split_validation(np.ones((1, 3)))
