"""Typed settings: nested dicts (YAML files, ``--set`` values) applied onto dataclasses.

Every section of a run's configuration, and every method's ``Config``, is a dataclass with
defaults (its fields declared with :func:`promptmlr.options.option`); :func:`merge` applies a
mapping to one, refusing unknown keys and values of the wrong type with a message that names the
key. YAML is read with YAML 1.2 booleans (see :class:`_ConfigLoader`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from promptmlr.errors import ConfigError, one_line
from promptmlr.migrations import new_name


def merge(config: Any, values: dict[str, Any], where: str) -> Any:
    """A copy of dataclass ``config`` with ``values`` (a nested dict) applied; unknown keys and values
    that do not fit a field's annotated type are errors naming the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config)}
    unknown = [key for key in values if key not in fields]
    if unknown:
        renamed = [f"{key!r} is now named {new!r}" for key in unknown if (new := new_name(key, fields))]
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                          f"{' (' + '; '.join(renamed) + ')' if renamed else ''}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(type(config))
    changes = {}
    for key, value in values.items():
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, f"{where}.{key}")
        elif isinstance(current, dict):
            changes[key] = {**current, **_coerce(value or {}, hints[key], f"{where}.{key}")}
        else:
            changes[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return dataclasses.replace(config, **changes)
    except ConfigError as error:  # a section's __post_init__ refusing a value: say where it was set
        raise ConfigError(f"{where}: {error}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` (from YAML, ``--set`` or Python) as the field type ``hint``. Lenient where the
    source is: ints where floats go, numbers where strings go (YAML reads ``2007`` as a number),
    numeric strings where numbers go (YAML 1.1 reads ``1e-3`` as a string), paths where strings go;
    anything else must match."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if (origin or hint) in (list, tuple) and isinstance(value, (list, tuple)):
        return _coerce_sequence(value, origin or hint, args, where)
    if (origin or hint) is dict and isinstance(value, dict):
        return {key: os.fspath(item) if isinstance(item, os.PathLike) else item for key, item in value.items()}
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    elif hint is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    elif hint is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    elif hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    elif origin is None and isinstance(hint, type) and isinstance(value, hint) and not (
            hint is int and isinstance(value, bool)):
        return value
    expected = "a finite float" if hint is float else getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def _coerce_sequence(value: list | tuple, kind: type, args: tuple, where: str) -> list | tuple:
    """A list or tuple field: each item as its type (``list[str]``, ``tuple[float, float, float]``,
    ``tuple[int, ...]``; no arguments: items as they are)."""
    if not args:
        return kind(value)
    items = args[:1] * len(value) if kind is list or (len(args) == 2 and args[1] is Ellipsis) else args
    if len(items) != len(value):
        raise ConfigError(f"{where}: expected {len(items)} values, got {value!r}")
    return kind(_coerce(item, item_hint, f"{where}[{i}]") for i, (item, item_hint) in enumerate(zip(value, items)))


class _ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans (``true``/``false`` only): under PyYAML's default YAML 1.1
    rules ``off``, ``on``, ``yes`` and ``no`` are booleans, so ``train.cache.enabled: off`` or
    ``--set train.mixed_precision=no`` would arrive as False instead of the words those settings take."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse config YAML (a file or a ``--set`` value) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_ConfigLoader)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return load_yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {one_line(error)}") from None
