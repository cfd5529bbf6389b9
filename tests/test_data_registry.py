"""The dataset registry and the MultiLabelDataset views (labels, subsets, transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptmlr.data import (
    DatasetError,
    MultiLabelDataset,
    build_dataset,
    list_datasets,
    make_partial_labels,
    register_dataset,
)
from promptmlr.data.registry import DATASETS


def test_every_issue_dataset_is_registered():
    assert set(list_datasets()) >= {"voc2007", "coco2014", "nuswide", "vg200", "yolo", "jsonl", "csv"}
    assert list_datasets() == sorted(list_datasets())


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    known = "coco2014, csv, custom, jsonl, nuswide, synthetic, vg200, voc2007, yolo"
    with pytest.raises(DatasetError, match=rf"unknown dataset 'voc2012'; available: {known}"):
        build_dataset("voc2012", tmp_path, "train")


def test_unknown_split_lists_valid_splits(tmp_path):
    with pytest.raises(DatasetError, match=r"no split 'training'; valid splits: train, val, trainval, test"):
        build_dataset("voc2007", tmp_path, "training")


def test_unknown_option_lists_accepted_options(tmp_path):
    with pytest.raises(DatasetError, match=r"coco2014 does not take option\(s\) difficult; it takes: image_list"):
        build_dataset("coco2014", tmp_path, "train", difficult="ignore")


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match=f"data root {tmp_path / 'nope'} does not exist"):
        build_dataset("voc2007", tmp_path / "nope", "train")


def test_registering_a_dataset_is_one_decorator(tmp_path, make_image):
    image = make_image(tmp_path / "a.png")

    @register_dataset("toy-test", splits=("only",))
    def build_toy(root, split, flavour: str = "plain") -> MultiLabelDataset:
        """A toy dataset."""
        return MultiLabelDataset("toy-test", split, [flavour], [image], np.array([[1]]))

    try:
        dataset = build_dataset("toy-test", tmp_path, "only", flavour="sweet", difficult=None)
        assert dataset.class_names == ["sweet"] and "toy-test" in list_datasets()
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("toy-test", splits=("only",))(build_toy)
    finally:
        DATASETS.unregister("toy-test")


@pytest.fixture
def toy(tmp_path, make_image) -> MultiLabelDataset:
    paths = [make_image(tmp_path / f"{i}.png", size=(4 + i, 4)) for i in range(5)]
    labels = np.array([[1, -1], [-1, 1], [1, 1], [-1, -1], [0, 1]])
    return MultiLabelDataset("toy", "train", ["a", "b"], paths, labels)


def test_getitem_returns_image_float_labels_and_index(toy):
    image, labels, index = toy[4]
    assert image.size == (8, 4) and image.mode == "RGB"
    assert labels.dtype == torch.float32 and labels.tolist() == [0.0, 1.0] and index == 4


def test_with_labels_replaces_the_matrix_and_leaves_the_original(toy):
    partial = toy.with_labels(make_partial_labels(toy.labels, 0.5))
    assert partial.image_paths == toy.image_paths and partial.labels is not toy.labels
    assert toy.labels[0, 0] == 1
    with pytest.raises(DatasetError, match="new labels are 2x2, the dataset is 5x2"):
        toy.with_labels(np.ones((2, 2)))


def test_subset_and_with_transform_make_new_views(toy):
    part = toy.subset([3, 0])
    assert len(part) == 2 and part.image_paths == [toy.image_paths[3], toy.image_paths[0]]
    np.testing.assert_array_equal(part.labels, toy.labels[[3, 0]])
    tensors = part.with_transform(lambda image: torch.zeros(image.size))
    assert tensors[1][0].shape == (4, 4) and part.transform is None
    with pytest.raises(DatasetError, match=r"subset indices must be in \[0, 5\)"):
        toy.subset([5])


def test_inconsistent_dataset_is_rejected(toy):
    with pytest.raises(DatasetError, match="label matrix is 5x2, but there are 4 images and 2 classes"):
        MultiLabelDataset("toy", "train", ["a", "b"], toy.image_paths[:4], toy.labels)
    with pytest.raises(DatasetError, match="class names repeat: a"):
        MultiLabelDataset("toy", "train", ["a", "a"], toy.image_paths, toy.labels)
    with pytest.raises(DatasetError, match="labels must be 1"):
        MultiLabelDataset("toy", "train", ["a", "b"], toy.image_paths, toy.labels * 2)
