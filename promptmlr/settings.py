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


# What one YAML document may hold. Configs and descriptions are a few kilobytes; these bounds are far
# above any real one and far below what hangs or exhausts memory: PyYAML parses about 150 KB/s, an
# alias repeats a whole subtree without copying it until the config is merged or written (a
# 340-byte "billion laughs" file expands to 387 million strings), and composing recurses once per
# level of nesting (a few hundred levels raise RecursionError).
MAX_YAML_BYTES = 2 * 2**20
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add to a document, over those written out
MAX_YAML_NODES = 200_000  # nodes written out: a 2 MiB flow list of a million numbers takes 20 s to read
MAX_YAML_DEPTH = 64


class RefusedYAMLError(yaml.YAMLError):
    """YAML that parses but is refused: beyond :data:`MAX_YAML_BYTES`, :data:`MAX_ALIAS_NODES`,
    :data:`MAX_YAML_NODES` or :data:`MAX_YAML_DEPTH`, self-referring, with a value Python cannot
    hold, or (strict) with a key twice. A ``yaml.YAMLError``, so
    every caller that names its file for a parse error names it for this."""


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing documents nested deeper than :data:`MAX_YAML_DEPTH` or holding more
    than :data:`MAX_YAML_NODES` nodes, as it composes them (before any value is built)."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise RefusedYAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep")
            if self._nodes > MAX_YAML_NODES:
                raise RefusedYAMLError(f"more than {MAX_YAML_NODES:,} values, far more than a config or "
                                       f"descriptions file holds; is it the right file?")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _ConfigLoader(_BoundedLoader):
    """YAML with YAML 1.2's booleans (``true``/``false`` only): under PyYAML's default YAML 1.1
    rules ``off``, ``on``, ``yes`` and ``no`` are booleans, so ``train.cache.enabled: off`` or
    ``--set train.mixed_precision=no`` would arrive as False instead of the words those settings take."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str, strict: bool = True) -> Any:
    """Parse YAML with the safe loader, within the bounds above (:class:`RefusedYAMLError` beyond
    them); every YAML promptmlr reads goes through here. ``strict``, for promptmlr's own files (a
    config, ``--set`` values, descriptions): YAML 1.2 booleans, and a key given twice in one mapping
    is refused (PyYAML would keep the last silently: a second ``train:`` block would drop the
    first). Not ``strict``: PyYAML's YAML 1.1 reading, for files other tools write (YOLO's data.yaml)."""
    if len(text) > MAX_YAML_BYTES:
        raise RefusedYAMLError(f"{len(text) / 2**20:.1f} MiB of YAML, over the {MAX_YAML_BYTES // 2**20} MiB a "
                               f"config or descriptions file may take; is it the right file?")
    loader = (_ConfigLoader if strict else _BoundedLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, strict)
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as error:  # e.g. an integer of more digits than Python converts
            raise RefusedYAMLError(f"a value cannot be read: {str(error).splitlines()[0]}") from None
    finally:
        loader.dispose()


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_nodes(root: yaml.Node, unique_keys: bool) -> None:
    """Refuse a document whose aliases repeat more than :data:`MAX_ALIAS_NODES` nodes, that holds
    itself (``&a [*a]``, which no setting can take) or, with ``unique_keys``, a mapping with a key
    twice. Each node's expanded size is counted once, iteratively (no recursion limit), so a bomb
    is measured at once without being expanded."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack[-1]
        if id(node) in sizes:  # reached again through an alias: counted already
            stack.pop()
            continue
        children = _children(node)
        if id(node) not in open_nodes:  # first visit: count its children first (open nodes: the path here)
            open_nodes.add(id(node))
            if unique_keys and isinstance(node, yaml.MappingNode):
                _check_unique_keys(node)
            pending = [child for child in children if id(child) not in sizes]
            if any(id(child) in open_nodes for child in pending):
                raise RefusedYAMLError("an alias refers to a node that contains it (a recursive structure); "
                                       "write the values out")
            stack.extend(pending)
            continue
        stack.pop()
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
    if sizes[id(root)] - len(sizes) > MAX_ALIAS_NODES:
        raise RefusedYAMLError(f"its aliases expand it by {sizes[id(root)] - len(sizes):,} nodes, over the "
                               f"{MAX_ALIAS_NODES:,} allowed (an alias bomb?); write the values out")


def _check_unique_keys(node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            raise RefusedYAMLError(f"key {key.value!r} appears twice in one mapping (lines {seen[key.tag, key.value]} "
                                   f"and {line}); keep one")
        seen[key.tag, key.value] = line


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's YAML mapping (see :func:`load_yaml`; empty: ``{}``); errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; name a YAML file")
    if path.exists() and not path.is_file():  # a pipe would block the read, a device never end it
        raise ConfigError(f"config file {path} is not a regular file (a pipe or device); name a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:  # before reading a huge file into memory
            raise RefusedYAMLError(f"{path.stat().st_size / 2**20:.1f} MiB, over the {MAX_YAML_BYTES // 2**20} "
                                   f"MiB a config may take; is it the right file?")
        values = load_yaml(path.read_text(encoding="utf-8"))
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, train:), got "
                              f"{type(values).__name__} {_excerpt(values)}")
        return values or {}
    except RefusedYAMLError as error:
        raise ConfigError(f"{path}: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {one_line(error)}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None


def _excerpt(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
