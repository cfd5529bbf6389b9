"""The MLR-PL protocol of one run: which dataset and splits, which labels stay known, which
training images are held out for model selection.

``load_splits`` goes dataset -> partial-label mask (the community's, bit-exact; its SHA-256 goes
next to every result) -> validation split carved from the masked training data -> test split.
:class:`DataConfig` is the ``data:`` section of a run's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.labels import MASK_SCHEMES, check_known, make_partial_labels, mask_sha256
from promptmlr.data.registry import build_dataset
from promptmlr.data.split import split_validation
from promptmlr.data.synthetic import default_synthetic_root
from promptmlr.data.textfiles import DatasetError
from promptmlr.errors import ConfigError
from promptmlr.options import check_fields, option


@dataclass
class DataConfig:
    dataset: str = option("synthetic", "registered dataset name (promptmlr config --list shows them all)")
    root: str | None = option(None, "folder holding the dataset's files (--data-root); required, except for "
                                    "synthetic, which has a folder of its own")
    train_split: str = option("train", "split to train on (the validation split is carved from it)")
    test_split: str | None = option("test", "split to test on; null: no test split")
    options: dict[str, Any] = option(help="the dataset loader's options, e.g. {difficult: ignore} (see "
                                          "promptmlr tune --help, dataset options)", factory=dict)
    known: float = option(1.0, "proportion of training labels kept; the rest are set to unknown",
                          allowed="(0, 1]")
    mask_seed: int = option(0, "seed of the partial-label mask (which labels stay known)",
                            minimum=0, maximum=2**32 - 1)
    mask_scheme: str = option("hcp", "how the mask is drawn: hcp (the SST/SARB/HCP-MLR-PL files) or dualcoop "
                                     "(torch.rand)", choices=MASK_SCHEMES)
    val_fraction: float = option(0.1, "share of the training split held out for model selection; 0: no "
                                      "validation split", minimum=0, below=1,
                                 refusal="val_fraction must be in [0, 1) (0: no validation split), got {value}")
    val_seed: int = option(0, "seed of the validation split's draw", minimum=0, maximum=2**32 - 1)

    def __post_init__(self) -> None:
        try:
            check_known(self.known)
        except DatasetError as error:
            raise ConfigError(f"known: {error}") from None
        check_fields(self)


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
