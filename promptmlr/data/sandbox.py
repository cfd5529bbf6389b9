"""The synthetic world as a dataset: ``--dataset synthetic``, generated on first use.

Files are written by :func:`promptmlr.data.synthetic.write_synthetic_dataset` (the custom CSV
layout plus ``meta.json``) and read back like any user's CSV data. Without ``--data-root`` the
standard sandbox benchmark is used: seed 0, 6,000 training and 4,000 test scenes at 128 px, kept
under ``~/.cache/promptmlr/synthetic/`` and generated the first time it is needed (about a minute).
"""

from __future__ import annotations

import json
from pathlib import Path

from promptmlr.data.custom import build_csv
from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.registry import register_dataset
from promptmlr.data.textfiles import DatasetError
from promptmlr.files import atomic_directory

STANDARD = {"seed": 0, "n_train": 6000, "n_test": 4000, "image_size": 128}
CACHE_ROOT = Path.home() / ".cache" / "promptmlr" / "synthetic"


def default_synthetic_root() -> Path:
    """The standard synthetic benchmark, generated atomically (temp folder, rename) if absent."""
    name = "seed{seed}-train{n_train}-test{n_test}-{image_size}px".format(**STANDARD)

    def build(folder: Path) -> None:
        from promptmlr.data.synthetic import write_synthetic_dataset

        print(f"generating the synthetic benchmark in {CACHE_ROOT / name} (first use only)...")
        write_synthetic_dataset(folder, **STANDARD)

    return atomic_directory(CACHE_ROOT / name, build)


@register_dataset("synthetic", splits=("train", "test"))
def build_synthetic(root: Path, split: str) -> MultiLabelDataset:
    """The synthetic world of coloured shapes (promptmlr data synth); full labels known."""
    if not (root / "meta.json").is_file():
        raise DatasetError(f"{root} holds no synthetic dataset (no meta.json); create one with "
                           f"`promptmlr data synth --out {root}` or leave out --data-root for the standard one")
    if json.loads((root / "meta.json").read_text()).get("generator") != "promptmlr.data.synthetic":
        raise DatasetError(f"{root}/meta.json was not written by promptmlr's synthetic generator")
    dataset = build_csv(root, split)
    dataset.name = "synthetic"
    return dataset
