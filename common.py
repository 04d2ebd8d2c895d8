"""Helpers shared by every step of the pipeline (extract -> preprocess -> train -> predict).

Nothing here imports torch, librosa or another script, so any script can use it and stay light:
the error types that scripts turn into one line on stderr, atomic file writes, the checks that keep
a script from replacing a file that is not its own, a lock on an output folder, and argparse helpers.
"""
import argparse
import contextlib
import errno
import gc
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

try:  # POSIX only; elsewhere stale temporary files are simply left alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

STALE_TEMP_SECONDS = 600  # a temp file untouched this long, and unlocked, belongs to a dead writer
# The first bytes of a zip file, and so of a NumPy .npz archive (the second: an empty archive).
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
HEAD_BYTES = 4096  # how much of an existing output file check_output_file shows to its recogniser


class DataError(Exception):
    """Bad input or an impossible setting: the message names the problem, where, and what to do."""


class UsageError(Exception):
    """A setting that cannot work on this machine, such as --device cuda without a GPU."""


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
    """One line for an OSError while writing path: full disk, read-only place, or other.

    flag names the option that chose path; None when no option did (then: another folder).
    """
    elsewhere = f"pass another {flag}" if flag else "run the script from another folder"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {Path(path).absolute()}: the disk is full: free some space or {elsewhere}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write {Path(path).absolute()} ({exc.strerror}): {elsewhere} "
                f"in a writable place")
    return f"cannot write {Path(path).absolute()} ({exc.strerror or exc}): {elsewhere}"


def file_mode(path):
    """Permissions for a new version of path: the old file's, else what open() would give."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    return 0o666 & ~umask


def missing_folders(folder):
    """folder and those of its parents that do not exist, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def atomic_write(path, mode="wb", flag=None):
    """Yield a uniquely named temporary file beside path; it replaces path only if the block ends.

    flag names the command-line option that chose path, for the error message.
    """
    path = Path(path).absolute()
    temp, created = None, []
    try:
        created = missing_folders(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            _lock(handle)
            # mkstemp makes the file private (0600); the result should be as readable as a file
            # written with open(), or as the one it replaces.
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), file_mode(path))
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        temp = None
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        for folder in created:  # a failed write leaves no trace, not even an empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):
            raise DataError(describe_write_error(path, exc, flag)) from None
        raise


def write_json(obj, path, indent=None, flag=None):
    """Write obj as JSON, atomically."""
    with atomic_write(path, "w", flag=flag) as handle:
        json.dump(obj, handle, indent=indent)
        handle.write("\n")


# ---------------------------------------------------------------------------------------------
# Outputs: never replace a stranger's file, one run per output folder


def check_output_file(path, flag, kind, suffix, is_ours):
    """Refuse an existing output path unless it is a regular file that is_ours(head) recognises.

    head is the file's first HEAD_BYTES bytes; an empty file is always replaceable (it holds
    nothing to lose). kind names what may be replaced ("a NumPy archive (.npz)") and suffix the
    file name to ask for instead (".npz"). Anything else at path -- a folder, a device, another
    kind of file -- is someone else's and is never replaced: DataError naming flag.
    """
    path = Path(path).absolute()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DataError(
            f"{flag} {path} cannot be checked ({exc.strerror}): pass another {flag}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{flag} {path} is a folder: pass the path of a {suffix} file with {flag}")
    if not stat.S_ISREG(mode):
        raise DataError(f"{flag} {path} is not a regular file: pass the path of a {suffix} file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise DataError(f"{flag} {path} cannot be read ({exc.strerror}) to check that it is "
                        f"{kind}: pass another {flag}") from None
    if head and not is_ours(head):
        raise DataError(f"{flag} {path} exists and is not {kind}, so it is not replaced: pass "
                        f"another {flag} or move that file away")


def check_archive_output(path, flag):
    """Refuse an output path that holds something other than a NumPy archive (.npz).

    Any zip file counts, damaged ones included, so that a broken cache is rebuilt.
    """
    check_output_file(path, flag, "a NumPy archive (.npz)", ".npz",
                      lambda head: head[:4] in ZIP_SIGNATURES)


def check_output_folder(folder, flag, names):
    """Refuse an output folder that is a file, is not writable, or holds a non-file at names.

    Only files of the given names are ever written there, so a file of another name is never at
    risk; a folder or device under one of those names would make the final write fail.
    """
    folder = Path(folder).absolute()
    # os.path.exists, unlike Path.exists, answers False rather than raising on an unreadable path.
    existing = next(p for p in (folder, *folder.parents) if os.path.exists(p))
    if not os.path.isdir(existing):
        what = "is a file" if existing == folder else f"is inside {existing}, which is a file"
        raise DataError(f"{flag} {folder} {what}, not a folder: pass a folder with {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{flag} {folder}: {existing} is not writable: pass a writable {flag}")
    for name in names:
        entry = folder / name
        if entry.is_symlink() or (entry.exists() and not entry.is_file()):
            raise DataError(f"{entry} is not a regular file, so it is not replaced: move it away "
                            f"or pass another {flag}")


def describe_holder(text):
    """The holder recorded in a lock file, as "pid 12 on host, since 2026-01-01 10:00:00"."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _open_locked(path, flag, folder):
    """Open and flock path without waiting; DataError naming the holder when another has it."""
    while True:
        handle = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(handle.read())
            handle.close()
            raise DataError(f"{flag} {folder} is in use by another training run ({holder}): wait "
                            f"for it to finish or pass another {flag}") from None
        except OSError as exc:  # a file system without locks: run, but say so
            print(f"warning: cannot lock {path} ({exc.strerror}); make sure no other run writes "
                  f"to {folder}", file=sys.stderr)
            return handle
        # A holder that finished removes the file; if that happened while this one was opening
        # it, the lock is on a removed file and means nothing: start again with a new file.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        handle.close()


@contextlib.contextmanager
def folder_lock(folder, name, flag):
    """Hold an exclusive lock on folder for the block, through a lock file called name in it.

    The lock file records the holder's pid, host and start time for the error message of a
    second run. The lock is the flock, not the file's existence, so a file that a killed run
    left behind does not block anyone; a run that ends normally removes it.
    """
    folder = Path(folder).absolute()
    if fcntl is None:  # pragma: no cover - Windows: no flock
        yield
        return
    path = folder / name
    try:
        handle = _open_locked(path, flag, folder)
    except OSError as exc:
        raise DataError(describe_write_error(path, exc, flag)) from None
    try:
        handle.truncate(0)
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}, handle)
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still locked, so no other run can have taken it over
        handle.close()


# ---------------------------------------------------------------------------------------------
# Processes


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C back while the block forks processes, and deliver it when the block ends.

    At a fork Python runs its own hooks, and a KeyboardInterrupt raised inside one of them is
    printed as "Exception ignored" and lost: the run went on as if Ctrl-C had not been pressed.
    Outside the main thread (where Python delivers signals), or where a C library owns SIGINT,
    the block runs unguarded.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is None):
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        signal.raise_signal(signal.SIGINT)  # to the handler it was meant for


def fork_context():
    """multiprocessing's fork context where forking is the platform's way to start processes
    (Linux, up to Python 3.13), else None: the default, which starts fresh interpreters."""
    start_methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork") if start_methods[0] == "fork" else None


def run_command(main):
    """Run a script's main() as its command line does; return the exit status.

    A reader that stops early (`| head`) ends the output quietly, as Python's documentation
    advises for a closed pipe: the rest goes to the null device, and the status is 1. Ctrl-C that
    main() does not handle itself (scripts with nothing to say about their outputs) is one line,
    status 130.
    The heap is then frozen, so that the interpreter's last garbage collections skip it: they spent
    0.2 to 0.4 s on the objects of librosa, scipy and torch, which the process frees as it ends.
    """
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        status = 130
    gc.freeze()
    return status


# ---------------------------------------------------------------------------------------------
# argparse types and help


def file_path(text):
    """argparse type: a non-empty path."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except the meaningless "(default: False)" of on/off flags."""

    def _get_help_string(self, action):
        if action.nargs == 0:  # store_true and friends take no value, so have no default to show
            return action.help
        return super()._get_help_string(action)


def device_name(text):
    """argparse type: auto, cpu, cuda or cuda:N (whether it exists here is checked with torch)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of auto, cpu, cuda, cuda:N")
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
