"""A user's own partially labelled data: JSONL or CSV files, one per split, in a data folder.

JSONL (``<root>/<split>.jsonl`` and a class-names file, one name per line: ``<split>.classes.txt``
beside it if there is one, else ``<root>/classes.txt``)::

    {"image": "photos/001.jpg", "positive": ["dog", "sofa"], "negative": ["cat"]}

Classes in neither list are unknown (0); ``missing_as="negative"`` makes them negative instead,
for data labelled exhaustively. ``negative`` may be left out. An optional ``filled`` object maps
labels that ``promptmlr complete`` filled in to the model's score of them (``{"sofa": 0.97}``); each
must be a class of the line's ``positive`` or ``negative`` list and a number in [0, 1]. It is
information for people and tools: the loader reads the labels as they are listed.

CSV (``<root>/<split>.csv``; the header names the classes, values 1 / -1 / 0)::

    image,dog,cat,sofa
    photos/001.jpg,1,-1,0

With ``missing_as="negative"`` the 0s become negatives. A value is read as a number, so ``1.0``,
``+1`` and `` 1`` are 1 (spreadsheets and pandas write them); words (``yes``) and empty cells are
refused, as their meaning is a guess. In both formats a relative image path is relative to the
folder of the file that lists it (``..`` and absolute paths are allowed: images may live anywhere),
and ``labels=FILE`` reads that file instead of ``<root>/<split>.<ext>`` (``classes=FILE`` likewise
replaces ``classes.txt``). Files are UTF-8, with or without a byte-order mark, any line ends.
"""

from __future__ import annotations

import array
import contextlib
import csv
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from promptmlr.data.dataset import MultiLabelDataset
from promptmlr.data.labels import NEGATIVE, POSITIVE, UNKNOWN
from promptmlr.data.registry import register_dataset
from promptmlr.data.textfiles import DatasetError, SplitNotFoundError, read_class_names, read_lines, require_file
from promptmlr.errors import check_choice

MISSING_AS = ("unknown", "negative")
JSONL_KEYS = ("image", "positive", "negative", "filled")


def split_files(root: Path, suffix: str) -> tuple[str, ...]:
    """Splits of a custom data folder: the stems of its ``*.<suffix>`` files."""
    return tuple(sorted(p.stem for p in root.glob(f"*{suffix}"))) if root.is_dir() else ()


def labels_file(root: Path, split: str, suffix: str, labels: str | None) -> Path:
    """The file for ``split``: ``labels`` if given, else ``<root>/<split><suffix>``."""
    if labels:
        return require_file(Path(labels).expanduser(), "labels file (--labels)")
    if root.is_file():
        raise DatasetError(f"data root {root} is a file; give its folder as the data root, or the file as "
                           "--labels FILE")
    path = root / f"{split}{suffix}"
    if not path.is_file():
        found = ", ".join(split_files(root, suffix)) or "none"
        raise SplitNotFoundError(f"no {path}; splits in {root}: {found} (a split is a file <split>{suffix} "
                                 "there)")
    return path


def resolve_image(listed_in: Path, number: int, image: str) -> Path:
    """An image path as written in a labels file; relative ones start at that file's folder. An
    empty one is refused: it would name the folder itself."""
    if not image.strip():
        raise DatasetError(f"{listed_in}, line {number}: empty image path; give the image file, relative to "
                           f"{listed_in.parent} or absolute")
    path = Path(image.strip()).expanduser()
    return path if path.is_absolute() else listed_in.parent / path


@register_dataset("jsonl", splits=lambda root: split_files(root, ".jsonl"))
def build_jsonl(root: Path, split: str, classes: str | None = None, labels: str | None = None,
                missing_as: str = "unknown") -> MultiLabelDataset:
    """Your own data as JSONL lines {"image", "positive", "negative"} plus a class-names file."""
    check_choice("missing_as", missing_as, MISSING_AS, DatasetError)
    path = labels_file(root, split, ".jsonl", labels)
    classes_path = Path(classes) if classes else own_classes_file(path, root)
    class_names = read_class_names(classes_path)
    column_of = {name: column for column, name in enumerate(class_names)}
    default = NEGATIVE if missing_as == "negative" else UNKNOWN
    images, rows = [], []
    for number, line in read_lines(path, "JSONL labels file"):
        record = parse_jsonl_record(path, number, line)
        row = np.full(len(class_names), default, dtype=np.int8)
        for key, value in (("negative", NEGATIVE), ("positive", POSITIVE)):
            for name in record[key]:
                if name not in column_of:
                    raise DatasetError(f"{path}, line {number}: class {name!r} in \"{key}\" is not in the "
                                       f"class list {classes_path}; add it there or fix the spelling")
                row[column_of[name]] = value
        both = set(record["positive"]) & set(record["negative"])
        if both:
            raise DatasetError(f"{path}, line {number}: {', '.join(sorted(both))} listed as both positive and negative")
        images.append(resolve_image(path, number, record["image"]))
        rows.append(row)
    return MultiLabelDataset("jsonl", split, class_names, images, stack_rows(path, rows, len(class_names)))


def own_classes_file(labels: Path, root: Path) -> Path:
    """The class list of a JSONL file: ``<stem>.classes.txt`` beside it where there is one (a file
    that carries its own classes, as ``promptmlr complete`` writes), else ``<root>/classes.txt``."""
    beside = labels.parent / f"{labels.stem}.classes.txt"
    return beside if beside.is_file() else root / "classes.txt"


def parse_jsonl_record(path: Path, number: int, line: str) -> dict:
    """One JSONL line, checked: an object with a string ``image`` and lists of class names (both
    lists present in the result, the names stripped of spaces)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise DatasetError(f"{path}, line {number}: expected an object with an \"image\" path, e.g. "
                           '{"image": "a.jpg", "positive": ["dog"], "negative": ["cat"]}')
    unknown = sorted(set(record) - set(JSONL_KEYS))
    if unknown:
        raise DatasetError(f"{path}, line {number}: unknown field(s) {', '.join(unknown)}; "
                           f"the fields are {', '.join(JSONL_KEYS)}")
    for key in ("positive", "negative"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise DatasetError(f"{path}, line {number}: \"{key}\" must be a list of class names")
        record[key] = [name.strip() for name in value]  # as the names of classes.txt and of a CSV header
    check_filled(path, number, record)
    return record


def check_filled(path: Path, number: int, record: dict) -> None:
    """The optional ``filled`` field: class names of the line's lists -> scores in [0, 1]."""
    filled = record.get("filled", {})
    if not isinstance(filled, dict):
        raise DatasetError(f"{path}, line {number}: \"filled\" must be an object of class name -> score, "
                           'e.g. {"sofa": 0.97}')
    listed = {*record["positive"], *record["negative"]}
    for name, score in filled.items():
        if name.strip() not in listed:
            raise DatasetError(f"{path}, line {number}: \"filled\" names {name!r}, which is in neither \"positive\" "
                               "nor \"negative\"; a filled label must be one of the line's labels")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise DatasetError(f"{path}, line {number}: \"filled\" score of {name!r} must be a number in "
                               f"[0, 1], got {score!r}")


@register_dataset("csv", splits=lambda root: split_files(root, ".csv"))
def build_csv(root: Path, split: str, labels: str | None = None, missing_as: str = "unknown") -> MultiLabelDataset:
    """Your own data as CSV: header image,<class1>,<class2>,... and rows of 1/-1/0."""
    check_choice("missing_as", missing_as, MISSING_AS, DatasetError)
    path = labels_file(root, split, ".csv", labels)
    with contextlib.closing(csv_records(path)) as body:  # a row at a time: no split's worth of strings
        return _csv_dataset(path, split, body, missing_as)


def _csv_dataset(path: Path, split: str, body: Iterator[tuple[int, list[str]]], missing_as: str) -> MultiLabelDataset:
    header_line, header = next(body, (None, None))
    if header is None:
        raise DatasetError(f"{path}: empty; the first line must be the header image,<class1>,<class2>,...")
    if len(header) < 2 or header[0].strip() != "image":
        hint = ""
        if len(header) == 1:  # another separator: Excel in many locales writes semicolons
            hint = next((f"; the values seem separated by {name}: save the file comma-separated"
                         for mark, name in ((";", "semicolons"), ("\t", "tabs")) if mark in header[0]), "")
        raise DatasetError(f"{path}, line {header_line}: the header must be image,<class1>,<class2>,... "
                           f"got {','.join(header)!r}{hint}")
    class_names = [name.strip() for name in header[1:]]
    repeated = sorted({name for name in class_names if class_names.count(name) > 1 or not name})
    if repeated:
        raise DatasetError(f"{path}, line {header_line}: class columns must have unique, non-empty names; "
                           f"check {', '.join(repr(name) for name in repeated)}")
    images, cells = [], array.array("b")  # one byte a label, however many rows
    for number, row in body:
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {number}: {len(row)} columns, the header has {len(header)} "
                               f"(image + {len(class_names)} classes)")
        values = [value.strip() for value in row[1:]]
        images.append(resolve_image(path, number, row[0]))
        cells.extend(LABEL_TEXT[value] if value in LABEL_TEXT else csv_value(path, number, class_names[column], value)
                     for column, value in enumerate(values))
    labels_matrix = stack_rows(path, np.frombuffer(cells, dtype=np.int8), len(class_names))
    if missing_as == "negative":
        labels_matrix[labels_matrix == UNKNOWN] = NEGATIVE
    return MultiLabelDataset("csv", split, class_names, images, labels_matrix)


LABEL_TEXT = {"1": POSITIVE, "-1": NEGATIVE, "0": UNKNOWN}


def csv_value(path: Path, number: int, column: str, text: str) -> int:
    """A class cell other than ``1``/``-1``/``0``: a number equal to one of them (``1.0``, ``+1``),
    else an error naming line and column."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value in (1.0, -1.0, 0.0):
        return int(value)
    what = "an empty cell" if not text else f"value {text!r}"
    raise DatasetError(f"{path}, line {number}: {what} in column {column!r}; class columns take 1 (positive), "
                       "-1 (negative) or 0 (unknown)")


def csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records, one at a time, with the line number each starts on (for error messages)."""
    line = 1
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                if any(field.strip() for field in row):
                    yield line, row
                line = reader.line_num + 1
        except csv.Error as error:
            raise DatasetError(f"{path}, line {reader.line_num}: not valid CSV ({error})") from None
        except UnicodeDecodeError as error:
            raise DatasetError(f"{path}: not a UTF-8 text file ({error}); save it as UTF-8") from None


def stack_rows(path: Path, rows: list[np.ndarray] | np.ndarray, num_classes: int) -> np.ndarray:
    """``[N, C]`` from per-image rows (or all of them flat, row after row); a file without any image
    is an error."""
    if not len(rows):
        raise DatasetError(f"{path}: no images listed")
    return np.asarray(rows).astype(np.int8).reshape(-1, num_classes)


def custom_splits(root: Path) -> tuple[str, ...]:
    return tuple(sorted({*split_files(root, ".jsonl"), *split_files(root, ".csv")}))


def custom_format(root: Path, split: str, labels: str | None = None) -> str:
    """``jsonl`` or ``csv``: the format a ``custom`` split is read in, by the suffix of ``labels`` if
    given, else by whether ``<root>/<split>.jsonl`` exists."""
    if labels:
        return "jsonl" if Path(labels).suffix == ".jsonl" else "csv"
    return "jsonl" if (root / f"{split}.jsonl").is_file() else "csv"


@register_dataset("custom", splits=custom_splits)
def build_custom(root: Path, split: str, classes: str | None = None, labels: str | None = None,
                 missing_as: str = "unknown") -> MultiLabelDataset:
    """Your own data, JSONL or CSV: whichever of <split>.jsonl / <split>.csv (or --labels FILE) exists."""
    if custom_format(root, split, labels) == "jsonl":
        return build_jsonl(root, split, classes, labels, missing_as)
    if classes:
        raise DatasetError("--classes applies to JSONL data; a CSV file names its classes in its header")
    return build_csv(root, split, labels, missing_as)
