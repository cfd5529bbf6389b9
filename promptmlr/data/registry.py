"""Dataset names -> loaders: ``build_dataset("voc2007", root, "trainval")`` is the single entry point.

Each loader registers itself in :data:`DATASETS` (a :class:`~promptmlr.registry.Registry`, as methods
and backbones) with a decorator in its own module, so adding a dataset is adding one file (and,
for a built-in, naming its module in :data:`BUILTIN_DATASET_MODULES`)::

    @register_dataset("voc2007", splits=("train", "val", "trainval", "test"))
    def build_voc2007(root: Path, split: str, difficult: str = "negative") -> MultiLabelDataset: ...

A builder takes the data root and the split, plus keyword options with defaults; the registry
checks names, splits and option names before calling it, so every loader gets the same errors.
``splits`` is either a fixed tuple or, for datasets whose splits are files the user names (YOLO,
JSONL, CSV), a function of the root that lists the splits present.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.textfiles import DatasetError
from promptmlr.registry import Registry

Builder = Callable[..., MultiLabelDataset]
SplitNames = Union[tuple[str, ...], Callable[[Path], tuple[str, ...]]]  # fixed, or listed from the root


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader, its splits and a one-line description."""

    name: str
    builder: Builder
    splits: SplitNames
    description: str

    def options(self) -> dict[str, Any]:
        """The keyword options the loader accepts, with their defaults."""
        parameters = list(inspect.signature(self.builder).parameters.values())[2:]
        return {p.name: p.default for p in parameters}

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` without None values; a name the loader does not take lists those it takes."""
        given = {key: value for key, value in options.items() if value is not None}
        accepted = self.options()
        unknown = sorted(set(given) - set(accepted))
        if unknown:
            takes = ", ".join(f"{key} (default {value!r})" for key, value in accepted.items()) or "no options"
            raise DatasetError(f"dataset {self.name} does not take option(s) {', '.join(unknown)}; it takes: {takes}")
        return given

    def available_splits(self, root: Path) -> tuple[str, ...]:
        return self.splits(root) if callable(self.splits) else self.splits


# modules of promptmlr.data whose import registers datasets; imported when the registry is first asked
BUILTIN_DATASET_MODULES = ("voc", "coco", "nuswide", "vg", "yolo", "custom", "synthetic")
DATASETS: Registry[DatasetSpec] = Registry(
    "dataset", tuple(f"promptmlr.data.{module}" for module in BUILTIN_DATASET_MODULES), error=DatasetError)


def register_dataset(name: str, splits: SplitNames, description: str = "") -> Callable[[Builder], Builder]:
    """Decorator: make ``build_dataset(name, ...)`` call the decorated loader; a name already taken
    is refused."""

    def register(builder: Builder) -> Builder:
        summary = description or (inspect.getdoc(builder) or "").split("\n", 1)[0]
        DATASETS.register(name, DatasetSpec(name, builder, splits, summary), owner=builder.__module__)
        return builder

    return register


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`, sorted."""
    return DATASETS.names(sort=True)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registered spec for ``name``; an unknown name lists the known ones."""
    return DATASETS.get(name)


def build_dataset(name: str, root: str | Path, split: str, transform: Callable | None = None,
                  **options: Any) -> MultiLabelDataset:
    """Load split ``split`` of dataset ``name`` stored under ``root``.

    ``options`` are the loader's keyword options (e.g. ``difficult="ignore"`` for VOC); an option the
    loader does not take is an error that lists those it does take. Options set to None are left at
    their defaults, so a CLI can pass every flag it has through unchanged.
    """
    spec = get_dataset_spec(name)
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{name}: data root {root} does not exist")
    given = spec.check_options(options)
    if not callable(spec.splits) and split not in spec.splits:
        raise DatasetError(f"{name} has no split {split!r}; valid splits: {', '.join(spec.splits)}")
    dataset = spec.builder(root, split, **given)
    dataset.transform = transform
    return dataset
