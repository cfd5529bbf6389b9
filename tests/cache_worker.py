"""One feature-cache build under ``accelerate launch`` (run by tests/test_engine.py with 2 processes):
``python -m accelerate.commands.launch --multi_gpu --num_processes 2 tests/cache_worker.py DATA CACHE``."""

from __future__ import annotations

import sys

from accelerate import Accelerator

from promptmlr.backbones import create_backbone
from promptmlr.cache import build_or_open_cache
from promptmlr.data import build_dataset
from promptmlr.features import process_group


def build(data: str, cache_dir: str, group=None) -> None:
    """The cache both the test and the launched processes build: an eval view and an augmented one."""
    backbone = create_backbone("openclip:promptmlr-tiny-vit")
    dataset = build_dataset("csv", data, "train")
    transforms = [backbone.transform(), backbone.transform(train=True, randaugment=True, cutout=True)]
    kwargs = {} if group is None else {"group": group}
    build_or_open_cache(backbone, dataset, transforms, cache_dir, 0, 4, 0, split="train", **kwargs)


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2], process_group(Accelerator(cpu=True)))
