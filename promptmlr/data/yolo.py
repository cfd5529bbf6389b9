"""YOLO-format detection data in the ultralytics layout, read as multi-label classification.

Many users already hold their data this way::

    <root>/data.yaml              names: {0: person, 1: bicycle, ...} (or a list), train: images/train, ...
    <root>/images/<split>/*.jpg
    <root>/labels/<split>/*.txt   one object per line: ``class cx cy w h`` (or ``class x1 y1 ...`` polygons)

An image is positive for every class with at least one object in its label file and negative for
all others; an image without a label file (or with an empty one) is all-negative, as ultralytics
treats it as background. Following ultralytics, an image's label file is its path with the last
``images`` folder replaced by ``labels`` and the suffix by ``.txt``; ``path:`` in data.yaml is the
dataset root (relative to the yaml file's folder; absent means that folder). The splits are the
``train``/``val``/``test`` keys of data.yaml that name a folder. ``root`` may be the folder that
holds ``data.yaml`` or the yaml file itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.labels import NEGATIVE, POSITIVE
from promptmlr.data.registry import register_dataset
from promptmlr.data.textfiles import DatasetError, SplitNotFoundError, read_lines
from promptmlr.errors import one_line
from promptmlr.settings import load_yaml

YOLO_SPLIT_KEYS = ("train", "val", "test")
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")


def read_data_yaml(root: Path) -> tuple[Path, dict]:
    """``(yaml path, parsed content)`` for a root folder or a yaml file."""
    path = root if root.is_file() else root / "data.yaml"
    if not path.is_file():
        raise DatasetError(f"yolo: {path} not found; point the data root at the folder holding data.yaml "
                           "or at the yaml file itself")
    try:
        content = load_yaml(path.read_text(encoding="utf-8"), strict=False)  # as Ultralytics reads it
    except yaml.YAMLError as error:
        raise DatasetError(f"{path}: not valid YAML ({one_line(error)})") from None
    if not isinstance(content, dict) or "names" not in content:
        raise DatasetError(f"{path}: needs a 'names' field (a list of class names or a {{id: name}} mapping)")
    return path, content


def yolo_splits(root: Path) -> tuple[str, ...]:
    """The split keys of data.yaml that name an image folder."""
    return splits_in(read_data_yaml(root)[1])


def splits_in(content: dict) -> tuple[str, ...]:
    return tuple(key for key in YOLO_SPLIT_KEYS if isinstance(content.get(key), str))


def class_names_from_yaml(path: Path, names: object) -> list[str]:
    """``names`` as a list in class-id order; a mapping must have ids 0..C-1."""
    if not names and isinstance(names, (list, dict)):
        raise DatasetError(f"{path}: 'names' is empty; list the class names in class-id order")
    if isinstance(names, list):
        return [str(name) for name in names]
    if isinstance(names, dict) and all(isinstance(key, int) for key in names):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: 'names' ids must be 0..{len(names) - 1} without gaps, got {sorted(names)}")
        return [str(names[key]) for key in range(len(names))]
    raise DatasetError(f"{path}: 'names' must be a list or a mapping of integer ids to names")


@register_dataset("yolo", splits=yolo_splits)
def build_yolo(root: Path, split: str) -> MultiLabelDataset:
    """YOLO / ultralytics detection layout (data.yaml names; positive = class has a box)."""
    yaml_path, content = read_data_yaml(root)
    class_names = class_names_from_yaml(yaml_path, content["names"])
    if isinstance(content.get(split), list):
        raise DatasetError(f"{yaml_path}: {split}: a list of folders; promptmlr reads one image folder per "
                           "split: give one, or make one folder of links to them")
    if split not in splits_in(content):
        raise SplitNotFoundError(f"yolo: {yaml_path} has no image folder for split {split!r}; "
                                 f"its splits: {', '.join(splits_in(content)) or 'none'}")
    base = yaml_path.parent / str(content.get("path") or ".")
    image_dir = base / content[split]
    if not image_dir.is_dir():
        raise DatasetError(f"{yaml_path}: {split}: {content[split]!r} -> {image_dir} is not a folder")
    # a link to a missing file stays in, to be reported as missing before training, not dropped unseen
    images = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                    and (p.is_file() or (p.is_symlink() and not p.exists())))
    labels = np.full((len(images), len(class_names)), NEGATIVE, dtype=np.int8)
    for row, image in enumerate(images):
        label_file = label_path_for(image)
        if label_file.is_file():
            labels[row, read_box_classes(label_file, len(class_names))] = POSITIVE
        elif label_file.exists():
            raise DatasetError(f"{label_file}: not a regular file (a folder?); the labels of {image.name} must be "
                               "a text file there (or nothing, for an image without objects)")
    return MultiLabelDataset("yolo", split, class_names, images, labels)


def label_path_for(image: Path) -> Path:
    """ultralytics' rule: ``.../images/x/y.jpg`` -> ``.../labels/x/y.txt`` (last ``images`` folder)."""
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        return image.with_suffix(".txt")
    position = len(parts) - 2 - parts[-2::-1].index("images")
    parts[position] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_box_classes(path: Path, num_classes: int) -> list[int]:
    """Class ids of the objects in one label file; ids outside the names list are errors. An id is
    read as a number, as ultralytics does, so ``3.0`` (written by some converters) is 3."""
    classes = []
    for number, line in read_lines(path, "YOLO label file"):
        token = line.split()[0]
        try:
            value = float(token)
        except ValueError:
            value = math.nan
        if not (value.is_integer() and 0 <= value < num_classes):
            raise DatasetError(f"{path}, line {number}: class {token!r} is not an id in 0..{num_classes - 1} "
                               "(data.yaml 'names')")
        classes.append(int(value))
    return classes
