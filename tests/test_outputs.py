"""Tests of what the scripts may write: never a stranger's file, one training run per model folder,
explicit split settings honoured, and error messages that name the path and the flag to change."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import common
import extract
import preprocess
import train
from conftest import ROOT, TINY, write_json_file

STRANGERS = {
    "text": lambda path: path.write_text("my notes\n"),
    "json": lambda path: path.write_text('{"mine": true}\n'),
    "folder": lambda path: (path.mkdir(), (path / "inside.txt").write_text("keep me")),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The current folder, with a tiny data.json in it."""
    write_json_file(preprocess.make_demo_data(**TINY), tmp_path / "data.json")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(folder):
    """Every path under folder with the bytes of each file (None for a folder)."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(Path(folder).rglob("*"))}


def run_main(module, *args):
    """module.main(args) in-process; returns the exit status, argparse's SystemExit included."""
    try:
        return module.main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code


def device_flag(script):
    """--device cpu for train.py, which has the flag; nothing for preprocess.py."""
    return ["--device", "cpu"] if script is train else []


def one_error_line(capsys):
    """(the single stderr line, stdout) of what ran; fails unless stderr is one line."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0], captured.out


# ---------------------------------------------------------------------------------------------
# Never a stranger's file


@pytest.mark.parametrize("kind", STRANGERS)
@pytest.mark.parametrize("script", [preprocess, train], ids=["preprocess", "train"])
def test_a_cache_path_holding_a_stranger_is_refused_and_kept(workdir, capsys, script, kind):
    target = workdir / ("notes.txt" if kind == "text" else "other.json" if kind == "json" else "dir")
    STRANGERS[kind](target)
    before = snapshot(workdir)
    status = run_main(script, "--cache", target.name, *device_flag(script))
    line, out = one_error_line(capsys)
    assert status == 2
    assert f"--cache {target}" in line  # the flag and the absolute path
    assert "Preprocessing" not in out
    assert snapshot(workdir) == before  # nothing replaced, created or left behind


def test_a_model_dir_that_is_a_file_fails_before_preprocessing(workdir, capsys):
    (workdir / "models").write_text("a file, not a folder")
    before = snapshot(workdir)
    assert run_main(train, "--model-dir", "models", "--device", "cpu") == 2
    line, out = one_error_line(capsys)
    assert f"--model-dir {workdir / 'models'} is a file" in line
    assert "Preprocessing" not in out and snapshot(workdir) == before


def test_a_folder_under_one_of_the_model_files_names_fails_before_preprocessing(workdir, capsys):
    (workdir / "models" / train.METRICS_FILE).mkdir(parents=True)
    before = snapshot(workdir)
    assert run_main(train, "--model-dir", "models", "--device", "cpu") == 2
    line, out = one_error_line(capsys)
    assert str(workdir / "models" / train.METRICS_FILE) in line and "--model-dir" in line
    assert "Preprocessing" not in out and snapshot(workdir) == before


def test_archive_check_accepts_npz_files_and_nothing_else(tmp_path):
    common.check_archive_output(tmp_path / "absent.npz", "--cache")
    (tmp_path / "empty.npz").write_bytes(b"")  # nothing to lose
    common.check_archive_output(tmp_path / "empty.npz", "--cache")
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 then damage")  # a damaged cache: rebuilt
    common.check_archive_output(tmp_path / "zip.npz", "--cache")
    for path in (Path(os.devnull), tmp_path):
        with pytest.raises(common.DataError, match=r"^--cache /"):
            common.check_archive_output(path, "--cache")
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(common.DataError, match=r"notes\.txt exists and is not a NumPy archive"):
        common.check_archive_output(tmp_path / "notes.txt", "--cache")


def test_extracts_output_check_replaces_only_a_data_json(tmp_path):
    (tmp_path / "data.json").write_text('{"mapping": []}')
    extract.check_replaceable(tmp_path / "data.json")
    (tmp_path / "empty.json").write_text("")  # nothing in it to lose
    extract.check_replaceable(tmp_path / "empty.json")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "other.json").write_text('{"name": "not ours"}')
    for name in ("notes.txt", "other.json"):
        with pytest.raises(common.DataError, match=rf"^--data \S+{name} exists and is not a "
                                                   r"data\.json .*, so it is not replaced: pass "
                                                   r"another --data"):
            extract.check_replaceable(tmp_path / name)


# ---------------------------------------------------------------------------------------------
# One training run per model folder


def test_a_second_run_into_a_locked_model_folder_names_the_folder_and_the_holder(workdir, capsys):
    models = workdir / "models"
    models.mkdir()
    with common.folder_lock(models, train.LOCK_FILE, "--model-dir"):
        # flock locks belong to an open file, so this process's second open conflicts too.
        assert run_main(train, "--model-dir", "models", "--epochs", 1, "--device", "cpu", "--no-plots") == 2
        line, out = one_error_line(capsys)
    assert f"--model-dir {models} is in use" in line
    assert f"pid {os.getpid()} on {socket.gethostname()}" in line
    assert "Epoch 1" not in out
    assert [p.name for p in models.iterdir()] == []  # no checkpoint, and the lock file removed


def test_a_busy_model_folder_fails_before_any_preprocessing(workdir, capsys, monkeypatch):
    models = workdir / "models"
    models.mkdir()
    monkeypatch.setattr(preprocess, "load_data", lambda *a, **k: pytest.fail("preprocessed"))
    with common.folder_lock(models, train.LOCK_FILE, "--model-dir"):
        assert run_main(train, "--model-dir", "models", "--device", "cpu") == 2
    assert "is in use" in one_error_line(capsys)[0]


def test_training_locks_the_model_folder_and_writes_only_its_own_names(workdir, monkeypatch):
    models = workdir / "models"
    models.mkdir()
    (models / "notes.txt").write_text("keep me")
    real_fit, holders = train.fit, []

    def fit_while_another_tries(*args, **kwargs):
        with pytest.raises(common.DataError, match="in use by another training run"):
            with common.folder_lock(models, train.LOCK_FILE, "--model-dir"):
                pass
        holders.append(json.loads((models / train.LOCK_FILE).read_text()))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit_while_another_tries)
    assert run_main(train, "--model-dir", "models", "--epochs", 1, "--device", "cpu", "--no-plots") == 0
    assert holders[0]["pid"] == os.getpid() and holders[0]["host"] == socket.gethostname()
    assert (models / "notes.txt").read_text() == "keep me"
    written = {p.name for p in models.iterdir()} - {"notes.txt"}
    # Everything but the lock file (gone) and the pictures (--no-plots).
    assert written == set(train.MODEL_DIR_FILES) - {train.LOCK_FILE, *train.PICTURE_FILES}


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path):
    (tmp_path / train.LOCK_FILE).write_text('{"pid": 999999, "host": "gone", "since": "then"}')
    with common.folder_lock(tmp_path, train.LOCK_FILE, "--model-dir"):
        holder = json.loads((tmp_path / train.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid()
    assert not (tmp_path / train.LOCK_FILE).exists()


# ---------------------------------------------------------------------------------------------
# Explicit split settings without data.json


@pytest.mark.parametrize("argv, given", [
    ([], set()),
    (["--split-seed", "42"], {"seed"}),  # given, even though it equals the default
    (["--split-se", "7", "--val-split=0.25"], {"seed", "val_split"}),  # abbreviated, and with =
    (["--split-by", "auto", "--test-split", "0.1", "--seed", "3"], {"split_by", "test_split"}),
])
def test_split_flags_given_on_the_command_line_are_told_apart_from_defaults(argv, given):
    assert train.parse_args(argv).explicit_split == given


@pytest.fixture
def cache_without_data(workdir):
    """A cache built with the default split, then data.json removed; returns the cache path."""
    cache = workdir / preprocess.PREPROCESSED_DATA_PATH
    preprocess.prepare_cache("data.json", cache, preprocess.SplitSettings(), log=lambda line: None)
    (workdir / "data.json").unlink()
    return cache


def test_an_explicit_split_flag_the_cache_cannot_honour_is_an_error(cache_without_data, capsys):
    before = snapshot(cache_without_data.parent)
    assert run_main(train, "--split-seed", 7, "--epochs", 1, "--device", "cpu", "--no-plots") == 2
    line, out = one_error_line(capsys)
    assert "--split-seed" in line and "seed 42 -> 7" in line
    assert str(cache_without_data) in line and str(cache_without_data.parent / "data.json") in line
    assert "Epoch 1" not in out and snapshot(cache_without_data.parent) == before


def test_defaults_or_matching_explicit_flags_still_use_the_cache_as_it_is(cache_without_data):
    log = []
    settings = preprocess.SplitSettings(seed=7)  # as if train.py's default seed were 7
    arrays = preprocess.prepare_cache("data.json", cache_without_data, settings, log=log.append)
    assert int(arrays["seed"]) == 42 and "cannot apply seed 42 -> 7" in log[0]
    arrays = preprocess.prepare_cache("data.json", cache_without_data, preprocess.SplitSettings(),
                                      log=log.append, explicit={"seed", "split_by"})
    assert int(arrays["seed"]) == 42 and "cannot apply" not in log[1]


# ---------------------------------------------------------------------------------------------
# Messages name the absolute path and the flag


@pytest.mark.parametrize("script", [preprocess, train], ids=["preprocess", "train"])
def test_missing_data_names_the_absolute_path_and_prints_no_preprocessing_line(tmp_path, capsys,
                                                                              monkeypatch, script):
    monkeypatch.chdir(tmp_path)
    assert run_main(script, *device_flag(script)) == 2
    line, out = one_error_line(capsys)
    assert f"--data {tmp_path / 'data.json'} not found" in line
    assert "Preprocessing" not in out
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, says_full", [(errno.ENOSPC, True), (errno.EROFS, False),
                                             (errno.EACCES, False), (errno.ENAMETOOLONG, False)])
def test_write_errors_say_free_some_space_only_on_a_full_disk(tmp_path, code, says_full):
    message = common.describe_write_error(tmp_path / "x.npz", OSError(code, os.strerror(code)),
                                          "--cache")
    assert message.startswith(f"cannot write {tmp_path / 'x.npz'}")
    assert "--cache" in message
    assert ("free some space" in message) == says_full


@pytest.mark.parametrize("failing, flag", [("preprocessed_data.npz", "--cache"),
                                           (train.MAPPING_FILE, "--model-dir"),
                                           (train.BEST_MODEL_FILE, "--model-dir"),
                                           (train.PICTURE_FILES[0], "--model-dir")])
def test_every_write_in_a_read_only_place_names_its_flag(workdir, capsys, monkeypatch, failing,
                                                         flag):
    real_mkstemp = common.tempfile.mkstemp

    def read_only_for(*args, prefix="", **kwargs):
        if prefix == f".{failing}.":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(common.tempfile, "mkstemp", read_only_for)
    plots = [] if failing in train.PICTURE_FILES else ["--no-plots"]
    assert run_main(train, "--model-dir", "models", "--epochs", 1, "--device", "cpu", *plots) == 2
    line, _ = one_error_line(capsys)
    path = workdir / failing if flag == "--cache" else workdir / "models" / failing
    assert f"cannot write {path} (Read-only file system): pass another {flag}" in line
    assert "free some space" not in line


@pytest.mark.parametrize("cache, args, says", [
    (None, [], "there is no cache at --cache"),
    (b"PK\x03\x04 damaged", [], "is unreadable or of an older format"),
    (b"PK\x03\x04 damaged", ["--reprocess"], "--reprocess asks to rebuild"),
])
def test_missing_data_says_why_the_cache_cannot_stand_in(tmp_path, capsys, monkeypatch, cache, args,
                                                         says):
    monkeypatch.chdir(tmp_path)
    if cache is not None:
        (tmp_path / "preprocessed_data.npz").write_bytes(cache)
    assert run_main(train, "--device", "cpu", *args) == 2
    line, out = one_error_line(capsys)
    assert line.startswith(f"error: --data {tmp_path / 'data.json'} not found, ") and says in line
    assert str(tmp_path / "preprocessed_data.npz") in line and "Preprocessing" not in out


def test_ctrl_c_while_processes_fork_is_raised_once_the_forks_are_done():
    ran_to_the_end = []
    with pytest.raises(KeyboardInterrupt):
        with common.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # Python runs the signal's handler here: it must not raise
            ran_to_the_end.append(True)
    assert ran_to_the_end == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_reader_that_stops_early_ends_the_output_quietly():
    code = ("import common, sys\n"
            "sys.exit(common.run_command(lambda: [print(i) for i in range(10**6)] and 0))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"0\n"
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(timeout=30) == 1
    assert proc.stderr.read() == b""  # no BrokenPipeError traceback
