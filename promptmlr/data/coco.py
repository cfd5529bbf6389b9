"""MS-COCO 2014 through pycocotools (Lin et al., ECCV 2014): 80 classes in category-id order.

Layout: ``annotations/instances_{train,val}2014.json`` and the images in ``train2014/`` and
``val2014/``. The community trains on train2014 and reports on val2014, so ``split="val"`` is the
test set of every MLR-PL paper.

* **Classes**: the 80 categories sorted by category id (the standard order), named as in the file
  (``motorcycle``, ``tv``, ...).
* **Positives**: a class is positive when the image has *any* instance annotation of it, crowd
  (``iscrowd=1``) annotations included, and negative otherwise. Both anchors do this: HCP-MLR-PL
  (``datasets/coco2014.py``) and DualCoOp (``dataloaders/coco_detection.py``) call
  ``coco.getAnnIds(imgIds=...)`` without an ``iscrowd`` filter. A crowd region is a group of real
  instances, so the class is present.
* **Image list** (``image_list``): ``"all"`` (default) is every image of the file in file order, as
  HCP-MLR-PL (``list(coco.imgs.keys())``); images without annotations are all-negative.
  ``"annotated"`` keeps only images with at least one annotation, in the order of
  ``list(coco.imgToAnns.keys())`` exactly as DualCoOp, so DualCoOp-style masks line up row for row.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.labels import NEGATIVE, POSITIVE
from promptmlr.data.registry import register_dataset
from promptmlr.data.textfiles import DatasetError, SplitNotFoundError
from promptmlr.errors import check_choice

COCO_SPLITS = ("train", "val")
IMAGE_LISTS = ("all", "annotated")


@register_dataset("coco2014", splits=COCO_SPLITS)
def build_coco2014(root: Path, split: str, image_list: str = "all") -> MultiLabelDataset:
    """MS-COCO 2014, 80 classes (pycocotools instances JSON; crowd annotations count as positive)."""
    check_choice("image_list", image_list, IMAGE_LISTS, DatasetError)
    path = root / "annotations" / f"instances_{split}2014.json"
    coco = load_coco(path)
    if not coco.cats:
        raise DatasetError(f"{path}: no 'categories'; an instances file lists the classes there")
    category_ids = sorted(coco.cats)
    column_of = {category_id: column for column, category_id in enumerate(category_ids)}
    image_ids = list(coco.imgs) if image_list == "all" else list(coco.imgToAnns)
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    labels = np.full((len(image_ids), len(category_ids)), NEGATIVE, dtype=np.int8)
    for annotation in coco.dataset.get("annotations", []):
        category_id, image_id = annotation.get("category_id"), annotation.get("image_id")
        if category_id not in column_of or image_id not in coco.imgs:
            raise DatasetError(f"{path}: annotation {annotation.get('id')} refers to category {category_id} / "
                               f"image {image_id}, which the file's 'categories' / 'images' do not list")
        labels[row_of[image_id], column_of[category_id]] = POSITIVE
    class_names = [entry_text(path, "categories", category_id, coco.cats[category_id], "name")
                   for category_id in category_ids]
    image_dir = root / f"{split}2014"
    paths = [image_dir / entry_text(path, "images", image_id, coco.imgs[image_id], "file_name")
             for image_id in image_ids]
    return MultiLabelDataset("coco2014", split, class_names, paths, labels)


def entry_text(path: Path, section: str, entry_id: object, entry: dict, key: str) -> str:
    """``entry[key]``, a non-empty string, from an entry of ``images`` or ``categories``; a file that
    lacks it (a hand-made or converted COCO file) is named with the entry's id."""
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{path}: the {section!r} entry with id {entry_id} has no {key!r} (got {value!r}); "
                           "every entry needs one, as in the official instances files")
    return value


def load_coco(path: Path):
    """pycocotools' index of one instances file, without its progress prints on stdout."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise SplitNotFoundError(f"coco2014: annotation file {path} not found (unzip "
                                 "annotations_trainval2014.zip into the data root)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        raise DatasetError(f"{path}: not a COCO instances file ({type(error).__name__}: {error})") from None
