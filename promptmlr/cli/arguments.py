"""The one way a command names a dataset: ``--dataset``, ``--data-root`` and the dataset options,
shared by ``tune``, ``eval``, ``zeroshot`` and ``data verify``, so an option means the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

# flag -> (keyword option of the loaders, choices or None, help)
DATASET_OPTIONS: dict[str, tuple[str, tuple[str, ...] | None, str]] = {
    "--difficult": ("difficult", ("negative", "ignore"),
                    "voc2007: classes present only as 'difficult' objects count as negative (default, as "
                    "DualCoOp/HCP) or stay unknown (official VOC rule)"),
    "--image-list": ("image_list", ("all", "annotated"),
                     "coco2014: every image (default, HCP-MLR-PL) or only annotated ones (DualCoOp)"),
    "--missing-as": ("missing_as", ("unknown", "negative"),
                     "jsonl/csv: classes an image does not mention are unknown (default) or negative"),
    "--classes": ("classes", None, "jsonl/vg200: class-names file, one per line (default <data-root>/classes.txt)"),
    "--labels": ("labels", None, "jsonl/csv: labels file read instead of <data-root>/<split>.jsonl|.csv, for "
                                 "one split: the training split in tune (the test split stays <data-root>/"
                                 "test.*), the split read in eval, zeroshot and data verify"),
}


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add ``--dataset``, ``--data-root`` and the dataset options to ``parser``.

    ``required=False`` leaves ``--dataset``/``--data-root`` as None when not given, for commands that
    can take them from a config file instead.
    """
    parser.add_argument("--dataset", required=required, metavar="NAME",
                        help="dataset name, e.g. voc2007, coco2014, yolo, jsonl (promptmlr data list shows all)")
    parser.add_argument("--data-root", required=required, type=Path, metavar="DIR", help="folder holding the dataset")
    group = parser.add_argument_group("dataset options (each applies to the datasets named)")
    for flag, (dest, choices, help_text) in DATASET_OPTIONS.items():
        group.add_argument(flag, dest=dest, choices=choices, default=None,
                           metavar=None if choices else "FILE", help=help_text)


def dataset_options(args: argparse.Namespace) -> dict[str, str]:
    """The dataset options given on the command line, as keyword arguments for ``build_dataset``."""
    return {dest: getattr(args, dest) for dest, _, _ in DATASET_OPTIONS.values() if getattr(args, dest) is not None}
