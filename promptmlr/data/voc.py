"""PASCAL VOC 2007 in the VOCdevkit layout (Everingham et al., IJCV 2010).

Labels come from the official classification files ``ImageSets/Main/<class>_<split>.txt``
(``<id> 1|-1|0``, where 0 marks a class present only as 'difficult' objects). When those are
absent for a split, they are derived from ``Annotations/<id>.xml`` by the same rule: a class is
positive if it has a non-difficult object, 0 if it has only difficult ones, -1 otherwise. The two
sources agree wherever both exist.

``difficult`` decides what becomes of the 0s:

* ``"negative"`` (default): they count as negatives, as DualCoOp (``dataloaders/pascal_voc.py``)
  and HCP-MLR-PL (``datasets/voc2007.py``) do by skipping difficult objects; the published
  partial-label files are built this way and TaI-DPT (``datasets/voc2007_partial.py``) reads them,
  so results compare with all three.
* ``"ignore"``: they stay unknown (0), the official VOC evaluation rule.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.labels import NEGATIVE, POSITIVE, UNKNOWN
from promptmlr.data.registry import register_dataset
from promptmlr.data.textfiles import DatasetError, SplitNotFoundError, read_lines, require_file
from promptmlr.errors import check_choice

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
VOC_SPLITS = ("train", "val", "trainval", "test")
DIFFICULT_CHOICES = ("negative", "ignore")


def find_voc_year_dir(root: Path) -> Path:
    """Accept ``.../VOC2007``, ``.../VOCdevkit`` or the folder that holds ``VOCdevkit``."""
    candidates = (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007")
    for candidate in candidates:
        if (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise DatasetError(f"voc2007: no ImageSets/Main folder under {root}; expected the VOCdevkit layout "
                       f"(looked in {', '.join(str(c) for c in candidates)})")


@register_dataset("voc2007", splits=VOC_SPLITS)
def build_voc2007(root: Path, split: str, difficult: str = "negative") -> MultiLabelDataset:
    """PASCAL VOC 2007, 20 classes (VOCdevkit layout; per-class ImageSets files or Annotations XML)."""
    check_choice("difficult", difficult, DIFFICULT_CHOICES, DatasetError)
    year_dir = find_voc_year_dir(root)
    ids = read_split_ids(year_dir, split)
    main = year_dir / "ImageSets" / "Main"
    missing = [f"{name}_{split}.txt" for name in VOC_CLASSES if not (main / f"{name}_{split}.txt").is_file()]
    if not missing:
        labels = labels_from_class_files(main, split, ids)
    elif (year_dir / "Annotations").is_dir():
        labels = labels_from_annotations(year_dir / "Annotations", ids)
    else:
        raise DatasetError(f"voc2007/{split}: no labels; {main} lacks {', '.join(missing[:3])}"
                           f"{' ...' if len(missing) > 3 else ''} and there is no {year_dir / 'Annotations'} folder")
    if difficult == "negative":
        labels[labels == UNKNOWN] = NEGATIVE
    paths = [year_dir / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
    return MultiLabelDataset("voc2007", split, VOC_CLASSES, paths, labels)


def read_split_ids(year_dir: Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Main/<split>.txt`` in file order."""
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        present = [s for s in VOC_SPLITS if (path.parent / f"{s}.txt").is_file()]
        raise SplitNotFoundError(f"voc2007: split file {path} not found; this copy has splits: "
                                 f"{', '.join(present) or 'none'}")
    ids = [line.split()[0] for _, line in read_lines(path, "VOC split list")]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: image ids repeat")
    return ids


def labels_from_class_files(main: Path, split: str, ids: list[str]) -> np.ndarray:
    """Fill ``[N, 20]`` from the 20 ``<class>_<split>.txt`` files; every id needs one line in each."""
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int8)
    for column, name in enumerate(VOC_CLASSES):
        path = main / f"{name}_{split}.txt"
        seen = np.zeros(len(ids), dtype=bool)
        for number, line in read_lines(path, "VOC class file"):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
                raise DatasetError(f"{path}, line {number}: expected '<image id> 1|-1|0', got {line!r}")
            if fields[0] not in row_of:
                raise DatasetError(f"{path}, line {number}: image {fields[0]} is not in {split}.txt")
            row = row_of[fields[0]]
            labels[row, column] = int(fields[1])
            seen[row] = True
        if not seen.all():
            raise DatasetError(f"{path}: no line for image {ids[int(np.argmin(seen))]} "
                               f"({int((~seen).sum())} of {split}.txt's images missing)")
    return labels


def labels_from_annotations(annotations: Path, ids: list[str]) -> np.ndarray:
    """Fill ``[N, 20]`` from ``Annotations/<id>.xml``: 1 non-difficult object, 0 only difficult, -1 none."""
    labels = np.full((len(ids), len(VOC_CLASSES)), NEGATIVE, dtype=np.int8)
    column_of = {name: column for column, name in enumerate(VOC_CLASSES)}
    for row, image_id in enumerate(ids):
        path = annotations / f"{image_id}.xml"
        for name, is_difficult in read_annotation_objects(path):
            if name not in column_of:
                raise DatasetError(f"{path}: object class {name!r} is not a VOC class "
                                   f"({', '.join(VOC_CLASSES)})")
            column = column_of[name]
            if not is_difficult:
                labels[row, column] = POSITIVE
            elif labels[row, column] == NEGATIVE:
                labels[row, column] = UNKNOWN
    return labels


def read_annotation_objects(path: Path) -> list[tuple[str, bool]]:
    """``(class name, difficult)`` for every ``<object>`` of one VOC annotation file."""
    require_file(path, "VOC annotation file")
    try:
        tree = ElementTree.parse(path)
    except ElementTree.ParseError as error:
        raise DatasetError(f"{path}: not valid XML ({error})") from None
    objects = []
    for element in tree.getroot().iter("object"):
        name = (element.findtext("name") or "").strip().lower()
        difficult = (element.findtext("difficult") or "0").strip()
        if not name or difficult not in ("0", "1"):
            raise DatasetError(f"{path}: every <object> needs a <name> and <difficult> 0 or 1")
        objects.append((name, difficult == "1"))
    return objects
