"""Shared fixtures: small synthetic data sets, data.json writers and preprocess.py runners."""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

# The tests' models and batches are tiny, so a second OpenMP thread only adds hand-offs; on shared
# cores its spin-waiting quadrupled the suite's CPU time (34 s -> 8 s for the training tests with
# one thread). Set before anything imports torch, and inherited by the scripts' subprocesses; an
# OMP_NUM_THREADS already in the environment wins. The scripts themselves keep torch's default.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so that `import preprocess` works from any working directory

import preprocess  # noqa: E402

SCRIPT = ROOT / "preprocess.py"
# Small enough that a subprocess run costs little more than its imports; big enough for a 70/20/10
# stratified split of 3 genres at track level (30 tracks -> 3 test tracks, one per genre).
SMALL = dict(genres=3, tracks_per_genre=10, segments_per_track=2, frames=8, coeffs=4)
# Enough for a few epochs of real training in about a second (84 training segments).
TINY = dict(genres=3, tracks_per_genre=10, segments_per_track=4, frames=16, coeffs=8)


@pytest.fixture
def make_data():
    """make_demo_data with small defaults; keyword arguments override them."""

    def make(**overrides):
        return preprocess.make_demo_data(**{**SMALL, **overrides})

    return make


def write_json_file(data, path):
    """Write a dict as JSON (NaN/Infinity tokens allowed), or bytes/str as they are."""
    path = Path(path)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def write_data(tmp_path):
    """Write data (dict, str or bytes) to tmp_path/name and return its path."""

    def write(data, name="data.json"):
        return write_json_file(data, tmp_path / name)

    return write


def run_script(*args, cwd, timeout=120):
    """Run `python preprocess.py ARGS` in cwd and return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def run_cli(tmp_path):
    """Run `python preprocess.py ARGS` in tmp_path (or cwd) and return the CompletedProcess."""

    def run(*args, cwd=None, timeout=120):
        return run_script(*args, cwd=cwd or tmp_path, timeout=timeout)

    return run


def read_json(path):
    """Parse a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_npz(path):
    """Every array of an npz file, read without pickle."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture
def build_cache(tmp_path):
    """Run preprocess.main in-process on data; return the cache's arrays (and stdout if asked)."""

    def build(data, *args, output="preprocessed_data.npz", data_name="data.json", stdout=False):
        json_path = write_json_file(data, tmp_path / data_name)
        cache_path = tmp_path / output
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            status = preprocess.main(["--data", str(json_path), "--cache", str(cache_path),
                                      *map(str, args)])
        assert status == 0, f"preprocess.main failed on good data: {buffer.getvalue()}"
        arrays = load_npz(cache_path)
        return (arrays, buffer.getvalue()) if stdout else arrays

    return build


@pytest.fixture(scope="session")
def good_cache_bytes(tmp_path_factory):
    """The bytes of a cache made by a successful run, to plant before a run that must fail."""
    folder = tmp_path_factory.mktemp("good")
    json_path = write_json_file(preprocess.make_demo_data(**SMALL), folder / "data.json")
    cache_path = folder / "preprocessed_data.npz"
    with contextlib.redirect_stdout(io.StringIO()):
        assert preprocess.main(["--data", str(json_path), "--cache", str(cache_path)]) == 0
    return cache_path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Synthetic audio (extract.py)


def synth_audio(seconds, sample_rate=22050, channels=1, seed=0):
    """Deterministic float32 test audio: a seeded chord with beats, loudness changes and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    freqs = rng.uniform(80, min(4000, sample_rate / 3), size=(channels, 3))
    tone = sum(np.sin(2 * np.pi * freqs[:, k, None] * t) for k in range(3))
    # Loudness drifts over seconds, so that segments have different peaks (the dB floor is per
    # segment) and some stretches are near silence.
    envelope = (0.02 + np.abs(np.sin(np.pi * t / (1.7 + seed % 3)))) * (1 + np.sin(8 * t) ** 8)
    signal = 0.3 * tone * envelope + 0.01 * rng.standard_normal((channels, t.size))
    signal = (signal / np.abs(signal).max() * 0.9).astype(np.float32)
    return signal[0] if channels == 1 else signal.T  # soundfile's layout: (frames, channels)


def write_audio(path, seconds, sample_rate=22050, channels=1, seed=0, **options):
    """Write synthetic audio with soundfile (format from the extension unless given)."""
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, synth_audio(seconds, sample_rate, channels, seed), sample_rate,
                    **options)
    return path


def process_runs(pid):
    """Whether a process runs (Linux): an ended one that nobody has reaped yet does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def end_processes(pids):
    """Kill what is left of processes a failed test would leave behind."""
    for pid in pids:
        if process_runs(pid):
            os.kill(pid, 9)
