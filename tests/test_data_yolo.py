"""YOLO / ultralytics layout: the real coco128 copy in ../shared and small generated variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from promptmlr.backbones.preprocess import PreprocessConfig, build_transform
from promptmlr.data import DatasetError, SplitNotFoundError, build_dataset
from promptmlr.data.yolo import label_path_for


@pytest.fixture(scope="module")
def coco128(shared_data) -> Path:
    return shared_data / "coco128-train"


def test_coco128_images_classes_and_positives_match_label_files(coco128):
    dataset = build_dataset("yolo", coco128, "train")
    assert len(dataset) == 128 and dataset.num_classes == 80
    assert dataset.class_names[:3] == ["person", "bicycle", "car"] and dataset.class_names[-1] == "toothbrush"
    without_labels = 0
    for path, row in zip(dataset.image_paths, dataset.labels):
        label_file = coco128 / "labels" / "train2017" / f"{path.stem}.txt"
        if not label_file.exists():
            without_labels += 1
            assert (row == -1).all()
            continue
        classes = {int(line.split()[0]) for line in label_file.read_text().splitlines() if line.strip()}
        assert set(np.flatnonzero(row == 1)) == classes
        assert set(np.flatnonzero(row == -1)) == set(range(80)) - classes
    assert without_labels == 2  # coco128 has two background images


def test_root_may_be_the_yaml_file_and_unknown_split_lists_splits(coco128):
    assert len(build_dataset("yolo", coco128 / "data.yaml", "train")) == 128
    with pytest.raises(SplitNotFoundError, match="its splits: train"):
        build_dataset("yolo", coco128, "val")


def test_a_user_can_train_on_yolo_data(coco128):
    dataset = build_dataset("yolo", coco128, "train")
    transform = build_transform(PreprocessConfig(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), train=True)
    images, labels, index = next(iter(DataLoader(dataset.subset(range(6)).with_transform(transform), batch_size=3)))
    assert images.shape == (3, 3, 64, 64) and labels.shape == (3, 80) and labels.dtype == torch.float32
    assert index.tolist() == [0, 1, 2]


def write_yolo(root: Path, make_image, names_yaml: str, labels: dict[str, str]) -> None:
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n{names_yaml}")
    for split in ("train", "val"):
        make_image(root / "images" / split / "a.png", size=(10, 10))
    for name, text in labels.items():
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / name).write_text(text)


def test_names_as_list_polygon_labels_and_empty_label_files(tmp_path, make_image):
    write_yolo(tmp_path, make_image, "names: [cat, dog, bird]\n",
               {"a.txt": "2 0.1 0.1 0.5 0.1 0.5 0.5\n0 0.5 0.5 0.2 0.2\n"})
    make_image(tmp_path / "images" / "train" / "sub" / "b.jpg", size=(10, 10))
    (tmp_path / "labels" / "train" / "sub").mkdir()
    (tmp_path / "labels" / "train" / "sub" / "b.txt").write_text("")
    dataset = build_dataset("yolo", tmp_path, "train")
    assert dataset.class_names == ["cat", "dog", "bird"]
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.image_paths] == ["images/train/a.png",
                                                                                 "images/train/sub/b.jpg"]
    np.testing.assert_array_equal(dataset.labels, [[1, -1, 1], [-1, -1, -1]])
    assert len(build_dataset("yolo", tmp_path, "val")) == 1


def test_class_id_outside_names_is_named(tmp_path, make_image):
    write_yolo(tmp_path, make_image, "names:\n  0: cat\n  1: dog\n", {"a.txt": "0 .5 .5 .1 .1\n7 .5 .5 .1 .1\n"})
    with pytest.raises(DatasetError, match=r"a\.txt, line 2: class '7' is not an id in 0\.\.1"):
        build_dataset("yolo", tmp_path, "train")


def test_missing_data_yaml_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.yaml not found"):
        build_dataset("yolo", tmp_path, "train")


def test_label_path_replaces_the_last_images_folder():
    assert label_path_for(Path("/d/images/x/images/train/a.jpg")) == Path("/d/images/x/labels/train/a.txt")
