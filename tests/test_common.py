"""The command-line runner: a console that goes away never stops a run, but lost results count."""
import errno
import io
import os
import signal
import sys

import pytest

from common import run_main


class Unwritable(io.StringIO):
    """A console whose writes fail as a full disk's (or a closed pipe's) do."""

    def __init__(self, code):
        super().__init__()
        self.code, self.fd = code, os.open(os.devnull, os.O_WRONLY)

    def write(self, text):
        raise OSError(self.code, os.strerror(self.code))

    def fileno(self):
        return self.fd


@pytest.fixture(autouse=True)
def no_sigterm_handler(monkeypatch):
    """run_main would make SIGTERM raise in the test process itself."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)


def chatty_main():
    for line in range(3):
        print(f"result {line}")
    return 0


def test_results_lost_to_a_full_disk_are_exit_2_and_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", Unwritable(errno.ENOSPC))
    assert run_main(chatty_main) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left" in err


def test_a_reader_that_left_early_ends_the_run_quietly(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", Unwritable(errno.EPIPE))
    assert run_main(chatty_main) == 0
    assert capsys.readouterr().err == ""
