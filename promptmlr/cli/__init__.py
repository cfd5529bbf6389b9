"""The ``promptmlr`` command line: a thin layer over the Python API (:mod:`promptmlr.api`).

:mod:`.main` builds the parser and turns user-facing errors into one line; :mod:`.commands` and
:mod:`.data` hold the handlers, which parse their arguments, call the API and print.
"""

from promptmlr.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
