"""The MLR-PL protocol of one run: which dataset and splits, which labels stay known, which
training images are held out for model selection.

``load_splits`` goes dataset -> partial-label mask (the community's, bit-exact; its SHA-256 goes
next to every result) -> validation split carved from the masked training data -> test split.
:class:`DataConfig` is the ``data:`` section of a run's configuration.

What would end a run late, or silently give a wrong number, is checked here, before any feature
is computed: a validation or test split without a known positive (its mAP is undefined), a
training split without a known positive. What may be meant is warned about in one line: an image
listed more than once in a split, test images that are also training images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptmlr.data.dataset import MultiLabelDataset, duplicates_summary, find_duplicates
from promptmlr.data.labels import MASK_SCHEMES, POSITIVE, check_known, make_partial_labels, mask_sha256
from promptmlr.data.registry import build_dataset
from promptmlr.data.split import split_validation
from promptmlr.data.synthetic import default_synthetic_root
from promptmlr.data.textfiles import DatasetError, SplitNotFoundError, warn
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
                                          "promptmlr tune --help, dataset options); labels: FILE replaces "
                                          "the training split's file only", factory=dict)
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


def split_options(config: DataConfig, split: str) -> dict[str, Any]:
    """The loader options for ``split``. ``labels`` (jsonl/csv: a file read instead of
    ``<root>/<split>.<ext>``) is the file of ``config.train_split`` only: applied to every split it
    would make the test split the training images, and the test mAP a training score."""
    options = dict(config.options)
    if split != config.train_split:
        options.pop("labels", None)
    return options


def load_split(config: DataConfig, split: str) -> MultiLabelDataset:
    """One split of the configured dataset, with its labels as they are (no mask)."""
    return build_dataset(config.dataset, dataset_root(config), split, **split_options(config, split))


def check_images_exist(splits: Splits) -> None:
    """Every image of every split is there, checked before the first encoder pass: a test image
    missing is found in a second, not after the training features were cached."""
    datasets = [dataset for dataset in (splits.train, splits.val, splits.test) if dataset is not None]
    missing = [path for dataset in datasets for path in dataset.image_paths if not Path(path).is_file()]
    if missing:
        first = Path(missing[0])
        what = ("it is a directory" if first.is_dir() else "it is not a regular file" if os.path.lexists(first)
                else "it does not exist")
        raise DatasetError(f"{len(missing)} image file(s) of {datasets[0].name} are missing, e.g. {first} ({what}); "
                           "restore them, or list them all with promptmlr data verify")


@dataclass
class MaskedTraining:
    """The whole training split under the run's partial-label mask, and which of its rows train and
    which are held out for validation (rows of ``dataset``)."""

    dataset: MultiLabelDataset
    full_labels: np.ndarray  # the labels before the mask
    train_rows: np.ndarray
    val_rows: np.ndarray | None
    mask_sha256: str


def masked_training_split(config: DataConfig) -> MaskedTraining:
    """The training split read once, masked by the partial-label protocol, and the validation rows
    carved from it: what training and ``promptmlr complete`` both start from."""
    train = load_split(config, config.train_split)
    if len(train) == 0:
        raise ConfigError(f"{config.dataset}/{config.train_split} has no images under {config.root}")
    partial = make_partial_labels(train.labels, config.known, config.mask_seed, config.mask_scheme)
    if not (partial == POSITIVE).any():  # no class could be learned, and no mAP computed on validation
        raise DatasetError(f"{config.dataset}/{config.train_split}: no known positive label to learn from at "
                           f"--known {config.known} ({int((train.labels == POSITIVE).sum())} positive(s) before the "
                           "mask); raise --known, or check the label files (1 marks a positive)")
    if config.val_fraction > 0:
        train_rows, val_rows = split_validation(partial, config.val_fraction, config.val_seed)
    else:
        train_rows, val_rows = np.arange(len(train)), None
    return MaskedTraining(train.with_labels(partial), train.labels, train_rows, val_rows, mask_sha256(partial))


def load_splits(config: DataConfig) -> tuple[Splits, str]:
    """Training data masked by the partial-label protocol, a validation split carved from it, the
    test split, and the SHA-256 of the mask."""
    training = masked_training_split(config)
    test = load_test_split(config) if config.test_split else None
    splits = training_splits(training, test)
    check_scorable(config, splits, training.dataset.labels)
    warn_about_repeats(training.dataset.with_labels(training.full_labels), test)
    return splits, training.mask_sha256


def training_splits(training: MaskedTraining, test: MultiLabelDataset | None) -> Splits:
    """The training and validation parts of ``training``, and ``test``, as one run sees them."""
    masked = training.dataset
    val = masked.subset(training.val_rows) if training.val_rows is not None else None
    return Splits(train=masked.subset(training.train_rows), val=val, test=test,
                  full_train_labels=training.full_labels[training.train_rows])


def load_test_split(config: DataConfig) -> MultiLabelDataset:
    """The test split, read from its own file (never the training split's ``labels``)."""
    try:
        return load_split(config, config.test_split)
    except SplitNotFoundError as error:
        raise SplitNotFoundError(f"no test split {config.test_split!r} ({error}); add it, name another with "
                                 "--set data.test_split=NAME, or train without one: --set data.test_split=null"
                                 ) from None


def check_scorable(config: DataConfig, splits: Splits, partial: np.ndarray) -> None:
    """The validation and test splits each hold a known positive, so that their mAP, computed after
    every epoch, exists (classes without one are left out of the mean; none at all is undefined)."""
    if splits.val is not None and not (splits.val.labels == POSITIVE).any():
        raise DatasetError(
            f"the validation split ({len(splits.val)} of {len(partial)} training images, data.val_fraction="
            f"{config.val_fraction}) holds no known positive label at --known {config.known}, so its mAP cannot "
            f"be computed (the training split holds {int((partial == POSITIVE).sum())} known positive(s) in all); "
            "raise --known, or hold out more images: --set data.val_fraction=0.3")
    if splits.test is not None and not (splits.test.labels == POSITIVE).any():
        raise DatasetError(f"{config.dataset}/{config.test_split}: the test split holds no positive label, so its "
                           "mAP cannot be computed; fix its label file, or train without a test split: "
                           "--set data.test_split=null")


def warn_about_repeats(train: MultiLabelDataset, test: MultiLabelDataset | None) -> None:
    """One line for each split that lists an image twice, and one for test images that are training
    images too: the run goes on, as either may be meant (promptmlr data verify lists them all)."""
    for dataset, leak in ((train, ", and the copies of one may land in both training and validation"), (test, "")):
        duplicates = find_duplicates(dataset) if dataset is not None else []
        if duplicates:
            warn(f"{dataset.name}/{dataset.split}: {duplicates_summary(duplicates)}; each row counts as an "
                 f"image of its own{leak}; promptmlr data verify lists them all")
    if test is not None:
        in_train = {os.path.abspath(path) for path in train.image_paths}
        shared = [path for path in test.image_paths if os.path.abspath(path) in in_train]
        if shared:
            warn(f"{len(shared)} of the {len(test)} test images of {test.name} are also training images (e.g. "
                 f"{shared[0]}): the test mAP is partly measured on images trained on; use disjoint "
                 f"{train.split} and {test.split} files")
