"""Class descriptions: a few short visual phrases per class, written by a language model.

They initialise each class's positive prompt and form a description ensemble for zero-shot
scoring (as CuPL, Pratt et al. 2023, and TaI-DPT use LLM or caption text for CLIP prompts). Shipped
files live in ``prompts/<dataset>.yaml``::

    dataset: voc2007
    source: llm
    classes:
      aeroplane:
        - a large metal aircraft with two long wings and a tail fin

A user's own file may be YAML of that shape or plain text, one class per line:
``class name: description; another description``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

from promptmlr.errors import PromptMLRError, one_line
from promptmlr.files import shipped_file

Descriptions = dict[str, list[str]]


class DescriptionsError(PromptMLRError, ValueError):
    """A descriptions file that cannot be read or does not fit the dataset's classes."""


def load_descriptions(path: str | Path) -> Descriptions:
    """Read a YAML or plain-text descriptions file into ``{class name: [descriptions]}``."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionsError(f"descriptions file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DescriptionsError(f"{path}: not a UTF-8 text file ({one_line(error)}); save it as UTF-8") from None
    if path.suffix in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    return _parse_text(path, text)


def _parse_yaml(path: Path, text: str) -> Descriptions:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DescriptionsError(f"{path}: not valid YAML: {one_line(error)}") from None
    classes = document.get("classes") if isinstance(document, dict) else None
    if not isinstance(classes, dict):
        raise DescriptionsError(f"{path}: expected a top-level 'classes:' mapping of class name -> list of phrases")
    parsed = {}
    for name, phrases in classes.items():
        if isinstance(phrases, str):
            phrases = [phrases]
        if not isinstance(phrases, list) or not all(isinstance(p, str) and p.strip() for p in phrases) or not phrases:
            raise DescriptionsError(f"{path}: class {name!r} needs a non-empty list of description strings")
        parsed[str(name)] = [p.strip() for p in phrases]
    return parsed


def _parse_text(path: Path, text: str) -> Descriptions:
    parsed: Descriptions = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        phrases = [p.strip() for p in rest.split(";") if p.strip()]
        if not colon or not name.strip() or not phrases:
            raise DescriptionsError(f"{path}, line {number}: expected 'class name: description; description'")
        parsed.setdefault(name.strip(), []).extend(phrases)
    return parsed


def check_classes(descriptions: Descriptions, class_names: Sequence[str], source: str = "descriptions") -> Descriptions:
    """Descriptions in dataset class order; an error lists classes missing from, or unknown to, them."""
    missing = [name for name in class_names if name not in descriptions]
    unknown = [name for name in descriptions if name not in set(class_names)]
    if missing or unknown:
        parts = [f"missing classes {missing}" if missing else "", f"unknown classes {unknown}" if unknown else ""]
        raise DescriptionsError(f"{source} does not fit the dataset's {len(class_names)} classes: "
                                + "; ".join(p for p in parts if p))
    return {name: descriptions[name] for name in class_names}


def shipped_descriptions_path(dataset: str) -> Path | None:
    """The ``prompts/<dataset>.yaml`` shipped with promptmlr, if there is one."""
    return shipped_file("prompts", f"{dataset}.yaml")
