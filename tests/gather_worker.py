"""Scoring and label recovery under ``accelerate launch`` (run by tests/test_engine.py with 2
processes): ``python -m accelerate.commands.launch --multi_gpu --num_processes 2 tests/gather_worker.py
DATA OUT``. The main process saves what every process's share gathered to, for comparison with one
process scoring alone."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from promptmlr.backbones import create_backbone
from promptmlr.cache import CacheConfig
from promptmlr.data import build_dataset
from promptmlr.data.labels import make_partial_labels
from promptmlr.data.protocol import Splits
from promptmlr.engine import TrainConfig, Trainer
from promptmlr.models import build_method
from promptmlr.recovery import RecoveryConfig


def score_and_recover(data: str, out: str) -> None:
    """Test logits and recovered training labels of one fixed, untrained method. The batch of 4
    leaves the odd-sized splits uneven across 2 processes, which ``gather_for_metrics`` must undo;
    SST's prototype transfer sums evidence over every process."""
    backbone = create_backbone("openclip:promptmlr-tiny-vit")
    train, test = build_dataset("csv", data, "train"), build_dataset("csv", data, "test")
    train = train.with_labels(make_partial_labels(train.labels, 0.5, seed=0))
    torch.manual_seed(0)
    method = build_method("sst", backbone, train.class_names)
    recovery = RecoveryConfig(enabled=True, thresholds="prior", prototype_weight=0.3)
    config = TrainConfig(batch_size=4, eval_batch_size=4, num_workers=0, recovery=recovery,
                         cache=CacheConfig(directory=str(Path(out).parent / "cache")))
    trainer = Trainer(method, Splits(train=train, val=None, test=test), config, Path(out).parent / "run")
    logits = trainer._score(trainer.features.loader(test, train=False, description="test"))
    trainer._recover(trainer.features.loader(train, train=False, description="train (eval view)"))
    if trainer.accelerator.is_main_process:
        np.savez(out, logits=logits, pseudo=trainer.pseudo_labels.cpu().numpy())


if __name__ == "__main__":
    score_and_recover(sys.argv[1], sys.argv[2])
