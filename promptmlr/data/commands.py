"""``promptmlr data ...`` subcommands (wired into :mod:`promptmlr.cli`)."""

from __future__ import annotations

import argparse


def add_data_commands(parser: argparse.ArgumentParser) -> None:
    """Register ``data mask``, ``data verify`` and friends on the ``data`` parser."""
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    del actions  # filled in by the datasets issue (#3)
