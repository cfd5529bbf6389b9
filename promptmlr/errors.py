"""Errors that describe bad input rather than a bug; the CLI prints any of them as one line.

Every user-facing error derives from :class:`PromptMLRError`, so a caller (the CLI, a benchmark, a
notebook) catches them all with one ``except`` and lets anything else, a bug, raise with its
traceback. Each also derives from the matching builtin (``ValueError``, ``RuntimeError``,
``OSError``), so ``except ValueError`` code written for the standard library catches it too. The
specific ones live beside the code that raises them (``DatasetError``, ``ImageLoadError``,
``DescriptionsError``, ``PromptsFileError``, ``BackboneLoadError``, ``TrainingDivergedError``); the
general ones are here.
"""

from __future__ import annotations

from typing import Any, Sequence


class PromptMLRError(Exception):
    """Base of every error that describes bad input; its message names the file or option and the fix."""


class ConfigError(PromptMLRError, ValueError):
    """An option, config key or value that is unknown or out of range; the message names it and the fix."""


class UsageError(PromptMLRError, ValueError):
    """A request that cannot be carried out as asked (a folder that already holds a run, a run folder
    without the file asked for, no images among the inputs)."""


class ReportError(PromptMLRError, ValueError):
    """A run folder that cannot be reported on (missing, incomplete, unreadable); the message names it."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a training run, carrying the run folder it leaves behind, so that the CLI can
    say how to continue it (a ``KeyboardInterrupt`` still, for every ``except`` written for one)."""

    def __init__(self, run_dir: Any):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def one_line(error: BaseException) -> str:
    """A library's error message on one line (YAML and JSON parsers report over several)."""
    return " ".join(str(error).split())


def check_number(setting: str, value: float, minimum: float | None = None, above: float | None = None,
                 below: float | None = None, maximum: float | None = None) -> None:
    """Refuse a number outside its range (``minimum <= value``, ``above < value``, ``value < below``,
    ``value <= maximum``; the bounds given), with a message that states the range."""
    bounds = [(minimum, value >= minimum if minimum is not None else True, f">= {minimum}"),
              (above, value > above if above is not None else True, f"> {above}"),
              (below, value < below if below is not None else True, f"< {below}"),
              (maximum, value <= maximum if maximum is not None else True, f"<= {maximum}")]
    if not all(ok for _, ok, _ in bounds):
        wanted = " and ".join(text for bound, _, text in bounds if bound is not None)
        raise ConfigError(f"{setting} must be {wanted}, got {value}")


def check_choice(setting: str, value: Any, choices: Sequence[str], error: type[PromptMLRError] = ConfigError) -> None:
    """Refuse a ``value`` for ``setting`` that is not one of ``choices``, naming them all (as
    ``error``: loaders raise their ``DatasetError``)."""
    if value not in choices:
        raise error(f"{setting} must be one of {', '.join(choices)}, got {value!r}")
