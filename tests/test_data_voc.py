"""PASCAL VOC 2007 on the real train split in ../shared, and on a tiny VOCdevkit with XML annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from promptmlr.data import DatasetError, SplitNotFoundError, build_dataset
from promptmlr.data.voc import VOC_CLASSES


@pytest.fixture(scope="module")
def voc_root(shared_data) -> Path:
    return shared_data / "voc2007-train"


@pytest.fixture(scope="module")
def voc_train(voc_root):
    return build_dataset("voc2007", voc_root, "train")


def test_real_train_split_counts_and_class_order(voc_train, voc_root):
    assert len(voc_train) == 2500
    assert voc_train.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert voc_train.labels.shape == (2500, 20) and voc_train.labels.dtype == np.int8
    assert voc_train.image_paths[0] == voc_root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000012.jpg"
    positives = dict(zip(VOC_CLASSES, (voc_train.labels == 1).sum(axis=0)))
    assert positives["person"] == 1025 and positives["sheep"] == 48 and sum(positives.values()) == 3687


def test_known_images_have_their_official_labels(voc_train):
    row_of = {path.stem: row for row, path in enumerate(voc_train.image_paths)}
    positive = {stem: {VOC_CLASSES[c] for c in np.flatnonzero(voc_train.labels[row_of[stem]] == 1)}
                for stem in ("000012", "000017")}
    assert positive == {"000012": {"car"}, "000017": {"horse", "person"}}
    image, labels, index = voc_train[row_of["000017"]]
    assert image.mode == "RGB" and index == row_of["000017"]
    assert labels.dtype.is_floating_point and labels[VOC_CLASSES.index("horse")] == 1.0


def test_difficult_only_classes_negative_by_default_unknown_with_ignore(voc_root, voc_train):
    ignored = build_dataset("voc2007", voc_root, "train", difficult="ignore")
    assert (voc_train.labels == 0).sum() == 0
    assert (ignored.labels == 0).sum() == 329  # the ' 0' lines of the 20 official class files
    row = [p.stem for p in ignored.image_paths].index("000648")
    assert ignored.labels[row, VOC_CLASSES.index("aeroplane")] == 0
    assert voc_train.labels[row, VOC_CLASSES.index("aeroplane")] == -1
    np.testing.assert_array_equal(ignored.labels[ignored.labels != 0], voc_train.labels[ignored.labels != 0])


def test_root_may_be_the_devkit_or_year_folder(voc_root, voc_train):
    for root in (voc_root / "VOCdevkit", voc_root / "VOCdevkit" / "VOC2007"):
        np.testing.assert_array_equal(build_dataset("voc2007", root, "train").labels, voc_train.labels)


def test_absent_split_says_which_splits_exist(voc_root):
    with pytest.raises(SplitNotFoundError, match="this copy has splits: train"):
        build_dataset("voc2007", voc_root, "test")


def test_bad_difficult_option_lists_choices(voc_root):
    with pytest.raises(DatasetError, match="negative, ignore"):
        build_dataset("voc2007", voc_root, "train", difficult="drop")


def write_annotation(path: Path, objects: list[tuple[str, int]]) -> None:
    body = "".join(f"<object><name>{name}</name><difficult>{difficult}</difficult></object>"
                   for name, difficult in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{body}</annotation>")


@pytest.fixture
def xml_devkit(tmp_path) -> Path:
    """A VOCdevkit whose 'val' split has only Annotations (no per-class files)."""
    year = tmp_path / "VOCdevkit" / "VOC2007"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "ImageSets" / "Main" / "val.txt").write_text("000001\n000002\n000003\n")
    write_annotation(year / "Annotations" / "000001.xml", [("dog", 0), ("person", 1)])
    write_annotation(year / "Annotations" / "000002.xml", [("person", 1), ("person", 0), ("car", 1)])
    write_annotation(year / "Annotations" / "000003.xml", [("Cat", 0)])
    return tmp_path


def test_labels_from_annotations_follow_the_class_file_rule(xml_devkit):
    ignored = build_dataset("voc2007", xml_devkit, "val", difficult="ignore")
    dog, person, car, cat = (VOC_CLASSES.index(c) for c in ("dog", "person", "car", "cat"))
    assert ignored.labels[0, dog] == 1 and ignored.labels[0, person] == 0
    assert ignored.labels[1, person] == 1 and ignored.labels[1, car] == 0
    assert ignored.labels[2, cat] == 1 and (ignored.labels[2] == 1).sum() == 1
    negative = build_dataset("voc2007", xml_devkit, "val")
    assert negative.labels[0, person] == -1 and negative.labels[1, car] == -1
    assert (negative.labels == 0).sum() == 0


def test_unknown_class_in_annotation_is_named(xml_devkit):
    write_annotation(xml_devkit / "VOCdevkit" / "VOC2007" / "Annotations" / "000003.xml", [("zebra", 0)])
    with pytest.raises(DatasetError, match=r"000003\.xml: object class 'zebra' is not a VOC class"):
        build_dataset("voc2007", xml_devkit, "val")


def test_malformed_class_file_line_is_named(tmp_path):
    main = tmp_path / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("000001\n000002\n")
    for name in VOC_CLASSES:
        (main / f"{name}_train.txt").write_text("000001 -1\n000002  1\n")
    (main / "dog_train.txt").write_text("000001 -1\n000002 yes\n")
    with pytest.raises(DatasetError, match=r"dog_train\.txt, line 2: expected '<image id> 1\|-1\|0'"):
        build_dataset("voc2007", tmp_path, "train")
    (main / "dog_train.txt").write_text("000001 -1\n")
    with pytest.raises(DatasetError, match=r"dog_train\.txt: no line for image 000002"):
        build_dataset("voc2007", tmp_path, "train")
