"""Training checkpoints: learnable state, optimiser, scheduler, epoch and RNG states, written atomically.

Frozen backbone weights are never included (a method's ``state_dict`` leaves them out), so a
checkpoint of a prompt-tuning run is kilobytes to a few megabytes, not the size of CLIP.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptmlr.files import atomic_write


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file, then rename: an interruption keeps the previous checkpoint."""
    return atomic_write(path, lambda temp: torch.save({**state, "rng": rng_states()}, temp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (our own file, so full unpickling is safe)."""
    return torch.load(path, map_location="cpu", weights_only=False)
