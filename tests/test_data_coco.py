"""MS-COCO 2014 on a tiny instances file in the official format (80 categories with the official ids)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from promptmlr.data import DatasetError, SplitNotFoundError, build_dataset

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush"]
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
PERSON, DOG, TOOTHBRUSH = 1, 18, 90


def annotation(ann_id: int, image_id: int, category_id: int, crowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": crowd,
            "area": 100.0, "bbox": [1, 1, 10, 10], "segmentation": [[1, 1, 11, 1, 11, 11]]}


@pytest.fixture
def coco_root(tmp_path, make_image) -> Path:
    categories = [{"id": i, "name": n, "supercategory": "x"} for i, n in zip(COCO_IDS, COCO_NAMES)]
    random.Random(0).shuffle(categories)  # the file's order must not matter: classes go by category id
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 24, "width": 32}
              for i in (34, 9, 25, 30)]
    annotations = [annotation(1, 9, PERSON), annotation(2, 9, DOG), annotation(3, 34, TOOTHBRUSH),
                   annotation(4, 25, PERSON, crowd=1), annotation(5, 34, PERSON), annotation(6, 9, DOG)]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}))
    for image in images:
        make_image(tmp_path / "train2014" / image["file_name"])
    return tmp_path


def positives(dataset, row: int) -> set[str]:
    return {dataset.class_names[c] for c in np.flatnonzero(dataset.labels[row] == 1)}


def test_all_images_in_file_order_with_80_classes_by_category_id(coco_root):
    dataset = build_dataset("coco2014", coco_root, "train")
    assert dataset.class_names == COCO_NAMES
    assert [p.name for p in dataset.image_paths] == [f"COCO_train2014_{i:012d}.jpg" for i in (34, 9, 25, 30)]
    assert dataset.image_paths[0].parent == coco_root / "train2014"
    assert [positives(dataset, row) for row in range(4)] == [
        {"person", "toothbrush"}, {"person", "dog"}, {"person"}, set()]
    assert (dataset.labels[3] == -1).all()  # unannotated image: all negative (HCP)
    assert set(np.unique(dataset.labels)) == {-1, 1}
    assert dataset[0][0].size == (32, 24)


def test_crowd_annotations_count_as_positive(coco_root):
    dataset = build_dataset("coco2014", coco_root, "train")
    assert dataset.labels[2, COCO_NAMES.index("person")] == 1  # image 25 has only a crowd 'person' region


def test_annotated_list_follows_dualcoop_order(coco_root):
    dataset = build_dataset("coco2014", coco_root, "train", image_list="annotated")
    assert [int(p.stem[-12:]) for p in dataset.image_paths] == [9, 34, 25]  # order of first annotation
    assert positives(dataset, 0) == {"person", "dog"}


def test_missing_split_and_bad_option(coco_root):
    with pytest.raises(SplitNotFoundError, match="instances_val2014.json not found"):
        build_dataset("coco2014", coco_root, "val")
    with pytest.raises(DatasetError, match="all, annotated"):
        build_dataset("coco2014", coco_root, "train", image_list="some")


def test_annotation_with_unlisted_category_is_named(coco_root):
    path = coco_root / "annotations" / "instances_train2014.json"
    content = json.loads(path.read_text())
    content["annotations"].append(annotation(7, 9, 12))  # 12 is not a COCO category id
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="annotation 7 refers to category 12"):
        build_dataset("coco2014", coco_root, "train")
