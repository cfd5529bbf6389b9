"""Errors that describe bad input rather than a bug; the CLI prints them as one line.

Each subclasses ``ValueError``; more specific ones live beside the code that raises them
(``DatasetError``, ``DescriptionsError``, ``PromptsFileError``, ``BackboneLoadError``), except
``ReportError``, which sits here so that the CLI can catch it without importing matplotlib.
"""

from __future__ import annotations

from typing import Any, Sequence


class ConfigError(ValueError):
    """An option, config key or value that is unknown or out of range; the message names it and the fix."""


class ReportError(ValueError):
    """A run folder that cannot be reported on (missing, incomplete, unreadable); the message names it."""


def check_choice(setting: str, value: Any, choices: Sequence[str], error: type[ValueError] = ConfigError) -> None:
    """Refuse a ``value`` for ``setting`` that is not one of ``choices``, naming them all (as
    ``error``: loaders raise their ``DatasetError``)."""
    if value not in choices:
        raise error(f"{setting} must be one of {', '.join(choices)}, got {value!r}")
