"""Config fields that explain and check themselves, as peft's ``field(metadata={"help": ...})``.

Every field of a configuration dataclass (a run's sections and each method's ``Config``) is declared
with :func:`option`: its default, one line of help, and the values it accepts (``choices`` or range
bounds). The dataclass's ``__post_init__`` calls :func:`check_fields`, which refuses a value outside
them, and ``promptmlr config`` shows them (:func:`describe`): the accepted values are written once.
Rules that tie fields together stay in ``__post_init__`` (across sections: :func:`promptmlr.config.checked`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Sequence

from promptmlr.errors import ConfigError, check_choice, check_number

BOUNDS = ("minimum", "above", "below", "maximum")  # check_number's keywords


def option(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           choices: Sequence[str] | None = None, minimum: float | None = None, above: float | None = None,
           below: float | None = None, maximum: float | None = None, allowed: str | None = None,
           flag: str | None = None, refusal: str | None = None) -> Any:
    """A dataclass field: ``default`` (or ``factory``, for a mutable one) and ``metadata`` holding
    ``help`` (one line: what it is, its unit) and what it accepts: ``choices``, or bounds as
    :func:`~promptmlr.errors.check_number` takes them, checked by :func:`check_fields` (None, where
    the type allows it, means unset and always passes); ``allowed``: the accepted values in words,
    for a field ``__post_init__`` checks itself. ``flag`` is the command-line flag that sets it
    (named in its error); ``refusal`` replaces the error's text (``{value}``: the value refused)."""
    if not help or "\n" in help:
        raise ValueError("an option needs one line of help")
    given = {"help": help, "choices": tuple(choices) if choices else None, "minimum": minimum, "above": above,
             "below": below, "maximum": maximum, "allowed": allowed, "flag": flag, "refusal": refusal}
    metadata = {key: value for key, value in given.items() if value is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def with_default(config_class: type, name: str, default: Any, help: str | None = None) -> Any:
    """Field ``name`` of ``config_class`` with a subclass's ``default`` (and ``help``, if given); the
    accepted values stay the parent's."""
    parent = next(field for field in dataclasses.fields(config_class) if field.name == name)
    return dataclasses.field(default=default, metadata={**parent.metadata, **({"help": help} if help else {})})


def check_fields(config: Any, prefix: str = "") -> None:
    """Refuse a field of dataclass ``config`` outside its option's choices or bounds; the error names
    it ``<prefix><name>`` (``train.optimizer must be one of adamw, sgd, got 'adam'``)."""
    for field in dataclasses.fields(config):
        meta, value = field.metadata, getattr(config, field.name)
        if value is None:
            continue
        setting = f"{prefix}{field.name}" + (f" ({meta['flag']})" if "flag" in meta else "")
        try:
            if "choices" in meta:
                check_choice(setting, value, meta["choices"])
            bounds = {key: meta[key] for key in BOUNDS if key in meta}
            if bounds:
                check_number(setting, value, **bounds)
        except ConfigError:
            if "refusal" in meta:
                raise ConfigError(meta["refusal"].format(value=value)) from None
            raise


def allowed(field: dataclasses.Field) -> str:
    """What a field accepts, in words: ``adamw | sgd``, ``[0, 1)``, ``>= 1``; empty when anything of
    its type goes."""
    meta = field.metadata
    if "allowed" in meta:
        return meta["allowed"]
    if "choices" in meta:
        return " | ".join(meta["choices"])
    low = ("[", meta["minimum"]) if "minimum" in meta else ("(", meta["above"]) if "above" in meta else None
    high = ("]", meta["maximum"]) if "maximum" in meta else (")", meta["below"]) if "below" in meta else None
    if low and high:
        return f"{low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""


@dataclass
class ConfigRow:
    """One key of a configuration: ``train.lr``, its value, its dataclass default, what it accepts
    and its help."""

    key: str
    value: Any
    default: Any
    allowed: str
    help: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe(config: Any, prefix: str = "") -> list[ConfigRow]:
    """A row per field of dataclass ``config``, nested sections expanded (``train.loss.name``)."""
    rows = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, f"{prefix}{field.name}.")
            continue
        default = field.default_factory() if field.default_factory is not MISSING else field.default
        rows.append(ConfigRow(f"{prefix}{field.name}", value, None if default is MISSING else default,
                              allowed(field), field.metadata.get("help", "")))
    return rows


def as_text(value: Any) -> str:
    """A value as it would be written in YAML or after ``--set KEY=``: ``null``, ``true``, ``0.002``,
    ``["a photo of a {}."]``."""
    if isinstance(value, (bool, type(None), list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value, default=str)
    return str(value) if value != "" else '""'
