"""A user's own data as JSONL or CSV: relative paths, missing_as, and errors that name the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from promptmlr.backbones.preprocess import PreprocessConfig, build_transform
from promptmlr.data import DatasetError, SplitNotFoundError, build_dataset

CLASSES = ["dog", "cat", "sofa"]


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def jsonl_root(tmp_path, make_image) -> Path:
    root = tmp_path / "mydata"
    (root).mkdir()
    (root / "classes.txt").write_text("dog\ncat\n\nsofa\n")
    make_image(root / "photos" / "1.jpg")
    make_image(tmp_path / "elsewhere" / "2.png")
    write_jsonl(root / "train.jsonl", [
        {"image": "photos/1.jpg", "positive": ["dog", "sofa"], "negative": ["cat"]},
        {"image": str(tmp_path / "elsewhere" / "2.png"), "positive": ["cat"]},
        "",
        {"image": "photos/1.jpg"},
    ])
    return root


def test_jsonl_unknown_by_default_and_paths_relative_to_the_file(jsonl_root, tmp_path):
    dataset = build_dataset("jsonl", jsonl_root, "train")
    assert dataset.class_names == CLASSES
    np.testing.assert_array_equal(dataset.labels, [[1, -1, 1], [0, 1, 0], [0, 0, 0]])
    assert dataset.image_paths == [jsonl_root / "photos" / "1.jpg", tmp_path / "elsewhere" / "2.png",
                                   jsonl_root / "photos" / "1.jpg"]
    assert dataset[1][0].size == (32, 24)


def test_jsonl_missing_as_negative(jsonl_root):
    dataset = build_dataset("jsonl", jsonl_root, "train", missing_as="negative")
    np.testing.assert_array_equal(dataset.labels, [[1, -1, 1], [-1, 1, -1], [-1, -1, -1]])


def test_jsonl_explicit_labels_and_classes_files(jsonl_root, tmp_path, make_image):
    make_image(tmp_path / "other" / "x.jpg")
    labels = write_jsonl(tmp_path / "other" / "list.jsonl", [{"image": "x.jpg", "negative": ["b"]}])
    (tmp_path / "names.txt").write_text("a\nb\n")
    dataset = build_dataset("jsonl", jsonl_root, "anything", labels=str(labels), classes=str(tmp_path / "names.txt"))
    assert dataset.image_paths == [tmp_path / "other" / "x.jpg"] and dataset.labels.tolist() == [[0, -1]]


@pytest.mark.parametrize("record, message", [
    ({"image": "a.jpg", "positive": ["horse"]}, r"line 1: class 'horse' in \"positive\" is not in the class list"),
    ({"image": "a.jpg", "positive": ["dog"], "negative": ["dog"]}, r"line 1: dog listed as both positive and negative"),
    ({"image": "a.jpg", "positives": ["dog"]}, r"line 1: unknown field\(s\) positives"),
    ({"image": "a.jpg", "positive": "dog"}, r"line 1: \"positive\" must be a list of class names"),
    ({"positive": ["dog"]}, r"line 1: expected an object with an \"image\" path"),
    ('{"image": "a.jpg",', r"line 1: not valid JSON"),
])
def test_jsonl_bad_lines_are_named(jsonl_root, record, message):
    path = write_jsonl(jsonl_root / "bad.jsonl", [record])
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset("jsonl", jsonl_root, "bad")
    assert str(path) in str(error.value)


def test_jsonl_missing_split_lists_the_split_files(jsonl_root):
    with pytest.raises(SplitNotFoundError, match=r"val\.jsonl; splits in .*: train \(a split is a file"):
        build_dataset("jsonl", jsonl_root, "val")


def test_jsonl_missing_or_repeating_class_file(jsonl_root):
    (jsonl_root / "classes.txt").write_text("dog\ncat\ndog\n")
    with pytest.raises(DatasetError, match=r"classes\.txt, line 3: class 'dog' repeats line 1"):
        build_dataset("jsonl", jsonl_root, "train")
    (jsonl_root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match=r"class-names file not found: .*classes\.txt"):
        build_dataset("jsonl", jsonl_root, "train")


@pytest.fixture
def csv_root(tmp_path, make_image) -> Path:
    make_image(tmp_path / "img" / "a.jpg")
    make_image(tmp_path / "img" / "b.jpg")
    (tmp_path / "train.csv").write_text("image,dog,cat,sofa\nimg/a.jpg,1,-1,0\n\nimg/b.jpg, 0 ,1,-1\n")
    return tmp_path


def test_csv_header_names_the_classes_and_values_are_kept(csv_root):
    dataset = build_dataset("csv", csv_root, "train")
    assert dataset.class_names == CLASSES
    assert dataset.image_paths == [csv_root / "img" / "a.jpg", csv_root / "img" / "b.jpg"]
    np.testing.assert_array_equal(dataset.labels, [[1, -1, 0], [0, 1, -1]])
    negative = build_dataset("csv", csv_root, "train", missing_as="negative")
    np.testing.assert_array_equal(negative.labels, [[1, -1, -1], [-1, 1, -1]])


@pytest.mark.parametrize("text, message", [
    ("image,dog,cat\na.jpg,1,-1\nb.jpg,1\n", r"line 3: 2 columns, the header has 3 \(image \+ 2 classes\)"),
    ("image,dog,cat\na.jpg,1,yes\n", r"line 2: value 'yes' in column 'cat'; class columns take 1 \(positive\)"),
    ("file,dog\na.jpg,1\n", r"line 1: the header must be image,<class1>"),
    ("image,dog,dog\na.jpg,1,1\n", r"line 1: class columns must have unique, non-empty names"),
    ("", r"empty; the first line must be the header"),
])
def test_csv_bad_rows_name_file_and_line(tmp_path, text, message):
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset("csv", tmp_path, "train")
    assert str(tmp_path / "train.csv") in str(error.value)


def test_a_user_can_train_on_jsonl_and_csv_data(jsonl_root, csv_root):
    transform = build_transform(PreprocessConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    for dataset in (build_dataset("jsonl", jsonl_root, "train", transform=transform),
                    build_dataset("csv", csv_root, "train", transform=transform)):
        images, labels, index = next(iter(DataLoader(dataset, batch_size=2)))
        assert images.shape == (2, 3, 32, 32) and labels.shape == (2, 3)
        assert labels.tolist() == dataset.labels[:2].tolist()


def test_a_labels_file_given_as_data_root_says_what_to_do(jsonl_root):
    with pytest.raises(DatasetError, match="is a file; give its folder as the data root, or the file as --labels"):
        build_dataset("jsonl", jsonl_root / "train.jsonl", "train")


def test_custom_reads_whichever_format_the_split_has(jsonl_root, csv_root):
    assert build_dataset("custom", jsonl_root, "train").name == "jsonl"
    assert build_dataset("custom", csv_root, "train").name == "csv"
    with pytest.raises(DatasetError, match="--classes applies to JSONL data"):
        build_dataset("custom", csv_root, "train", classes="classes.txt")
