"""Visual Genome VG-200 (Krishna et al., IJCV 2017) as the MLR-PL papers use it (SST, SARB, HST).

The benchmark files come from SSGRL (HCPLab-SYSU/SSGRL ``data/VG``) and HCP-MLR-PL::

    <root>/train_list_500.txt                      one image file name per line, e.g. ``2360596.jpg``
    <root>/test_list_500.txt
    <root>/vg_category_200_labels_index.json      {"2360596.jpg": [3, 17, ...], ...} class indices 0-199
    <root>/classes.txt                             the 200 class names, one per line, index order
    <root>/VG_100K/<name>.jpg, <root>/VG_100K_2/<name>.jpg   the Visual Genome images

``vg_category_200_labels_index.json`` is SSGRL's VG-500 index file with every index >= 200 dropped
(HCP-MLR-PL keeps the 200 most frequent categories). A listed index is positive, every other class
negative. The category *names* were never published with these files (HCPLab-SYSU/SSGRL issue
#12), so the loader needs them from the user: ``classes.txt`` in the root or ``classes=FILE``;
without names, CLIP prompts would be meaningless, so there is no fallback. Images are looked up
in ``VG_100K`` and, where present, ``VG_100K_2`` (the two halves of the official image release).
Splits: ``train`` and ``test``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.labels import NEGATIVE, POSITIVE
from promptmlr.data.registry import register_dataset
from promptmlr.data.textfiles import DatasetError, SplitNotFoundError, read_class_names, read_lines, require_file

VG_SPLITS = ("train", "test")
LABEL_INDEX_FILE = "vg_category_200_labels_index.json"
IMAGE_DIRS = ("VG_100K", "VG_100K_2")


@register_dataset("vg200", splits=VG_SPLITS)
def build_vg200(root: Path, split: str, classes: str | None = None) -> MultiLabelDataset:
    """Visual Genome VG-200 (SSGRL image lists + 200-category label index; names from classes.txt)."""
    names_path = Path(classes) if classes else root / "classes.txt"
    if not names_path.is_file():
        raise DatasetError(f"vg200: class-names file {names_path} not found. The VG-200 category names are not "
                           "published with the benchmark files; put the 200 names (index order, one per line) "
                           "in <root>/classes.txt or pass --classes FILE")
    class_names = read_class_names(names_path)
    list_path = root / f"{split}_list_500.txt"
    if not list_path.is_file():
        raise SplitNotFoundError(f"vg200: image list {list_path} not found")
    names = [line for _, line in read_lines(list_path, "VG image list")]
    index = read_label_index(root / LABEL_INDEX_FILE)
    labels = np.full((len(names), len(class_names)), NEGATIVE, dtype=np.int8)
    for row, name in enumerate(names):
        if name not in index:
            raise DatasetError(f"{root / LABEL_INDEX_FILE}: no labels for image {name} of {list_path.name}")
        columns = index[name]
        if not isinstance(columns, list) or any(isinstance(c, bool) or not isinstance(c, int)
                                                or not 0 <= c < len(class_names) for c in columns):
            raise DatasetError(f"{root / LABEL_INDEX_FILE}: image {name} has class indices {columns!r}; "
                               f"they must be a list of integers in [0, {len(class_names)}) for the "
                               f"{len(class_names)} names of {names_path}")
        labels[row, columns] = POSITIVE
    return MultiLabelDataset("vg200", split, class_names, locate_images(root, names), labels)


def read_label_index(path: Path) -> dict[str, list[int]]:
    """The ``{"<image>.jpg": [class indices]}`` file."""
    try:
        index = json.loads(require_file(path, "VG-200 label index").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(index, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping image names to class-index lists")
    return index


def locate_images(root: Path, names: list[str]) -> list[Path]:
    """Each image in ``VG_100K_2`` if it is there, else in ``VG_100K`` (where a missing one is reported)."""
    second = root / IMAGE_DIRS[1]
    in_second = set(os.listdir(second)) if second.is_dir() else set()
    return [root / (IMAGE_DIRS[1] if name in in_second else IMAGE_DIRS[0]) / name for name in names]
