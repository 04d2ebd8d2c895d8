"""What every step of the pipeline shares: one-line errors, safe file writes, the command line.

Nothing here imports torch or librosa, so any script can use it and stay light.
- DataError: bad input; the scripts print its one line and exit with status 2.
- atomic_write: a file appears whole or not at all, and only replaces a file this project wrote.
- folder_lock: one training run at a time per model folder.
- run_main: Ctrl-C and SIGTERM end a script with one line, and a closed console never stops a run.
"""
import argparse
import contextlib
import errno
import os
import re
import signal
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np

try:  # POSIX; elsewhere there are no locks, and leftover temp files are simply kept
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

TEMP_SUFFIX = ".genre-tmp"  # atomic_write's temp files: .<target>.<8 random chars>.genre-tmp
LOCK_FILE = ".lock"  # in a model folder while a run writes to it (the flock, not the file, locks)
HEAD_BYTES = 4096  # how much of a file the content checks look at


class DataError(Exception):
    """Bad input or an impossible setting: the message names the problem, where, and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, Slurm), raised where Ctrl-C would be, to be handled alike."""


def interrupt_status(exc):
    """The exit status of a run stopped by exc: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def interrupt_name(exc):
    """'Interrupted' (Ctrl-C) or 'Terminated' (SIGTERM), to start the run's last line."""
    return "Terminated" if isinstance(exc, Terminated) else "Interrupted"


# ---------------------------------------------------------------------------------------------
# Reading and writing files


def input_file(path, flag, hint):
    """Refuse path unless it is an existing regular file (a FIFO or device would block reads)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        what = "not found" if exc.errno == errno.ENOENT else f"cannot be read ({exc.strerror})"
        raise DataError(f"{flag} {path}: {what}: {hint}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise DataError(f"{flag} {path} is {kind}: {hint}")
    return path


def read_head(path):
    """The first HEAD_BYTES bytes of a regular file, or b"" when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES)
    except OSError:
        return b""


def check_replaceable(path, flag, kind, is_ours):
    """Refuse to write path when something there is not a file this project wrote.

    Every output goes through here. is_ours(path) recognises the format by content (a zip file or
    a JSON file is not enough); an empty file holds nothing to lose. Anything else is left alone.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DataError(f"{flag} {path} cannot be checked ({exc.strerror}): pass another {flag}")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{flag} {path} exists and is not a regular file, so it is not replaced: "
                        f"pass another {flag}")
    try:
        ours = info.st_size == 0 or is_ours(path)
    except Exception:  # noqa: BLE001 - a recogniser's failure on a stranger's file means "not ours"
        ours = False
    if not ours:
        raise DataError(f"{flag} {path} exists and is not {kind} written by this project, so it "
                        f"is not replaced: pass another {flag} or move that file away")


def write_error(path, exc, flag):
    """One line for an OSError while writing path: full disk, read-only place, or other."""
    elsewhere = f"pass another {flag}" if flag else "run it from another folder"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: the disk is full: free some space or {elsewhere}"
    return f"cannot write {path} ({exc.strerror or exc}): {elsewhere} in a writable place"


def _try_lock(handle):
    """flock handle without waiting; True when this process now holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_leftovers(path):
    """Delete the temp files of path that killed writers left: those no live writer has locked."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError), open(entry.path, "rb") as handle:
                    if _try_lock(handle):
                        os.unlink(entry.path)


@contextlib.contextmanager
def atomic_write(path, mode="wb", flag=None):
    """Yield a temp file beside path that replaces path only when the block succeeds.

    The temp file is locked while it is written, so a later writer can tell a dead writer's
    leftover (removed) from a live one's. Any failure removes it; a full disk is one DataError.
    """
    path = Path(path).absolute()
    remove_leftovers(path)
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with open(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            _try_lock(handle)
            os.chmod(temp, 0o666 & ~current_umask())  # mkstemp's 0600 -> as open() would make it
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(temp, path)  # while still locked, so no one takes it for a leftover
            temp = None
    except OSError as exc:
        raise DataError(write_error(path, exc, flag)) from None
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def current_umask():
    """The process's umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def folder_lock(folder, flag):
    """Hold an flock on folder's lock file for the block; DataError when another run holds it."""
    path = Path(folder) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise DataError(write_error(path, exc, flag)) from None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataError(f"{flag} {folder} is in use by another training run: wait for it "
                                f"to finish or pass another {flag}") from None
            except OSError:  # a file system without locks: run unguarded
                pass
        yield


# ---------------------------------------------------------------------------------------------
# The command line


class Console:
    """A console stream that drops its output once its reader has gone (`| head`, /dev/full),
    instead of stopping the run: a training run still finishes and saves."""

    def __init__(self, stream):
        self._stream = stream
        self.lost = None  # the error that made it drop its output

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError:
            self._drop()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except OSError:
            self._drop()

    def _drop(self):
        self.lost = self.lost or sys.exc_info()[1]
        # Point the descriptor at the null device, as Python's documentation advises for a closed
        # pipe: what is still buffered, and the flush at exit, then go nowhere without an error.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())


def _raise_terminated(signum, frame):
    raise Terminated()


def run_main(main):
    """Run a script's main() as its command line does, and return the exit status.

    SIGTERM is raised as Terminated, a KeyboardInterrupt, so each script's Ctrl-C handling covers
    it; what main() leaves unhandled is one line, exit status 130 (Ctrl-C) or 143 (SIGTERM).
    Output that could not be written (a full disk, not a reader that left) makes the status 2.
    File names that are not UTF-8 are printed with escapes instead of failing.
    """
    signal.signal(signal.SIGTERM, _raise_terminated)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Console(sys.stdout), Console(sys.stderr)
    try:
        status = main()
        sys.stdout.flush()
    except KeyboardInterrupt as exc:
        print(f"\n{interrupt_name(exc)}.", file=sys.stderr)
        return interrupt_status(exc)
    finally:
        lost = sys.stdout.lost
        sys.stdout, sys.stderr = streams
    if status == 0 and lost is not None and lost.errno != errno.EPIPE:
        # A reader that stopped early (`| head`) chose to; a full disk lost what it had to keep.
        print(f"error: the output could not be written ({lost.strerror}): it is incomplete",
              file=sys.stderr)
        return 2
    return status


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where it means nothing: on/off flags, and None."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default is None:
            return action.help
        return super()._get_help_string(action)


def at_least(kind, minimum, strict=False, maximum=None):
    """argparse type: a kind (int or float) of at least minimum (above it when strict), and at
    most maximum if given."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value == value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"{text} must be {'above' if strict else 'at least'} {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text} must be at most {maximum}")
        return value
    return parse


def vote(probabilities):
    """A song's genre from its segments' probabilities (n, genres): the majority vote, a tie going
    to the higher mean probability. Returns (label, votes per genre, mean probability per genre).

    The one rule for a whole song, in train.py's track-level test and in predict.py alike.
    """
    votes = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    means = probabilities.mean(axis=0)
    tied = np.flatnonzero(votes == votes.max())
    return int(tied[np.argmax(means[tied])]), votes, means
