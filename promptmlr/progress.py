"""Progress bars: tqdm's, redrawn freely on a terminal and sparingly in a log file.

A bar on a terminal redraws itself in place; written to a file or a pipe (a job's log, ``nohup``,
``tee``), each redraw is another line, and a run's log was mostly bars (290 KB for the quickstart).
So when the bar's stream is not a terminal, a bar shows up only once it has run
:data:`LOG_INTERVAL` seconds and then redraws at most that often (a short bar leaves no trace), and
:meth:`Progress.set_postfix` (the running loss) waits for the next redraw instead of forcing one.
tqdm's own ``TQDM_MININTERVAL`` or ``TQDM_DELAY`` environment variables, where set, decide
instead; in a notebook, whose bars are widgets, nothing changes. Every bar in promptmlr is made here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.autonotebook import tqdm as _chosen_tqdm
from tqdm.std import tqdm as _text_tqdm

LOG_INTERVAL = 30.0  # seconds between two lines of one bar in a log file


class Progress(_auto_tqdm):
    """A tqdm bar whose ``set_postfix`` honours the redraw interval off a terminal (``_on_terminal``:
    whether it may redraw freely)."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=refresh and getattr(self, "_on_terminal", True), **kwargs)


def progress_bar(iterable: Any = None, **options: Any) -> Progress:
    """``tqdm(iterable, **options)``, sparing in a log file (see above)."""
    on_terminal = _is_terminal(options.get("file") or sys.stderr)
    if not on_terminal and _chosen_tqdm is _text_tqdm:
        if "TQDM_MININTERVAL" not in os.environ:
            options.setdefault("mininterval", LOG_INTERVAL)
            # tqdm's monitor thread redraws a bar idle for maxinterval seconds; keep it at the same pace
            options.setdefault("maxinterval", max(LOG_INTERVAL, options["mininterval"]))
        if "TQDM_DELAY" not in os.environ:
            options.setdefault("delay", LOG_INTERVAL)
    bar = Progress(iterable, **options)
    bar._on_terminal = on_terminal or _chosen_tqdm is not _text_tqdm or "TQDM_MININTERVAL" in os.environ
    return bar


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
