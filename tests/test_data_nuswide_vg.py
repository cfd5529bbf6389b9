"""NUS-WIDE and Visual Genome VG-200 on tiny copies of their official / community file formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from promptmlr.data import DatasetError, SplitNotFoundError, build_dataset

CONCEPTS = ["airport", "animal", "beach"]  # Concepts81.txt holds 81; three keep the fixture small


@pytest.fixture
def nuswide_root(tmp_path, make_image) -> Path:
    """Official archive layout: ConceptsList/, ImageList/ (Windows paths), Groundtruth/TrainTestLabels/."""
    (tmp_path / "ConceptsList").mkdir()
    (tmp_path / "ConceptsList" / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    (tmp_path / "ImageList").mkdir()
    (tmp_path / "ImageList" / "TrainImagelist.txt").write_text(
        "actor\\0001_2124494179.jpg\r\nC:\\ImageData\\Flickr\\beach\\0002_1.jpg\r\nanimal\\0003_7.jpg\r\n")
    (tmp_path / "ImageList" / "TestImagelist.txt").write_text("actor\\0009_5.jpg\n")
    labels = tmp_path / "Groundtruth" / "TrainTestLabels"
    labels.mkdir(parents=True)
    train = {"airport": "1 0 0", "animal": "0 0 1", "beach": "1 1 0"}
    for concept in CONCEPTS:
        (labels / f"Labels_{concept}_Train.txt").write_text("\n".join(train[concept].split()) + "\n")
        (labels / f"Labels_{concept}_Test.txt").write_text("0\n")
    for name in ("actor/0001_2124494179.jpg", "beach/0002_1.jpg", "animal/0003_7.jpg"):
        make_image(tmp_path / "Flickr" / name)
    return tmp_path


def test_nuswide_reads_official_lists_and_label_files(nuswide_root):
    dataset = build_dataset("nuswide", nuswide_root, "train")
    assert dataset.class_names == CONCEPTS
    assert [p.relative_to(nuswide_root).as_posix() for p in dataset.image_paths] == [
        "Flickr/actor/0001_2124494179.jpg", "Flickr/beach/0002_1.jpg", "Flickr/animal/0003_7.jpg"]
    np.testing.assert_array_equal(dataset.labels, [[1, -1, 1], [-1, -1, 1], [-1, 1, -1]])
    assert dataset[2][0].mode == "RGB"
    test = build_dataset("nuswide", nuswide_root, "test")
    assert len(test) == 1 and (test.labels == -1).all()


def test_nuswide_accepts_the_flat_taidpt_layout(nuswide_root):
    (nuswide_root / "ConceptsList" / "Concepts81.txt").rename(nuswide_root / "Concepts81.txt")
    (nuswide_root / "Groundtruth" / "TrainTestLabels").rename(nuswide_root / "TrainTestLabels")
    assert build_dataset("nuswide", nuswide_root, "train").labels.shape == (3, 3)


def test_nuswide_label_file_of_wrong_length_is_named(nuswide_root):
    path = nuswide_root / "Groundtruth" / "TrainTestLabels" / "Labels_animal_Train.txt"
    path.write_text("0\n1\n")
    with pytest.raises(DatasetError, match=r"Labels_animal_Train\.txt: 2 labels for 3 images"):
        build_dataset("nuswide", nuswide_root, "train")


def test_nuswide_missing_pieces_are_named(nuswide_root):
    (nuswide_root / "ImageList" / "TestImagelist.txt").unlink()
    with pytest.raises(SplitNotFoundError, match="TestImagelist.txt not found"):
        build_dataset("nuswide", nuswide_root, "test")
    (nuswide_root / "Groundtruth" / "TrainTestLabels" / "Labels_beach_Train.txt").unlink()
    with pytest.raises(DatasetError, match=r"Labels_beach_Train\.txt"):
        build_dataset("nuswide", nuswide_root, "train")


VG_NAMES = [f"object{i}" for i in range(200)]


@pytest.fixture
def vg_root(tmp_path, make_image) -> Path:
    """SSGRL/HCP-MLR-PL files: *_list_500.txt, vg_category_200_labels_index.json; images in VG_100K(_2)."""
    (tmp_path / "train_list_500.txt").write_text("2360596.jpg\n107971.jpg\n422.jpg\n")
    (tmp_path / "test_list_500.txt").write_text("2315571.jpg\n")
    index = {"2360596.jpg": [0, 17, 199], "107971.jpg": [5], "422.jpg": [], "2315571.jpg": [3, 3]}
    (tmp_path / "vg_category_200_labels_index.json").write_text(json.dumps(index))
    (tmp_path / "classes.txt").write_text("\n".join(VG_NAMES) + "\n")
    make_image(tmp_path / "VG_100K" / "2360596.jpg")
    make_image(tmp_path / "VG_100K" / "422.jpg")
    make_image(tmp_path / "VG_100K_2" / "107971.jpg")
    return tmp_path


def test_vg200_reads_lists_and_label_index(vg_root):
    dataset = build_dataset("vg200", vg_root, "train")
    assert dataset.class_names == VG_NAMES and dataset.labels.shape == (3, 200)
    assert [np.flatnonzero(row == 1).tolist() for row in dataset.labels] == [[0, 17, 199], [5], []]
    assert set(np.unique(dataset.labels)) == {-1, 1}
    assert [p.relative_to(vg_root).as_posix() for p in dataset.image_paths] == [
        "VG_100K/2360596.jpg", "VG_100K_2/107971.jpg", "VG_100K/422.jpg"]
    assert np.flatnonzero(build_dataset("vg200", vg_root, "test").labels[0] == 1).tolist() == [3]


def test_vg200_requires_class_names(vg_root, tmp_path):
    (vg_root / "classes.txt").rename(tmp_path / "names.txt")
    with pytest.raises(DatasetError, match="category names are not published"):
        build_dataset("vg200", vg_root, "train")
    assert build_dataset("vg200", vg_root, "train", classes=str(tmp_path / "names.txt")).num_classes == 200


def test_vg200_bad_index_and_unlisted_image_are_named(vg_root):
    path = vg_root / "vg_category_200_labels_index.json"
    path.write_text(json.dumps({"2360596.jpg": [0, 200], "107971.jpg": [], "422.jpg": []}))
    with pytest.raises(DatasetError, match=r"image 2360596\.jpg has class indices \[0, 200\]"):
        build_dataset("vg200", vg_root, "train")
    path.write_text(json.dumps({"2360596.jpg": [0]}))
    with pytest.raises(DatasetError, match=r"no labels for image 107971\.jpg"):
        build_dataset("vg200", vg_root, "train")
