"""Writing files so that readers never see half of one: temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from promptmlr.errors import PromptMLRError, UsageError


def _pid_space() -> str:
    """What makes a pid mean one process: the host, this boot, and the pid namespace (containers
    that share a hostname and a folder have pid spaces of their own)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # not Linux: the host alone
        boot = namespace = "?"
    return hashlib.sha256(f"{socket.gethostname()}|{boot}|{namespace}".encode()).hexdigest()[:8]


# Temporary files and folders are named ``.<target>.<pid space>-<pid>.<random>``, so that one left
# by a process that was killed can be told from one being written right now, and removed.
_SPACE = _pid_space()
_OWNER = f"{_SPACE}-{os.getpid()}"
_TEMPORARY = re.compile(rf"^\..+\.{_SPACE}-(\d{{1,10}})\.[^.]+(\.tmp)?$")
_SWEPT: set[Path] = set()
NAME_MAX = 255  # bytes in a file name on Linux, macOS and Windows filesystems
# a temporary's name around its target's: "." + target + ".<space>-<pid>." + mkstemp's 8 characters + ".tmp"
_TEMPORARY_EXTRA = 1 + 1 + len(_SPACE) + 1 + 10 + 1 + 8 + len(".tmp")


def shorten_name(name: str, limit: int = NAME_MAX) -> str:
    """``name`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    return name.encode()[:limit].decode(errors="ignore")


def _temporary_prefix(target: Path) -> str:
    """The start of a temporary's name beside ``target``: a target name near the filesystem's limit
    is cut in it, so that a file whose own name fits can always be written."""
    return f".{shorten_name(target.name, NAME_MAX - _TEMPORARY_EXTRA)}.{_OWNER}."


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` whose writing process is gone (a
    ``kill -9`` during a checkpoint or cache build), once per folder and process. Only those of this
    pid space are considered: others' processes cannot be seen from here, so theirs stay, as do the
    temporaries of running processes."""
    folder = Path(folder)
    if folder in _SWEPT or not folder.is_dir():
        return []
    _SWEPT.add(folder)
    removed = []
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match and not process_running(int(match.group(1))):
            try:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry)
            except OSError:  # not ours to remove after all (permissions), or gone already
                pass
    return removed


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists in this pid space. On Windows, where ``os.kill(pid, 0)`` is no
    such test, every process counts as running: nothing is removed there."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # exists but belongs to another user / not a pid at all
        return True
    return True


class DiskFullError(PromptMLRError, OSError):
    """The disk filled up while a file was written; the file it would have replaced is kept."""


def _out_of_space(error: BaseException) -> bool:
    """An ``ENOSPC``, whichever library reports it (safetensors and torch wrap it in their own errors)."""
    return ((isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))
            or "No space left on device" in str(error) or "Disk quota exceeded" in str(error))


@contextlib.contextmanager
def _disk_full_as_one_line(path: Path) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        if not _out_of_space(error):
            raise
        raise DiskFullError(f"no space left on {path.parent} while writing {path.name}; free some space there and "
                            f"run again (the {path.name} already there, if any, is kept)") from None


def _temporary_beside(path: Path) -> str:
    """A new empty temporary file in ``path``'s folder (made if missing), after the temporaries that
    dead processes left there are removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
    os.close(handle)
    return temp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)`` then rename it over ``path`` (atomic on POSIX and Windows). If the disk
    fills up, the temp file goes, ``path`` keeps its old content and a :class:`DiskFullError` says so."""
    path = Path(path)
    temp = _temporary_beside(path)
    try:
        with _disk_full_as_one_line(path):
            write(Path(temp))
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


def write_texts_together(texts: dict[Path, str]) -> list[Path]:
    """Write every ``path: text`` to a temporary beside its path, and only once all are written,
    rename them into place in the order given (put the file that readers look for last): a failure
    while writing, a full disk included, leaves every path as it was."""
    temporaries: dict[Path, str] = {}
    try:
        for path, text in texts.items():
            with _disk_full_as_one_line(path):
                temporaries[path] = _temporary_beside(path)
                Path(temporaries[path]).write_text(text, encoding="utf-8")
            os.chmod(temporaries[path], 0o666 & ~_umask())
        for path, temp in temporaries.items():
            os.replace(temp, path)
    finally:
        for temp in temporaries.values():
            if os.path.exists(temp):
                os.remove(temp)
    return list(texts)


def atomic_directory(target: str | Path, build: Callable[[Path], None], done_file: str = "meta.json") -> Path:
    """Have ``build(temp_dir)`` fill a temporary folder beside ``target``, then rename it into place,
    so that nobody ever reads a half-built folder; a ``target`` whose ``done_file`` exists is kept as
    it is (built earlier, or by a concurrent process that finished first)."""
    target = Path(target)
    if (target / done_file).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temporary_prefix(target)))
    try:
        # mkdtemp makes a 0700 folder, which would keep a shared cache from everyone else; give it the
        # permissions a folder made here normally has (the umask's)
        os.chmod(temp, 0o777 & ~_umask())
        with _disk_full_as_one_line(target):
            build(temp)
        try:
            os.replace(temp, target)
        except OSError:
            if not (target / done_file).is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    """numpy scalars and paths in metrics and configs."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def user_cache_dir(name: str) -> Path:
    """``~/.cache/promptmlr/<name>``, where caches go unless told otherwise. Where Python finds no
    home directory (HOME unset and the user id without a passwd entry, as in some containers) it is
    ``<temp dir>/promptmlr-<uid>/<name>``: a cache is worth keeping, not worth refusing to start over."""
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        return Path(tempfile.gettempdir()) / f"promptmlr-{os.getuid() if hasattr(os, 'getuid') else 'user'}" / name
    return home / ".cache" / "promptmlr" / name


def shipped_file(folder: str, name: str) -> Path | None:
    """``<folder>/<name>`` shipped with promptmlr (``prompts/``, ``configs/``): in a source checkout,
    or under ``<prefix>/share/promptmlr`` where a wheel install puts them (pyproject data-files)."""
    for root in (Path(__file__).resolve().parents[1], Path(sys.prefix) / "share" / "promptmlr"):
        candidate = root / folder / name
        if candidate.is_file():
            return candidate
    return None


def finite_or_null(value: Any, replaced: list[str] | None = None) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts, lists and tuples) made None, so
    that ``json.dumps(..., allow_nan=False)`` writes JSON that every parser reads; each value
    replaced is appended to ``replaced``."""
    if isinstance(value, float) and not math.isfinite(value):
        if replaced is not None:
            replaced.append(str(value))
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item, replaced) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item, replaced) for item in value]
    return value


def check_writable_target(option: str, path: Path, example: str) -> None:
    """Refuse, before any work, an output ``path`` that is a folder (``example``: a file name to
    suggest in it) or that cannot be made: the folders to be made are made in the first folder up
    the path that exists, which must be a folder this process may write in."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; name the file to write, e.g. {path / example}")
    folder = Path(os.path.abspath(path.parent))
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {folder} is not a writable folder; choose another {option}")
