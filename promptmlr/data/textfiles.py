"""Reading the small text files datasets are made of, with errors that say which file and line.

Every loader parses lists, class files and label files through these helpers, so a bad input
always fails the same way: :class:`DatasetError` with the path, the line number where there is
one, what was expected, and how to fix it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from promptmlr.errors import PromptMLRError


class DatasetError(PromptMLRError, ValueError):
    """A dataset's files are missing or malformed, or an option is wrong; the message names the fix."""


class SplitNotFoundError(DatasetError):
    """The files that define a split are absent from this copy of a dataset (e.g. only ``train``)."""


def warn(message: str) -> None:
    """One line on stderr about data that loads but may not be what was meant (duplicates, a test
    split that shares images with training): the run goes on, the user can look. Under a
    distributed launcher (``accelerate launch``, torchrun: ``RANK`` is set) every process reads the
    same data, so only the first says it."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr)


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file; otherwise raise naming ``what`` it should have held."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    return path


def first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``root/candidate`` that exists; the error lists every place looked at."""
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    tried = ", ".join(str(root / candidate) for candidate in candidates)
    raise DatasetError(f"{what} not found; looked for {tried}")


def read_lines(path: Path, what: str, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, stripped_line)`` for every non-blank line of the file ``path``.

    A UTF-8 byte-order mark is dropped (Windows editors write one), so it never becomes part of
    the first class name or label."""
    require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8-sig" if encoding.lower() in ("utf-8", "utf8") else encoding)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not a {encoding} text file ({error}); save it as UTF-8") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def read_class_names(path: Path) -> list[str]:
    """A class-names file: one name per line, in label-column order; blank lines are skipped."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, name in read_lines(path, "class-names file"):
        if name in seen:
            raise DatasetError(f"{path}, line {number}: class {name!r} repeats line {seen[name]}; "
                               "class names must be unique")
        seen[name] = number
        names.append(name)
    if not names:
        raise DatasetError(f"{path}: the class-names file is empty (expected one class name per line)")
    return names
