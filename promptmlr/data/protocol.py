"""The MLR-PL protocol of one run: which dataset and splits, which labels stay known, which
training images are held out for model selection.

``load_splits`` goes dataset -> partial-label mask (the community's, bit-exact; its SHA-256 goes
next to every result) -> validation split carved from the masked training data -> test split.
:class:`DataConfig` is the ``data:`` section of a run's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.labels import MASK_SCHEMES, check_known, make_partial_labels, mask_sha256
from promptmlr.data.registry import build_dataset
from promptmlr.data.sandbox import default_synthetic_root
from promptmlr.data.split import split_validation
from promptmlr.data.textfiles import DatasetError
from promptmlr.errors import ConfigError, check_choice, check_number


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"  # None: no test split
    options: dict[str, Any] = field(default_factory=dict)  # loader options, e.g. {difficult: ignore}
    known: float = 1.0  # proportion of training labels kept (the rest set to unknown)
    mask_seed: int = 0
    mask_scheme: str = "hcp"  # hcp (SST/SARB/HCP-MLR-PL files) or dualcoop (torch.rand)
    val_fraction: float = 0.1  # carved from the training split for model selection
    val_seed: int = 0

    def __post_init__(self) -> None:
        try:
            check_known(self.known)
        except DatasetError as error:
            raise ConfigError(f"known: {error}") from None
        check_choice("mask_scheme", self.mask_scheme, MASK_SCHEMES)
        check_number("mask_seed", self.mask_seed, minimum=0, maximum=2**32 - 1)
        check_number("val_seed", self.val_seed, minimum=0, maximum=2**32 - 1)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1) (0: no validation split), got {self.val_fraction}")


@dataclass
class Splits:
    """The data of one run: partially labelled training and validation parts, and a test split."""

    train: MultiLabelDataset
    val: MultiLabelDataset | None
    test: MultiLabelDataset | None
    full_train_labels: np.ndarray | None = None  # the unmasked labels, to score recovered labels


def dataset_root(config: DataConfig) -> Path:
    """Where the dataset's files are; the synthetic world has a default folder of its own."""
    if config.root is None:
        if config.dataset == "synthetic":
            return default_synthetic_root()
        raise ConfigError(f"dataset {config.dataset} needs --data-root (where its files are)")
    return Path(config.root)


def load_split(config: DataConfig, split: str) -> MultiLabelDataset:
    """One split of the configured dataset, with its labels as they are (no mask)."""
    return build_dataset(config.dataset, dataset_root(config), split, **config.options)


def check_images_exist(splits: Splits) -> None:
    """Every image of every split is there, checked before the first encoder pass: a test image
    missing is found in a second, not after the training features were cached."""
    datasets = [dataset for dataset in (splits.train, splits.val, splits.test) if dataset is not None]
    missing = [path for dataset in datasets for path in dataset.image_paths if not Path(path).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image file(s) of {datasets[0].name} are missing, e.g. {missing[0]}; "
                           f"restore them, or list them with promptmlr data verify")


def load_splits(config: DataConfig) -> tuple[Splits, str]:
    """Training data masked by the partial-label protocol, a validation split carved from it, the
    test split, and the SHA-256 of the mask."""
    train = load_split(config, config.train_split)
    if len(train) == 0:
        raise ConfigError(f"{config.dataset}/{config.train_split} has no images under {config.root}")
    partial = make_partial_labels(train.labels, config.known, config.mask_seed, config.mask_scheme)
    masked = train.with_labels(partial)
    if config.val_fraction > 0:
        train_rows, val_rows = split_validation(partial, config.val_fraction, config.val_seed)
    else:
        train_rows, val_rows = np.arange(len(train)), None
    test = load_split(config, config.test_split) if config.test_split else None
    splits = Splits(train=masked.subset(train_rows), val=masked.subset(val_rows) if val_rows is not None else None,
                    test=test, full_train_labels=train.labels[train_rows])
    return splits, mask_sha256(partial)
