"""Helpers shared by every step of the pipeline (extract -> preprocess -> train -> predict).

Nothing here imports torch, librosa or another script, so any script can use it and stay light:
the error type that scripts turn into one line on stderr, atomic file writes, and argparse types.
"""
import argparse
import contextlib
import errno
import json
import math
import os
import tempfile
import time
from pathlib import Path

try:  # POSIX only; elsewhere stale temporary files are simply left alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

STALE_TEMP_SECONDS = 600  # a temp file untouched this long, and unlocked, belongs to a dead writer


class DataError(Exception):
    """Bad input or an impossible setting: the message names the problem, where, and what to do."""


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _lock(handle, blocking=True):
    """flock handle exclusively; False when another process holds it (or locks are unsupported)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def remove_stale_temp_files(path, now=None):
    """Delete temporary files that killed writers of path left behind, and no others.

    A live writer holds an exclusive lock on its temp file from the moment it exists, and keeps
    touching it, so a file that is both unlocked and untouched for STALE_TEMP_SECONDS cannot be a
    live writer's, whatever host, container or pid namespace that writer runs in.
    """
    path = Path(path)
    now = time.time() if now is None else now
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - temp.stat().st_mtime < STALE_TEMP_SECONDS:
                continue
            with open(temp, "rb") as handle:
                if _lock(handle, blocking=False):
                    temp.unlink()


def describe_write_error(path, exc, flag):
    """One line for an OSError while writing path: full disk, read-only place, or other."""
    flag_hint = f"pass another {flag}" if flag else "choose another location"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {Path(path).absolute()}: the disk is full: free some space or {flag_hint}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {Path(path).absolute()} ({exc.strerror}): {flag_hint} in a writable place"
    return f"cannot write {Path(path).absolute()} ({exc.strerror or exc}): {flag_hint}"


@contextlib.contextmanager
def atomic_write(path, mode="wb", flag=None):
    """Yield a uniquely named temporary file beside path; it replaces path only if the block ends.

    flag names the command-line option that chose path, for the error message.
    """
    path = Path(path).absolute()
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            _lock(handle)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        temp = None
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, OSError):
            raise DataError(describe_write_error(path, exc, flag)) from None
        raise


def write_json(obj, path, indent=None, flag=None):
    """Write obj as JSON, atomically."""
    with atomic_write(path, "w", flag=flag) as handle:
        json.dump(obj, handle, indent=indent)
        handle.write("\n")


# ---------------------------------------------------------------------------------------------
# argparse types


def file_path(text):
    """argparse type: a non-empty path."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return text


def seed_value(text):
    """argparse type: a seed that numpy and torch both accept (0 to 2**32 - 1)."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 2**32 - 1")
    return value


def at_least(kind, minimum, strict=False):
    """argparse type: a finite number of the given kind, >= minimum (> minimum when strict)."""
    def parse(text):
        value = kind(text)
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"{text} must be a finite number {'>' if strict else '>='} {minimum}")
        return value
    return parse
