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
from promptmlr.settings import MAX_YAML_BYTES, RefusedYAMLError, load_yaml

Descriptions = dict[str, list[str]]

# CLIP reads 77 tokens of a prompt (a few hundred characters); the shipped descriptions are at most
# 77 characters. The longest description accepted is far above that and bounds the tokenizer,
# whose byte-pair merging is quadratic in a word's length (3,000 characters without a space: 0.3 s;
# one 10 MB line would take hours).
MAX_DESCRIPTION_CHARS = 1000
MAX_FILE_BYTES = MAX_YAML_BYTES


class DescriptionsError(PromptMLRError, ValueError):
    """A descriptions file that cannot be read or does not fit the dataset's classes."""


def load_descriptions(path: str | Path) -> Descriptions:
    """Read a YAML or plain-text descriptions file into ``{class name: [descriptions]}``."""
    path = Path(path)
    if path.is_dir():
        raise DescriptionsError(f"descriptions file {path} is a folder; name a YAML or text file")
    if not path.is_file():
        raise DescriptionsError(f"descriptions file {path} does not exist")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:  # checked before the file is read into memory
            raise DescriptionsError(f"{path} is {size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB a "
                                    f"descriptions file may take (a few short phrases per class); is it the "
                                    f"right file?")
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is no part of a name
    except UnicodeDecodeError as error:
        raise DescriptionsError(f"{path}: not a UTF-8 text file ({one_line(error)}); save it as UTF-8") from None
    except OSError as error:
        raise DescriptionsError(f"cannot read descriptions file {path}: {error.strerror or error}") from None
    parsed = _parse_yaml(path, text) if path.suffix in (".yaml", ".yml") else _parse_text(path, text)
    for name, phrases in parsed.items():
        longest = max(phrases, key=len)
        if len(longest) > MAX_DESCRIPTION_CHARS:
            raise DescriptionsError(f"{path}: class {name!r} has a description of {len(longest):,} characters; "
                                    f"CLIP reads about 77 tokens, so keep each under {MAX_DESCRIPTION_CHARS} "
                                    f"characters (split it into several with ';' or a YAML list)")
    return parsed


def _parse_yaml(path: Path, text: str) -> Descriptions:
    try:
        document = load_yaml(text)
    except RefusedYAMLError as error:
        raise DescriptionsError(f"{path}: {error}") from None
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
