"""Training checkpoints that hold data only: tensors in safetensors, everything else in JSON.

A run folder may come from someone else, and ``--resume`` reads its checkpoint, so the format must
not be able to run code: no pickle (``torch.save`` / ``torch.load(weights_only=False)`` can). The
state (learnable parameters, optimiser, scheduler, EMA, pseudo-labels, history, RNG states) is
split into its tensors, stored as numbered safetensors entries, and a JSON tree of everything
else, stored in the file's metadata, in which each tensor is a ``{"tensor": key}`` reference, with
a SHA-256 over both. Tuples,
dicts with non-string keys (an optimiser's per-parameter state) and NumPy arrays (NumPy's RNG state)
are spelled out so that they come back as they went in: resuming stays bit-identical.

Frozen backbone weights are never included (a method's ``state_dict`` leaves them out), so a
checkpoint of a prompt-tuning run is kilobytes to a few megabytes, not the size of CLIP.

The header's format and version, and how older versions are read, are in :mod:`promptmlr.migrations`.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from promptmlr import migrations
from promptmlr.errors import PromptMLRError, one_line
from promptmlr.files import atomic_write

HEADER_KEY = "promptmlr-checkpoint"
NUMPY_KINDS = "biuf"  # bool, int, uint, float: all NumPy state a run holds (the RNG's key is uint32)


class CheckpointError(PromptMLRError, ValueError):
    """A checkpoint that cannot be read: truncated, foreign, newer than this promptmlr, or a pickle."""


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
    """Write ``state`` plus the RNG states to a temporary file, then rename: an interruption keeps
    the previous checkpoint. A SHA-256 over the JSON tree and every tensor's bytes goes with it, so
    that a checkpoint damaged in place is refused rather than resumed from wrong values."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _pack({**state, "rng": rng_states()}, tensors)
    header = json.dumps({**migrations.header("checkpoint"), "state": tree, "sha256": _digest(tree, tensors)})
    return atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata={HEADER_KEY: header}))


def _digest(tree: Any, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(tree, sort_keys=True).encode())
    for key in sorted(tensors):
        tensor = tensors[key].contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensors[key].shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; anything else is a :class:`CheckpointError`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for bytes that are not its format
        raise CheckpointError(f"{path} is not a promptmlr checkpoint ({_reason(path, error)}); it is not loaded. "
                              f"Start the run again in a new --out") from None
    try:
        header = json.loads(metadata[HEADER_KEY])
        if not isinstance(header, dict):
            raise ValueError("its header is not a mapping")
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} is not a promptmlr checkpoint this version reads ({error}); start the run "
                              f"again in a new --out") from None
    header = migrations.upgrade("checkpoint", header, path, CheckpointError)
    try:
        if header.get("sha256") != _digest(header["state"], tensors):
            raise ValueError("its contents do not match their checksum: damaged")
        return _unpack(header["state"], tensors)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, RecursionError) as error:
        raise CheckpointError(f"{path} is not a promptmlr checkpoint this version reads ({error}); start the run "
                              f"again in a new --out") from None


def _reason(path: Path, error: Exception) -> str:
    if migrations.looks_like_pickle(path):
        return "a pickle: pickles can run code, so promptmlr never loads them"
    return f"{type(error).__name__}: {one_line(error)}"


def _pack(value: Any, tensors: dict[str, torch.Tensor], path: str = "state") -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` (numbered; ``path`` names errors)."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"  # numbered, not named by path: a "/" inside a dict key cannot collide
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"tensor": key}
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind not in NUMPY_KINDS:
            raise TypeError(f"checkpoint state at {path} is a NumPy array of {array.dtype}, not plain numbers")
        return {"ndarray": array.reshape(-1).tolist(), "dtype": array.dtype.str, "shape": list(array.shape),
                "scalar": isinstance(value, np.generic)}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {"dict": {key: _pack(item, tensors, f"{path}/{key}") for key, item in value.items()}}
        return {"items": [[_pack(key, tensors, f"{path}/key{i}"), _pack(item, tensors, f"{path}/{i}")]
                          for i, (key, item) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        items = [_pack(item, tensors, f"{path}/{i}") for i, item in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint state at {path} holds a {type(value).__name__}, which is not plain data")


def _unpack(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_unpack(item, tensors) for item in tree]
    if not isinstance(tree, dict):
        return tree
    if "tensor" in tree:
        return tensors[tree["tensor"]]
    if "ndarray" in tree:
        dtype = np.dtype(tree["dtype"])
        if dtype.kind not in NUMPY_KINDS or dtype.itemsize > 16:
            raise ValueError(f"a NumPy array of {dtype}")
        array = np.array(tree["ndarray"], dtype=dtype).reshape(tree["shape"])
        return array[()] if tree.get("scalar") else array
    if "tuple" in tree:
        return tuple(_unpack(item, tensors) for item in tree["tuple"])
    if "items" in tree:
        return {_unpack(key, tensors): _unpack(item, tensors) for key, item in tree["items"]}
    return {key: _unpack(item, tensors) for key, item in tree["dict"].items()}
