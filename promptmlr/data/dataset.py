"""The one dataset type every loader returns: image paths, class names and a 1/-1/0 label matrix.

Loaders only *describe* a dataset (they read list and label files, never pixels), so building one
is fast and cheap to copy; pixels are read lazily in ``__getitem__`` through
:func:`promptmlr.data.images.load_image`. Masking, validation splits and transforms make new views
with :meth:`with_labels`, :meth:`subset` and :meth:`with_transform`; nothing is changed in place.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from promptmlr.data.images import load_image
from promptmlr.data.labels import NEGATIVE, POSITIVE, as_label_matrix
from promptmlr.data.textfiles import DatasetError


class MultiLabelDataset(Dataset):
    """Images with a label vector over ``C`` classes: 1 positive, -1 negative, 0 unknown.

    ``dataset[i]`` is ``(image, labels, i)``: ``image`` is ``transform(PIL RGB image)`` (the PIL
    image itself when ``transform`` is None, for inspection; a DataLoader needs a transform that
    returns tensors), ``labels`` a float32 tensor ``[C]``, and ``i`` the row index, which lets a
    training loop look up or update per-image state (e.g. recovered labels) without a second map.
    """

    def __init__(self, name: str, split: str, class_names: Sequence[str], image_paths: Sequence[str | Path],
                 labels: np.ndarray, transform: Callable[[Any], Any] | None = None):
        self.name = name
        self.split = split
        self.class_names = [str(c) for c in class_names]
        self.image_paths = [Path(p) for p in image_paths]
        self.labels = as_label_matrix(labels, where=f"{name}/{split} labels")
        self.transform = transform
        self.draft_size: int | None = None  # see with_transform
        self.damaged = "skip"
        if len(set(self.class_names)) != len(self.class_names):
            repeated = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
            raise DatasetError(f"{name}/{split}: class names repeat: {', '.join(repeated)}")
        if self.labels.shape != (len(self.image_paths), len(self.class_names)):
            raise DatasetError(f"{name}/{split}: label matrix is {self.labels.shape[0]}x{self.labels.shape[1]}, "
                               f"but there are {len(self.image_paths)} images and {len(self.class_names)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor, int]:
        image = load_image(self.image_paths[index], self.draft_size, self.damaged)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(self.labels[index].astype(np.float32)), index

    def __repr__(self) -> str:
        return (f"MultiLabelDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes})")

    def with_labels(self, labels: np.ndarray) -> "MultiLabelDataset":
        """The same images with another label matrix of the same shape (e.g. a partial-label mask)."""
        labels = as_label_matrix(labels, where=f"{self.name}/{self.split} new labels")
        if labels.shape != self.labels.shape:
            raise DatasetError(f"{self.name}/{self.split}: new labels are {labels.shape[0]}x{labels.shape[1]}, "
                               f"the dataset is {self.labels.shape[0]}x{self.labels.shape[1]}")
        return self._replace(labels=labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "MultiLabelDataset":
        """The rows ``indices`` (in that order) as a new dataset; row ``j`` of it is ``indices[j]`` here."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise DatasetError(f"{self.name}/{self.split}: subset indices must be in [0, {len(self)}), "
                               f"got values from {rows.min()} to {rows.max()}")
        return self._replace(image_paths=[self.image_paths[i] for i in rows.tolist()],
                             labels=self.labels[rows])

    def with_transform(self, transform: Callable[[Any], Any] | None, draft_size: int | None = None,
                       damaged: str = "skip") -> "MultiLabelDataset":
        """The same images and labels, read through another transform (train vs. eval); large JPEGs
        are decoded at reduced size when ``draft_size`` (the side resized to) is given, and damaged
        JPEG scans are ``skip``-ped, ``warn``-ed about or an ``error`` (see :func:`load_image`)."""
        return self._replace(transform=transform, draft_size=draft_size, damaged=damaged)

    def _replace(self, **changes: Any) -> "MultiLabelDataset":
        clone = copy.copy(self)
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone


@dataclass
class Duplicate:
    """An image listed in several rows of one split: which rows, and the classes positive in one
    row and negative in another (empty when the rows do not contradict each other)."""

    path: Path
    rows: list[int]
    conflicts: list[str]
    same_labels: bool

    def describe(self) -> str:
        if self.conflicts:
            labels = f"{', '.join(self.conflicts)} positive in one, negative in another"
        else:
            labels = "same labels" if self.same_labels else "different labels"
        return f"{self.path}: {len(self.rows)} rows, {labels}"


def find_duplicates(dataset: MultiLabelDataset) -> list[Duplicate]:
    """The images of ``dataset`` listed more than once, in the order of their first row.

    Paths are compared after making them absolute and normal (``a/./x.jpg`` is ``a/x.jpg``) without
    touching the disk, so this costs no file system call; two names of one file through a symbolic
    link are not found."""
    keys = list(map(os.path.abspath, map(os.fspath, dataset.image_paths)))
    if len(set(keys)) == len(keys):  # the usual case, at the cost of one set (COCO: 0.1 s)
        return []
    rows_of: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        rows_of.setdefault(key, []).append(row)
    duplicates = []
    for rows in rows_of.values():
        if len(rows) > 1:
            labels = dataset.labels[rows]
            clash = (labels == POSITIVE).any(axis=0) & (labels == NEGATIVE).any(axis=0)
            duplicates.append(Duplicate(dataset.image_paths[rows[0]], rows,
                                        [dataset.class_names[c] for c in np.flatnonzero(clash)],
                                        bool((labels == labels[0]).all())))
    return duplicates


def duplicates_summary(duplicates: list[Duplicate], examples: int = 2) -> str:
    """One line: how many images repeat, how many contradict themselves, the first few."""
    conflicting = [d for d in duplicates if d.conflicts]
    shown = (conflicting or duplicates)[:examples]
    return (f"{len(duplicates)} image(s) listed more than once, {len(conflicting)} with conflicting labels "
            f"(e.g. {'; '.join(d.describe() for d in shown)})")
