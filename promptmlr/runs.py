"""The run folder: what a ``tune`` run leaves for people and for later commands to read.

::

    RUN_DIR/
      config.yaml               the resolved configuration (re-runnable with --config)
      metrics.json              per-epoch history, the selected and the last epoch, mask hash, timings
      best.safetensors          learned prompts of the selected epoch (export format)
      last.safetensors          learned prompts of the last epoch
      predictions_test.csv      test probabilities per image and class (selected epoch)
      predictions_test.npz      the same as arrays: scores (float64 probabilities), logits, labels, classes, images
      summary.md                the closing table
      checkpoint.safetensors    resumable training state (learnable parameters only; data, no code)

``config.yaml``, ``metrics.json``, the prompts files, the checkpoint and ``predictions_test.npz``
name their format and version (:mod:`promptmlr.migrations`, which reads older versions).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import socket
import time
from pathlib import Path, PurePath
from typing import Callable, Collection, Iterator, Sequence

import numpy as np
import yaml

from promptmlr import migrations
from promptmlr.errors import ReportError, UsageError, one_line
from promptmlr.files import atomic_write, write_json_atomic, write_text_atomic
from promptmlr.metrics import sigmoid

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
BEST_PROMPTS = "best.safetensors"
LAST_PROMPTS = "last.safetensors"
SUMMARY_FILE = "summary.md"
CHECKPOINT_FILE = "checkpoint.safetensors"
PREDICTIONS_STEM = "predictions_test"  # .csv and .npz
REPORTED = ("mAP", "mAP_voc2012", "CF1", "OF1", "CF1_top3", "OF1_top3")
RUNS_ROOT = Path("runs")
WHICH = ("best", "last")


LOCK_FILE = ".lock"
DATA_IDENTITY = "data_identity"  # config.yaml's record of the data a run was trained and tested on


def check_out(run_dir: Path, option: str = "--out") -> None:
    """Refuse, in one line naming it, a run folder path the filesystem cannot hold: a file, a name
    too long, a component that is a file, a link to nowhere. Touches nothing."""
    try:
        is_dir, exists = run_dir.is_dir(), run_dir.exists()
        dangling = not exists and run_dir.is_symlink()
    except OSError as error:  # ENAMETOOLONG, EACCES on a parent: Path.exists() lets those through
        raise UsageError(f"{option} {run_dir}: {_reason(error)}; choose another {option}") from None
    if exists and not is_dir:
        raise UsageError(f"{option} {run_dir} is a file, not a folder; choose another {option}")
    if dangling:
        raise UsageError(f"{option} {run_dir} is a link to {os.readlink(run_dir)}, which does not exist; create "
                         f"that folder or choose another {option}")


def _reason(error: OSError) -> str:
    return os.strerror(error.errno).lower() if error.errno else one_line(error)


@contextlib.contextmanager
def run_lock(run_dir: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold an exclusive lock on ``RUN_DIR/.lock`` while a run writes the folder, so that a second run
    into the same ``--out`` refuses instead of mixing its files with the first's.

    The lock is the operating system's (``flock``), held on an open file for the whole run: the
    kernel releases it when the process ends in any way (``kill -9``, a crash, a lost node on NFS
    that supports locks), so a stale lock can never block, and two runs can never both hold it. The
    file's text (host and pid) only names the holder in messages; it stays when the run ends.

    A run that stops with an error before it wrote anything (bad data, weights that do not load, a
    resume refused) removes what this call created, the lock file and the folders, and nothing that
    was there before: a refused run leaves no trace.
    """
    check_out(run_dir)
    created = _missing_folders(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only or full parent, a file on the way, a name too long
        _remove_folders(created)
        raise UsageError(f"--out {run_dir}: cannot create the folder ({_reason(error)}); choose another --out") \
            from None
    before = _entries(run_dir)
    handle, lock_created = _open_lock(run_dir, created)
    try:
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            log(f"taking over the lock {run_dir / LOCK_FILE} of {previous}, which is no longer running")
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        except BaseException:
            if _entries(run_dir) <= before | {LOCK_FILE}:  # nothing written: leave no trace
                if lock_created:
                    (run_dir / LOCK_FILE).unlink(missing_ok=True)  # while held: see _open_lock
                    _remove_folders(created)
                else:
                    handle.seek(0)
                    handle.truncate()
            raise
        handle.seek(0)
        handle.truncate()  # an empty lock file: no holder to name next time
    finally:
        handle.close()  # releases the lock


def _open_lock(run_dir: Path, created: list[Path]):
    """The lock file, opened and locked, and whether this call created it. A refused run removes
    the lock file it created; a process that opened that file just before holds a lock on a file
    no longer at the path, which is no lock: the inode locked must be the one at the path, else the
    path is opened again."""
    path = run_dir / LOCK_FILE
    while True:
        existed = path.exists()
        try:
            handle = open(path, "a+", encoding="utf-8")
        except OSError as error:
            _remove_folders(created)
            raise UsageError(f"--out {run_dir}: cannot write its lock file {path.name} ({_reason(error)}); "
                             f"choose another --out") from None
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(f"{run_dir} is in use by {holder} (lock {path}); wait for that run to finish or "
                             f"choose another --out")
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle, not existed
        handle.close()
        run_dir.mkdir(parents=True, exist_ok=True)


def _missing_folders(run_dir: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` would create for ``run_dir``, deepest first."""
    missing, folder = [], Path(os.path.abspath(run_dir))
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_folders(folders: list[Path]) -> None:
    """Remove the folders this process created (deepest first) where they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another process wrote into it), or gone
            return


def _entries(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in folder.iterdir()}
    except OSError:
        return set()


def _try_lock(handle) -> bool:
    """Take the exclusive lock without waiting (``flock`` on POSIX, ``msvcrt.locking`` on Windows)."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def default_run_dir(dataset: str, method: str, known: float, seed: int) -> Path:
    """``runs/<dataset>-<method>-known<p>-seed<s>-<time>``: a new folder per run, named by what varies."""
    return RUNS_ROOT / f"{dataset}-{method}-known{known:g}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds (part of) a run: its config or a checkpoint (of any format)."""
    return any((run_dir / name).is_file() for name in (CONFIG_FILE, CHECKPOINT_FILE, migrations.LEGACY_CHECKPOINT))


def run_files(run_dir: Path) -> list[str]:
    """The files of a run that ``run_dir`` holds, whatever else is missing (a run whose config was
    deleted still has results a new run would overwrite); a folder in a file's place counts."""
    names = (CONFIG_FILE, CHECKPOINT_FILE, migrations.LEGACY_CHECKPOINT, METRICS_FILE, BEST_PROMPTS, LAST_PROMPTS)
    return [name for name in names if os.path.lexists(run_dir / name)]


def is_folder(path: Path) -> bool:
    """``path.is_dir()``, with a path the filesystem refuses to look up (a name too long, a folder
    it may not enter) as a one-line error naming it, not a traceback."""
    try:
        return path.is_dir()
    except OSError as error:
        raise UsageError(f"{path}: {_reason(error)}") from None


def prompts_path(source: str | Path, which: str = "best") -> Path:
    """A prompts file as given, or the ``best``/``last`` one inside a run folder."""
    source = Path(source)
    if not is_folder(source):
        if source.name == CHECKPOINT_FILE or source.name == migrations.LEGACY_CHECKPOINT:
            raise UsageError(f"{source} is a training checkpoint (what --resume continues from), not learned "
                             f"prompts; pass its run folder {source.parent} or the {BEST_PROMPTS} in it")
        return source
    if which not in WHICH:
        raise UsageError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    candidate = source / (BEST_PROMPTS if which == "best" else LAST_PROMPTS)
    if not candidate.is_file():
        other_which = "last" if which == "best" else "best"
        other = source / (LAST_PROMPTS if other_which == "last" else BEST_PROMPTS)
        if other.is_file():
            raise UsageError(f"{source} has no {candidate.name} but has {other.name}: pass --which {other_which}")
        hint = (f"it holds an unfinished run: continue it with promptmlr tune --out {source} --resume"
                if holds_run(source) else "is it a run folder?")
        raise UsageError(f"{source} has no {candidate.name}; {hint}")
    return candidate


def write_config(run_dir: Path, config: dict, data_identity: dict | None = None) -> Path:
    """``RUN_DIR/config.yaml``: the resolved configuration under its format header (read back with
    :func:`promptmlr.config.load_run_config`), and the identity of the data it was run on
    (:data:`DATA_IDENTITY`, :func:`data_sha256`), which is no setting: ``eval`` and ``--resume``
    check the data against it before scoring or training on it again."""
    record = {**migrations.header("run-config"), **config}
    if data_identity is not None:
        record[DATA_IDENTITY] = data_identity
    return write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(record, sort_keys=False))


def data_sha256(root: Path, class_names: Sequence[str], parts: Sequence[tuple[Sequence[Path], np.ndarray]]) -> str:
    """SHA-256 of a split's identity without reading a pixel: its class names, then for each part
    (e.g. training and validation rows) every image's path relative to ``root`` (absolute when
    outside it, ``/``-separated on every system) and its labels. The same images under another
    root give the same digest; other images, another order or other labels give another one.
    COCO's 123,287 paths take ~0.1 s."""
    digest = hashlib.sha256(json.dumps(list(class_names)).encode())
    prefix = os.path.join(os.path.abspath(root), "")
    for paths, labels in parts:
        names = []
        for path in map(str, paths):
            if not path.startswith(prefix):
                path = os.path.abspath(path)
            names.append(PurePath(path[len(prefix):] if path.startswith(prefix) else path).as_posix())
        matrix = np.ascontiguousarray(labels, dtype=np.int8)
        digest.update(f"\n{len(names)}x{matrix.shape[1] if matrix.ndim == 2 else 0}\n".encode())
        digest.update("\n".join(names).encode("utf-8", "surrogateescape"))
        digest.update(matrix.tobytes())
    return digest.hexdigest()


def config_differences(started: dict, now: dict, prefix: str = "", ignore: Collection[str] = ()) -> list[str]:
    """The dotted keys whose values differ between two nested configs, as ``key: a -> b``, but
    those in ``ignore``."""
    differences = []
    for key in [*started, *(key for key in now if key not in started)]:
        a, b = started.get(key, "(absent)"), now.get(key, "(absent)")
        if f"{prefix}{key}" in ignore:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.", ignore)
        elif a != b:
            differences.append(f"{prefix}{key}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return differences


def write_metrics(run_dir: Path, metrics: dict) -> Path:
    return write_json_atomic(run_dir / METRICS_FILE, {**migrations.header("metrics"), **metrics})


def read_metrics(run_dir: Path) -> dict:
    """``RUN_DIR/metrics.json`` at the current format version, without its header."""
    path = run_dir / METRICS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"{path} is not readable JSON: {one_line(error)}") from None
    if not isinstance(record, dict):
        raise ReportError(f"{path} is not a promptmlr run's metrics file (not a mapping)")
    return migrations.without_header(migrations.upgrade("metrics", record, path, ReportError))


def write_predictions(stem: Path, image_paths: Sequence[Path], class_names: Sequence[str], logits: np.ndarray,
                      labels: np.ndarray) -> None:
    """``<stem>.csv`` (an ``image`` column, one probability column per class) for people and
    spreadsheets, and ``<stem>.npz`` (float64 probabilities as ``scores``, ``logits``, labels, class
    names, images) for ``promptmlr report``, which ranks the logits (see :func:`promptmlr.metrics.evaluate`)."""
    scores = sigmoid(logits)

    def write_csv(temp: Path) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", *class_names])
            for image, row in zip(image_paths, scores):
                writer.writerow([str(image), *(f"{value:.6f}" for value in row)])

    def write_npz(temp: Path) -> None:
        with open(temp, "wb") as handle:  # a file object, so numpy does not append '.npz' to the name
            np.savez_compressed(handle, **migrations.header("predictions"), scores=scores,
                                logits=logits.astype(np.float32), labels=labels.astype(np.int8),
                                class_names=np.array(class_names), images=np.array([str(p) for p in image_paths]))

    atomic_write(stem.with_suffix(".csv"), write_csv)
    atomic_write(stem.with_suffix(".npz"), write_npz)


def summary_table(rows: dict[str, dict], keys: Sequence[str] = REPORTED) -> str:
    """A Markdown table: one row per named result (e.g. 'selected (val)', 'last'), one column per metric."""
    header = "| result | " + " | ".join(keys) + " |"
    rule = "| --- |" + " --- |" * len(keys)
    lines = [header, rule]
    for name, metrics in rows.items():
        cells = [f"{metrics[key]:.2f}" if key in metrics else "–" for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(run_dir: Path, title: str, table: str, notes: Sequence[str]) -> Path:
    text = f"# {title}\n\n{table}\n\n" + "".join(f"- {note}\n" for note in notes)
    return write_text_atomic(run_dir / SUMMARY_FILE, text)


def split_metrics(record: dict, split: str) -> dict:
    """``{"test_mAP": 1, "val_mAP": 2}`` -> ``{"mAP": 1}`` for ``split="test"``."""
    prefix = f"{split}_"
    return {key[len(prefix):]: value for key, value in record.items() if key.startswith(prefix)}
