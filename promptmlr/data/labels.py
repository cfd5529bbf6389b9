"""Label matrices, the partial-label protocol that hides entries, and the hash that identifies it.

A label matrix is ``int8 [N, C]`` with ``1`` positive, ``-1`` negative and ``0`` unknown: the
convention of the MLR-PL literature (SST, Chen et al. AAAI 2022; SARB, Pu et al. AAAI 2022; the
HCP-MLR-PL code), in which "partial labels" means that some entries of the full matrix are unknown.

The community protocol (HCP-MLR-PL ``datasets/*.py: changeLabelProportion``) seeds NumPy's legacy
generator with 0, draws ``np.random.random((N, C))`` and keeps the entries below the known
proportion; positives and negatives are hidden alike. Its published VOC 2007 files are reproduced
bit for bit by :func:`make_partial_labels` (see ``tests/test_data_labels.py``). DualCoOp (Sun et al.
NeurIPS 2022) draws the same kind of mask with ``torch.rand`` instead; that is the ``"dualcoop"``
scheme.

On disk a matrix is the community's text format: one image per line, ``C`` comma-separated values,
``\\n`` line ends including the last (``original-labels/train.txt``, ``train_proportion_0.1.txt``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from promptmlr.data.textfiles import DatasetError, read_lines
from promptmlr.files import atomic_write

POSITIVE, UNKNOWN, NEGATIVE = 1, 0, -1
LABEL_VALUES = (POSITIVE, UNKNOWN, NEGATIVE)
MASK_SCHEMES = ("hcp", "dualcoop")


def as_label_matrix(labels: np.ndarray | list, where: str = "labels") -> np.ndarray:
    """Check that ``labels`` is an ``[N, C]`` matrix of 1/0/-1 and return it as C-contiguous int8."""
    array = np.asarray(labels)
    if array.ndim != 2:
        raise DatasetError(f"{where}: expected a 2-D [images, classes] matrix, got shape {array.shape}")
    bad = ~np.isin(array, LABEL_VALUES)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f"{where}: value {array[row, column].item()!r} at row {row}, column {column}; "
                           "labels must be 1 (positive), -1 (negative) or 0 (unknown)")
    return np.ascontiguousarray(array, dtype=np.int8)


def check_known(known: float) -> float:
    """The known proportion must lie in (0, 1]: 0 would hide every label, above 1 means nothing."""
    if isinstance(known, bool) or not isinstance(known, (int, float, np.floating)) or not math.isfinite(known):
        raise DatasetError(f"known proportion must be a number in (0, 1], got {known!r}")
    if not 0.0 < known <= 1.0:
        raise DatasetError(f"known proportion must be in (0, 1] (e.g. 0.1 for 10 % known labels), got {known}")
    return float(known)


def make_partial_labels(labels: np.ndarray, known: float, seed: int = 0, scheme: str = "hcp") -> np.ndarray:
    """Hide all but a proportion ``known`` of the entries of ``labels`` (set them to 0), reproducibly.

    ``scheme="hcp"`` is the SST/SARB/HCP-MLR-PL protocol: ``np.random.seed(seed)`` then keep the
    entries where ``np.random.random(labels.shape) < known``. A private ``RandomState(seed)`` draws
    the identical stream without touching NumPy's global generator.

    ``scheme="dualcoop"`` follows DualCoOp (sunxm2357/DualCoOp ``dataloaders/coco_detection.py``,
    ``pascal_voc.py``, ``nus_wide.py``): keep the entries where ``torch.rand(N, C) < known``. DualCoOp
    draws from PyTorch's global generator without a seed and saves the mask; here a generator seeded
    with ``seed`` makes it reproducible (same stream as ``torch.manual_seed(seed); torch.rand(N, C)``).

    Entries that are already unknown stay unknown. The input is not modified.
    """
    labels = as_label_matrix(labels)
    known = check_known(known)
    if scheme == "hcp":
        keep = np.random.RandomState(seed).random_sample(labels.shape) < known
    elif scheme == "dualcoop":
        generator = torch.Generator().manual_seed(seed)
        keep = (torch.rand(labels.shape, generator=generator) < known).numpy()
    else:
        raise DatasetError(f"unknown partial-label scheme {scheme!r}; choose one of {', '.join(MASK_SCHEMES)}")
    partial = labels.copy()
    partial[~keep] = UNKNOWN
    return partial


def mask_sha256(labels: np.ndarray) -> str:
    """SHA-256 identifying a (partial) label matrix: which entries are known and what they say.

    Hashes ``b"int8:<N>x<C>\\n"`` followed by the matrix as C-ordered int8 bytes, so the same labels
    give the same hash whatever dtype or memory layout they arrived in, and a transposed or
    reshaped matrix never collides with the original.
    """
    matrix = as_label_matrix(labels)
    digest = hashlib.sha256(f"int8:{matrix.shape[0]}x{matrix.shape[1]}\n".encode())
    digest.update(matrix.tobytes(order="C"))
    return digest.hexdigest()


def read_label_matrix(path: str | Path) -> np.ndarray:
    """Read the comma-separated 1/-1/0 text format; errors name the file and line."""
    path = Path(path)
    rows: list[list[int]] = []
    for number, line in read_lines(path, "label matrix"):
        fields = line.split(",")
        if rows and len(fields) != len(rows[0]):
            raise DatasetError(f"{path}, line {number}: {len(fields)} values, but line 1 has "
                               f"{len(rows[0])}; every line needs one value per class")
        try:
            values = [int(field) for field in fields]
        except ValueError:
            raise DatasetError(f"{path}, line {number}: {line!r} is not comma-separated integers "
                               "(expected values 1, -1 or 0)") from None
        if not set(values) <= set(LABEL_VALUES):
            raise DatasetError(f"{path}, line {number}: values must be 1, -1 or 0, got {sorted(set(values))}")
        rows.append(values)
    if not rows:
        raise DatasetError(f"{path}: no label rows")
    return np.asarray(rows, dtype=np.int8)


def format_label_matrix(labels: np.ndarray) -> str:
    """The community text format, byte for byte: ``1,-1,0`` per line, a newline after every line."""
    matrix = as_label_matrix(labels)
    return "".join(",".join(str(value) for value in row) + "\n" for row in matrix.tolist())


def write_label_matrix(path: str | Path, labels: np.ndarray) -> None:
    """Write ``labels`` (atomically) in the format :func:`read_label_matrix` reads (and the HCP files use)."""
    text = format_label_matrix(labels)
    atomic_write(path, lambda temp: temp.write_text(text, encoding="ascii", newline="\n"))


@dataclass
class MaskResult:
    """What :func:`mask_label_file` wrote: the partial matrix, the share of known entries kept, its hash."""

    partial: np.ndarray
    kept: float  # of the entries known in the input, the proportion still known
    sha256: str


def mask_label_file(labels_path: str | Path, out: str | Path, known: float, seed: int = 0,
                    scheme: str = "hcp") -> MaskResult:
    """Read a full 1/-1/0 label file, hide all but ``known`` of it (:func:`make_partial_labels`) and
    write the partial labels to ``out`` in the same format (``promptmlr data mask``)."""
    if Path(out).resolve() == Path(labels_path).resolve():
        raise DatasetError(f"the output {out} is the input file {labels_path}; write the partial labels elsewhere")
    labels = read_label_matrix(labels_path)
    partial = make_partial_labels(labels, known, seed=seed, scheme=scheme)
    write_label_matrix(out, partial)
    kept = float((partial != 0).sum()) / max(1, int((labels != 0).sum()))
    return MaskResult(partial, kept, mask_sha256(partial))
