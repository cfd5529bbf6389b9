"""Check a dataset before training on it: decode every image, summarise every label.

Labels are already read and checked when a dataset is built (a malformed file fails there, by
name). :func:`verify_dataset` adds what building does not do: it opens and fully decodes every
image with :func:`promptmlr.data.images.load_image`, in a thread pool, and lists each missing,
unreadable or corrupt file by path, so a bad file is found in minutes rather than hours into
training. An image listed more than once in a split is a problem too: with conflicting labels
(positive in one row, negative in another) its label is a guess, and even with the same labels it
counts twice and may land in both training and validation. Training only warns about them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from promptmlr.data.dataset import Duplicate, MultiLabelDataset, find_duplicates
from promptmlr.data.images import ImageLoadError, load_image
from promptmlr.data.labels import NEGATIVE, POSITIVE, UNKNOWN
from promptmlr.data.registry import build_dataset, get_dataset_spec
from promptmlr.data.textfiles import DatasetError, SplitNotFoundError
from promptmlr.progress import progress_bar


@dataclass
class Problem:
    """One bad image file: ``kind`` is ``missing`` or ``corrupt``."""

    path: Path
    kind: str
    reason: str


@dataclass
class SplitReport:
    """What :func:`verify_dataset` found in one split."""

    name: str
    split: str
    class_names: list[str]
    labels: np.ndarray
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)

    def summary(self) -> str:
        """A compact, printable summary: counts, positives per class, labels per image, problems."""
        images, classes = self.labels.shape
        if images == 0:
            return f"{self.name}/{self.split}: 0 images, {classes} classes"
        positives = (self.labels == POSITIVE).sum(axis=1)
        per_class = (self.labels == POSITIVE).sum(axis=0)
        share = {value: float((self.labels == value).mean() * 100) for value in (POSITIVE, NEGATIVE, UNKNOWN)}
        lines = [
            f"{self.name}/{self.split}: {images} images, {classes} classes, {len(self.problems)} bad image file(s)",
            f"  entries: {share[POSITIVE]:.1f} % positive, {share[NEGATIVE]:.1f} % negative, "
            f"{share[UNKNOWN]:.1f} % unknown",
            f"  positives per image: mean {positives.mean():.2f}, min {positives.min()}, max {positives.max()}, "
            f"{int((positives == 0).sum())} image(s) with none",
            "  positives per class: " + ", ".join(f"{n} {int(c)}" for n, c in zip(self.class_names, per_class)),
        ]
        empty = [n for n, c in zip(self.class_names, per_class) if c == 0]
        if empty:
            lines.append(f"  classes without a positive: {', '.join(empty)}")
        if self.duplicates:
            conflicting = sum(1 for duplicate in self.duplicates if duplicate.conflicts)
            lines.append(f"  images listed more than once: {len(self.duplicates)}, {conflicting} with conflicting "
                         "labels")
        return "\n".join(lines)


def check_image(path: Path) -> Problem | None:
    """None if ``path`` decodes to an image; otherwise what is wrong with it."""
    try:
        load_image(path, damaged="error")
    except ImageLoadError as error:
        return Problem(path, "missing" if not path.exists() else "corrupt", error.reason)
    return None


def verify_dataset(dataset: MultiLabelDataset, workers: int | None = None, progress: bool = True) -> SplitReport:
    """Decode every image of ``dataset`` (``workers`` threads; default: CPU count)."""
    report = SplitReport(dataset.name, dataset.split, dataset.class_names, dataset.labels,
                         duplicates=find_duplicates(dataset))
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check_image, dataset.image_paths)
        bar = progress_bar(results, total=len(dataset), desc=f"{dataset.name}/{dataset.split}", unit="img",
                           disable=None if progress else True, leave=False)
        report.problems = [problem for problem in bar if problem is not None]
    return report


@dataclass
class SplitCheck:
    """One split's outcome in :func:`verify_splits`: a report, or why it is absent, or why its
    labels could not be read."""

    split: str
    report: SplitReport | None = None
    absent: str | None = None
    label_error: str | None = None

    @property
    def failures(self) -> list[str]:
        """One line per problem: a bad label file, each missing or corrupt image, each image listed
        more than once."""
        if self.label_error:
            return [f"labels   {self.label_error}"]
        if self.report is None:
            return []
        return ([f"{problem.kind:8s} {problem.path}: {problem.reason}" for problem in self.report.problems]
                + [f"repeated {duplicate.describe()}" for duplicate in self.report.duplicates])


def verify_splits(dataset: str, root: str | Path, split: str | None = None, options: dict | None = None,
                  workers: int | None = None) -> Iterator[SplitCheck]:
    """Check ``split``, or every split of ``dataset`` present under ``root``, one split at a time
    (``promptmlr data verify`` prints each as it is done: a COCO split takes minutes). A ``labels``
    file (jsonl/csv) is one split: without ``split`` it is checked once, named after the file,
    not once for every split of the folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"data root {root} does not exist")
    options = options or {}
    spec = get_dataset_spec(dataset)
    spec.check_options(options)
    if options.get("labels") and not split:
        split = Path(options["labels"]).stem
    found = False
    for name in [split] if split else list(spec.available_splits(root)):
        try:
            built = build_dataset(dataset, root, name, **options)
        except SplitNotFoundError as error:
            if split:
                raise
            yield SplitCheck(name, absent=str(error))
            continue
        except DatasetError as error:
            found = True
            yield SplitCheck(name, label_error=str(error))
            continue
        found = True
        yield SplitCheck(name, report=verify_dataset(built, workers=workers))
    if not found:
        raise DatasetError(f"{dataset}: no split found under {root}")
