"""Datasets for multi-label recognition with partial labels, behind one registry.

``build_dataset(name, root, split, **options)`` returns a :class:`MultiLabelDataset`: image
paths, class names and an int8 label matrix with 1 positive, -1 negative, 0 unknown.
``make_partial_labels`` applies the community's partial-label protocol, ``split_validation``
carves a validation split from training data, ``load_splits`` does both for a run's
:class:`DataConfig`, ``verify_splits`` decodes every file of a dataset, split by split.

The names below are imported on first use (PEP 562), so that ``promptmlr --help``, which imports
``promptmlr.cli``, does not pay for torch and every loader.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetError": "textfiles",
    "SplitNotFoundError": "textfiles",
    "ImageLoadError": "images",
    "load_image": "images",
    "MultiLabelDataset": "dataset",
    "make_partial_labels": "labels",
    "mask_label_file": "labels",
    "mask_sha256": "labels",
    "read_label_matrix": "labels",
    "write_label_matrix": "labels",
    "build_dataset": "registry",
    "get_dataset_spec": "registry",
    "DATASETS": "registry",
    "list_datasets": "registry",
    "register_dataset": "registry",
    "split_validation": "split",
    "verify_dataset": "verify",
    "verify_splits": "verify",
    "DataConfig": "protocol",
    "Splits": "protocol",
    "load_splits": "protocol",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'promptmlr.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"promptmlr.data.{_EXPORTS[name]}"), name)
