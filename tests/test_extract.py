"""Tests of extract.py: the recipe, librosa equality, formats, skipped files, errors, the CLI."""
import importlib.util
import inspect
import io
import json
import multiprocessing
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import librosa
import numpy as np
import pytest
import soundfile
import torch

import extract
import preprocess
import train
from common import DataError
from conftest import (ROOT, end_processes, load_npz, process_runs, synth_audio, write_audio,
                      write_json_file)

# A small recipe for fast tests: 0.5-s segments at 8 kHz (two per 1-s track), 16 frames x 13.
TINY = dict(sample_rate=8000, track_duration=1, num_segments=2, n_fft=512, hop_length=256,
            n_mels=40)
TINY_FLAGS = ["--sample-rate", "8000", "--track-duration", "1", "--num-segments", "2",
              "--n-fft", "512", "--hop-length", "256", "--n-mels", "40"]
TINY_FEATURES = extract.make_features(**TINY)


def tutorial_mfccs(signal, features, count):
    """The tutorial's loop: one librosa.feature.mfcc call per segment, kept at `frames` frames."""
    size, out = features["segment_samples"], []
    for i in range(count):
        mfcc = librosa.feature.mfcc(y=signal[i * size:(i + 1) * size], sr=features["sample_rate"],
                                    n_mfcc=features["n_mfcc"], n_fft=features["n_fft"],
                                    hop_length=features["hop_length"],
                                    **({"n_mels": features["n_mels"]}
                                       if features["n_mels"] != extract.N_MELS else {})).T
        if len(mfcc) == features["frames"]:
            out.append(mfcc)
    return np.array(out, dtype=np.float32).reshape(-1, features["frames"], features["n_mfcc"])


def assert_float32_close(actual, expected):
    """Equal up to float32 rounding of values of the segment's magnitude."""
    assert actual.shape == expected.shape and actual.dtype == np.float32
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(actual - expected).max() <= 2e-6 * scale * 8


# ---------------------------------------------------------------------------------------------
# The recipe


def test_default_recipe_is_the_tutorials_with_librosas_own_defaults():
    features = extract.default_features()
    assert json.loads(json.dumps(features)) == features  # JSON-able as it is
    assert (features["sample_rate"], features["n_mfcc"], features["n_fft"],
            features["hop_length"], features["segment_samples"], features["frames"]) == (
        22050, 13, 2048, 512, 66150, 130)
    assert extract.TUTORIAL_FEATURES == features
    def defaults(function):  # what the installed librosa uses when a setting is left out
        return {name: p.default for name, p in inspect.signature(function).parameters.items()}

    spectrogram, mel = defaults(librosa.feature.melspectrogram), defaults(librosa.filters.mel)
    db, mfcc = defaults(librosa.power_to_db), defaults(librosa.feature.mfcc)
    assert spectrogram["pad_mode"] == features["pad_mode"] == "constant"
    for key in ("window", "center", "power"):
        assert spectrogram[key] == features[key], key
    for key in ("n_mels", "fmin", "htk"):
        assert mel[key] == features[key], key
    for key in ("ref", "amin", "top_db"):
        assert db[key] == features[key], key
    for key in ("dct_type", "lifter", "mel_norm"):
        assert mfcc[key] == features[key], key
    assert mfcc["norm"] == features["dct_norm"] and mel["norm"] == features["mel_norm"]
    assert spectrogram["win_length"] is None and features["win_length"] == features["n_fft"]
    assert mel["fmax"] is None and features["fmax"] == features["sample_rate"] / 2
    assert inspect.signature(librosa.load).parameters["res_type"].default == features["res_type"]


@pytest.mark.parametrize("change, words", [
    (lambda f: "recipe", "must be an object"),
    (lambda f: {k: v for k, v in f.items() if k != "n_fft"}, "missing key(s) 'n_fft'"),
    (lambda f: {**f, "colour": 1}, "unknown key(s) 'colour'"),
    (lambda f: {**f, "n_mfcc": True}, "'n_mfcc' = true must be an integer"),
    (lambda f: {**f, "hop_length": 512.5}, "'hop_length' = 512.5 must be an integer"),
    (lambda f: {**f, "center": "yes"}, "'center' = \"yes\" must be true or false"),
    (lambda f: {**f, "top_db": "80"}, "'top_db' = \"80\" must be a finite number"),
    (lambda f: {**f, "n_mfcc": 200}, "'n_mfcc' = 200 must be between 1 and n_mels"),
    (lambda f: {**f, "fmax": 20000.0}, "'fmax' = 20000.0 must not exceed sample_rate / 2"),
    (lambda f: {**f, "pad_mode": "wrap"}, "'pad_mode' = \"wrap\" must be one of"),
    (lambda f: {**f, "frames": 129}, "'frames' = 129 does not follow"),
    (lambda f: {**f, "segment_samples": 1}, "'segment_samples' = 1 does not follow"),
    (lambda f: {**f, "window": "foo"}, "'window' = \"foo\" is not a window scipy.signal."),
    (lambda f: {**f, "window": "kaiser"}, "'window' = \"kaiser\" is not a window scipy"),
    (lambda f: {**f, "res_type": "foo"}, "'res_type' = \"foo\" is not a librosa resampler: "
                                         "use one of soxr_vhq, soxr_hq"),
])
def test_malformed_recipes_are_one_line_data_errors(change, words):
    with pytest.raises(DataError) as error:
        extract.validate_features(change(extract.default_features()), "data.json: 'features'")
    message = str(error.value)
    assert message.startswith("data.json: 'features': ") and words in message
    assert "\n" not in message


def test_validation_accepts_nulls_where_librosa_does():
    features = {**extract.default_features(), "mel_norm": None, "dct_norm": None, "top_db": None}
    assert extract.validate_features(features, "x") == features


@pytest.mark.parametrize("window", ["hann", "hamming", "blackman", "boxcar", "triang"])
@pytest.mark.parametrize("res_type", ["soxr_hq", "soxr_qq", "fft", "scipy", "polyphase"])
def test_windows_and_resamplers_librosa_can_use_here_are_accepted(window, res_type):
    features = {**extract.default_features(), "window": window, "res_type": res_type}
    assert extract.validate_features(features, "x") == features
    librosa.filters.get_window(window, 4)  # and librosa does take them
    assert librosa.resample(np.ones(100), orig_sr=2, target_sr=1, res_type=res_type).shape == (50,)


@pytest.mark.skipif(importlib.util.find_spec("resampy") is not None, reason="resampy installed")
def test_a_resampler_whose_package_is_missing_names_the_package(capsys):
    with pytest.raises(ImportError):  # what librosa would run into on the first file to resample
        librosa.resample(np.ones(100), orig_sr=2, target_sr=1, res_type="kaiser_best")
    with pytest.raises(SystemExit) as exit_info:
        extract.parse_args(["genres", "--res-type", "kaiser_best"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert "'res_type' = \"kaiser_best\" needs the resampy package: `pip install resampy`" in err
    assert "soxr_hq" in err and "kaiser_fast" not in err.split("use one of")[1]


# ---------------------------------------------------------------------------------------------
# Features equal librosa's per-segment mfcc


def test_signal_mfccs_equal_per_segment_librosa_mfcc_calls():
    features = extract.default_features()
    # 3 full segments, then 66,100 samples: short of a segment but still 130 frames, as the
    # tutorial keeps it; loudness differs between segments, so a shared dB floor would show.
    signal = synth_audio(12.1, seed=1)[: 3 * 66150 + 66100]
    signal[66150:2 * 66150] *= 1e-3
    expected = tutorial_mfccs(signal, features, 4)
    assert len(expected) == 4
    assert_float32_close(extract.signal_mfccs(signal, features), expected)
    assert_float32_close(extract.signal_mfccs(signal, features, max_segments=2), expected[:2])


def test_a_long_signal_gives_every_full_segment_in_chunks():
    features = extract.make_features(**TINY)
    signal = synth_audio(10.2, sample_rate=8000, seed=2)  # 20 full 0.5-s segments, > one chunk
    assert extract.CHUNK_SEGMENTS < 20
    assert_float32_close(extract.signal_mfccs(signal, features), tutorial_mfccs(signal, features, 21))


# ---------------------------------------------------------------------------------------------
# Reading audio


@pytest.mark.parametrize("name, options", [("a.wav", {}), ("a.flac", {}),
                                           ("a.aiff", {}), ("a.ogg", {})])
def test_lossless_and_ogg_files_load_as_librosa_loads_them(tmp_path, name, options):
    path = write_audio(tmp_path / name, 1.0, **options)
    expected, _ = librosa.load(path, sr=22050)
    np.testing.assert_array_equal(extract.load_signal(path, extract.default_features()), expected)


def test_stereo_44k_is_mixed_down_and_resampled_like_librosa_load(tmp_path):
    path = write_audio(tmp_path / "stereo.wav", 1.0, sample_rate=44100, channels=2)
    signal = extract.load_signal(path, extract.default_features())
    expected, rate = librosa.load(path, sr=22050, mono=True)
    assert signal.dtype == np.float32 and signal.ndim == 1 and rate == 22050
    np.testing.assert_array_equal(signal, expected)
    assert abs(len(signal) - 22050) <= 1


@pytest.mark.skipif("MP3" not in soundfile.available_formats(), reason="libsndfile < 1.1")
def test_mp3_decodes_without_ffmpeg(tmp_path):
    path = write_audio(tmp_path / "song.mp3", 1.0)
    signal = extract.load_signal(path, extract.default_features())
    original = synth_audio(1.0)
    # Lossy, and the decoder adds a little delay: the length and the level survive.
    assert abs(len(signal) - len(original)) < 3000
    assert 0.5 < np.sqrt(np.mean(signal ** 2)) / np.sqrt(np.mean(original ** 2)) < 1.5


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def audio_dir(tmp_path):
    """Two genres of 1-s tracks in several formats, plus files that must be skipped or ignored."""
    root = tmp_path / "genres"
    write_audio(root / "blues" / "blues.00000.wav", 1.0, sample_rate=8000, seed=0)
    write_audio(root / "blues" / "blues.00001.flac", 1.2, sample_rate=8000, seed=1)
    write_audio(root / "blues" / "short.wav", 0.3, sample_rate=8000, seed=2)  # < one segment
    write_audio(root / "rock" / "rock.00000.wav", 1.0, sample_rate=16000, channels=2, seed=3)
    write_audio(root / "rock" / "rock.00001.flac", 1.0, sample_rate=8000, seed=4)
    (root / "rock" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    (root / "rock" / "notes.mp3").write_text("not audio at all\n")
    (root / "rock" / ".DS_Store").write_bytes(bytes(range(256)))
    (root / "blues" / "README.txt").write_text("GTZAN\n")
    (root / ".hidden").mkdir()
    return root


def run_extract(audio_dir, output, *args):
    """extract.main with the tiny recipe; returns the exit status."""
    return extract.main([str(audio_dir), "--data", str(output), *TINY_FLAGS, *map(str, args)])


def test_extracts_every_readable_file_and_reports_the_rest(audio_dir, tmp_path, capsys):
    output = tmp_path / "data.json"
    assert run_extract(audio_dir, output, "--workers", 1) == 0
    out, err = capsys.readouterr()
    data = json.loads(output.read_text())
    assert data["mapping"] == ["blues", "rock"]
    assert data["features"] == TINY_FEATURES
    assert data["tracks"] == ["blues.00000"] * 2 + ["blues.00001"] * 2 + ["rock.00000"] * 2 + [
        "rock.00001"] * 2
    assert data["labels"] == [0, 0, 0, 0, 1, 1, 1, 1]
    expected = []
    for name in ("blues/blues.00000.wav", "blues/blues.00001.flac", "rock/rock.00000.wav",
                 "rock/rock.00001.flac"):
        signal, _ = librosa.load(audio_dir / name, sr=8000)
        expected.append(tutorial_mfccs(signal, TINY_FEATURES, 2))
    assert_float32_close(np.array(data["mfcc"], dtype=np.float32), np.concatenate(expected))
    for name in ("short.wav", "broken.wav", "notes.mp3"):  # one warning each, then the summary
        assert sum(name in line and line.startswith("warning: skipped") for line in
                   err.splitlines()) == 1
        assert re.search(rf"^  \S*{re.escape(name)}: ", out, flags=re.M)  # and in the summary
    assert "shorter than one segment" in err and "not readable audio" in err
    assert "Skipped 3 file(s):" in out and "blues/short.wav: shorter than one segment" in out
    assert "Ignored 2 hidden or non-audio file(s)" in out and ".DS_Store" in out
    assert "README.txt" in out and "Wrote" in out
    assert "  rock        2         4" in out


def test_a_terminal_shows_files_done_elapsed_and_remaining():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    step = extract.make_progress(3, screen)
    for _ in range(3):
        step()
    lines = screen.getvalue().split("\r")[1:]
    assert [line.split(",")[0].strip() for line in lines] == ["1/3 files", "2/3 files", "3/3 files"]
    assert all("s elapsed" in line and "s left" in line for line in lines)
    assert screen.getvalue().endswith("\n")
    quiet = io.StringIO()  # not a terminal: no progress lines in logs
    extract.make_progress(3, quiet)()
    assert quiet.getvalue() == ""


def test_reasons_are_one_line_and_keep_file_names_with_colons(tmp_path, monkeypatch):
    broken = tmp_path / "Artist: Song.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    with pytest.raises(soundfile.LibsndfileError) as libsndfile:
        soundfile.read(broken)
    assert extract.analyse_file(broken, TINY_FEATURES) == (
        None, f"not readable audio ({libsndfile.value.error_string})")
    write_audio(tmp_path / "a: b.wav", 0.3, sample_rate=8000)  # a DataError-free skip reason
    assert extract.analyse_file(tmp_path / "a: b.wav", TINY_FEATURES)[1].startswith(
        "shorter than one segment (0.30 s")
    with pytest.raises(DataError, match=r"^.*Artist: Song\.wav: not readable audio \("):
        extract.load_signal(broken, TINY_FEATURES)

    def fail(*args, **kwargs):
        raise ValueError("first line\n  second line\n  third line")

    monkeypatch.setattr(extract, "signal_mfccs", fail)
    song = write_audio(tmp_path / "Artist: Other.wav", 1.0, sample_rate=8000)
    assert extract.analyse_file(song, TINY_FEATURES) == (
        None, "analysis failed (ValueError: first line)")
    with pytest.raises(DataError) as error:  # librosa refusing the recipe itself: one line
        extract.warm_up(TINY_FEATURES)
    assert "(ValueError: first line): change them" in str(error.value)
    assert "\n" not in str(error.value)


def die_in_a_worker(path, features):
    """analyse_file as a worker killed by the system (out of memory) would run it."""
    if multiprocessing.parent_process() is not None:
        os._exit(1)
    return extract.analyse_file(path, features)


def test_a_dead_worker_is_one_line_and_keeps_the_old_data_json(audio_dir, tmp_path,
                                                               monkeypatch, capsys):
    output = tmp_path / "data.json"
    output.write_text('{"mapping": ["old"]}')
    monkeypatch.setattr(extract, "analyse_file", die_in_a_worker)
    assert run_extract(audio_dir, output, "--workers", 2) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: a worker process died (out of memory?): try again with --workers 1"]
    assert output.read_text() == '{"mapping": ["old"]}'
    assert list(tmp_path.glob(".*.tmp")) == []


def test_output_is_the_same_with_one_and_two_workers(audio_dir, tmp_path):
    assert run_extract(audio_dir, tmp_path / "one.json", "--workers", 1) == 0
    assert run_extract(audio_dir, tmp_path / "two.json", "--workers", 2) == 0
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


def test_clashing_names_get_relative_paths(tmp_path, capsys):
    root = tmp_path / "genres"
    for genre in ("a", "b"):
        for seed in range(2):
            write_audio(root / genre / f"x{seed}.wav", 1.0, sample_rate=8000, seed=seed)
    write_audio(root / "a" / "x0.flac", 1.0, sample_rate=8000, seed=5)
    assert run_extract(root, tmp_path / "data.json") == 0
    tracks = json.loads((tmp_path / "data.json").read_text())["tracks"]
    assert sorted(set(tracks)) == ["a/x0.flac", "a/x0.wav", "a/x1.wav", "b/x0.wav", "b/x1.wav"]


def make_error_case(case, root):
    """Build the folder of one failing case under root; return the AUDIO_DIR to pass."""
    if case == "missing":
        return root / "nowhere"
    root.mkdir(parents=True)
    if case == "a file":
        (root / "x.wav").write_bytes(b"")
        return root / "x.wav"
    if case == "no genre folders":
        write_audio(root / "song.wav", 1.0, sample_rate=8000)
    if case == "no readable audio":
        for genre in ("blues", "rock"):
            (root / genre).mkdir()
            (root / genre / "a.wav").write_text("text")
    if case == "one genre":  # typically the parent of the genre folders
        write_audio(root / "genres" / "blues" / "a.wav", 1.0, sample_rate=8000)
    if case == "genre without segments":
        write_audio(root / "blues" / "a.wav", 1.0, sample_rate=8000)
        write_audio(root / "rock" / "short.wav", 0.2, sample_rate=8000)
    return root


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"), ("a file", "is not a folder"), ("empty", "is empty"),
    ("no genre folders", "has no genre subfolders"),
    ("no readable audio", "no readable audio"),
    ("one genre", "one subfolder, genres/, so one genre: a classifier needs two or more"),
    ("genre without segments", "genre(s) rock have no usable audio"),
])
def test_bad_audio_dir_is_one_line_exit_2_and_writes_nothing(case, words, tmp_path, capsys):
    audio_dir = make_error_case(case, tmp_path / "in")
    output = tmp_path / "out" / "data.json"
    assert run_extract(audio_dir, output) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_ours_is_never_overwritten(audio_dir, tmp_path, capsys):
    output = write_json_file([1, 2, 3], tmp_path / "data.json")
    assert run_extract(audio_dir, output) == 2
    assert "pass another --data" in capsys.readouterr().err
    assert json.loads(output.read_text()) == [1, 2, 3]
    song = write_audio(tmp_path / "song.wav", 0.1)
    before = song.read_bytes()
    assert run_extract(audio_dir, song) == 2
    assert song.read_bytes() == before


def test_an_interrupted_run_keeps_the_old_data_json(audio_dir, tmp_path, monkeypatch, capsys):
    output = tmp_path / "data.json"
    assert run_extract(audio_dir, output, "--workers", 1) == 0  # ours: may be replaced
    old = output.read_bytes()
    real, calls = extract.analyse_file, []

    def interrupt_on_the_third_file(path, features):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, features)

    monkeypatch.setattr(extract, "analyse_file", interrupt_on_the_third_file)
    assert run_extract(audio_dir, output, "--workers", 1, "--num-mfcc", 12) == 130
    assert "unchanged" in capsys.readouterr().err
    assert output.read_bytes() == old
    assert list(tmp_path.glob(".*.tmp")) == []


def analyse_and_mark(path, features, analyse_file=extract.analyse_file):
    """analyse_file, taking a while and leaving a mark (in the folder $MARKS) for each file."""
    (pathlib.Path(os.environ["MARKS"]) / pathlib.Path(path).name).touch()
    time.sleep(0.05)
    return analyse_file(path, features)


def test_ctrl_c_cancels_the_files_the_workers_have_not_started(tmp_path, monkeypatch, capsys):
    for i in range(40):
        write_audio(tmp_path / "in" / "ab"[i % 2] / f"{i}.wav", 1.0, sample_rate=8000, seed=i)
    (tmp_path / "marks").mkdir()
    monkeypatch.setenv("MARKS", str(tmp_path / "marks"))
    monkeypatch.setattr(extract, "analyse_file", analyse_and_mark)
    real_progress = extract.make_progress

    def progress_interrupted_at_the_third_file(total):
        step, done = real_progress(total), []

        def interrupt():
            done.append(step())
            if len(done) == 3:
                raise KeyboardInterrupt
        return interrupt

    monkeypatch.setattr(extract, "make_progress", progress_interrupted_at_the_third_file)
    assert run_extract(tmp_path / "in", tmp_path / "data.json", "--workers", 2) == 130
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'data.json'} is not written.")
    assert len(list((tmp_path / "marks").iterdir())) < 40  # the rest were cancelled
    assert not (tmp_path / "data.json").exists() and list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_ctrl_c_during_the_warm_up_stops_the_run_once_it_is_done(audio_dir, tmp_path,
                                                                  monkeypatch, capsys):
    real_warm_up, finished = extract.warm_up, []

    def warm_up_and_press_ctrl_c(features):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # where Python handles the signal: inside a library, it could be lost
        finished.append(real_warm_up(features))

    monkeypatch.setattr(extract, "warm_up", warm_up_and_press_ctrl_c)
    assert run_extract(audio_dir, tmp_path / "data.json", "--workers", 2) == 130
    assert finished == [None] and "Interrupted;" in capsys.readouterr().err
    assert not (tmp_path / "data.json").exists()


def test_the_workers_end_when_the_main_process_is_killed(tmp_path):
    code = ("import multiprocessing, os, extract\n"
            "with extract.analysis_pool(2, 2, extract.TUTORIAL_FEATURES):\n"
            "    print(*(p.pid for p in multiprocessing.active_children()), flush=True)\n"
            "    os.kill(os.getpid(), 9)\n")
    with open(tmp_path / "pids", "w") as out:  # a pipe would stay open while a worker lives
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=out)
    workers = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert done.returncode == -9 and len(workers) == 2
    try:
        deadline = time.monotonic() + 10
        while any(process_runs(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(process_runs(pid) for pid in workers)
    finally:
        end_processes(workers)


@pytest.mark.parametrize("flags, words", [
    (["--num-mfcc", "200"], "'n_mfcc' = 200 must be between 1 and n_mels"),
    (["--win-length", "4096"], "'win_length' = 4096 must be between 1 and n_fft"),
    (["--fmax", "30000"], "must not exceed sample_rate / 2"),
    (["--workers", "0"], "must be a finite number >= 1"),
])
def test_impossible_settings_are_argparse_errors(flags, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        extract.parse_args(["genres", *flags])
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_output_alias_and_recipe_flags():
    args = extract.parse_args(["genres", "--output", "x.json", "--top-db", "none",
                               "--no-center", "--mel-norm", "none", "--pad-mode", "reflect"])
    assert args.data == "x.json"
    assert args.features["top_db"] is None and args.features["mel_norm"] is None
    assert args.features["center"] is False and args.features["pad_mode"] == "reflect"
    assert args.features["frames"] == 1 + (66150 - 2048) // 512


def test_importing_needs_no_librosa_and_the_cli_names_the_install_command(tmp_path):
    code = ("import sys; sys.modules['librosa'] = None; import extract; "
            "assert 'soundfile' not in sys.modules; sys.exit(extract.main(['genres']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install -r requirements-audio.txt" in \
        result.stderr


# ---------------------------------------------------------------------------------------------
# The recipe travels through preprocess.py and train.py


def recipe_data(recipe, **overrides):
    """A small learnable data.json whose segments have the recipe's shape, with the recipe."""
    data = preprocess.make_demo_data(genres=3, tracks_per_genre=10, segments_per_track=2,
                                     frames=recipe["frames"], coeffs=recipe["n_mfcc"])
    return {**data, "features": recipe, **overrides}


def test_recipe_goes_through_the_cache_into_both_checkpoints(tmp_path, capsys):
    write_json_file(recipe_data(TINY_FEATURES), tmp_path / "data.json")
    status = train.main(["--data", str(tmp_path / "data.json"), "--cache",
                         str(tmp_path / "cache.npz"), "--model-dir", str(tmp_path / "models"),
                         "--epochs", "1", "--device", "cpu", "--no-plots"])
    assert status == 0
    assert "no 'features'" not in capsys.readouterr().out
    assert json.loads(str(load_npz(tmp_path / "cache.npz")["features"])) == TINY_FEATURES
    for name in (train.BEST_MODEL_FILE, train.FINAL_MODEL_FILE):
        checkpoint = torch.load(tmp_path / "models" / name, weights_only=True)
        assert checkpoint["features"] == TINY_FEATURES and checkpoint["features_assumed"] is False
    data = preprocess.load_data(tmp_path / "data.json", tmp_path / "cache.npz",
                                log=lambda line: None)
    assert data.features == TINY_FEATURES and data.features_assumed is False


def test_without_a_recipe_the_tutorial_one_is_assumed_and_said_once(tmp_path, capsys):
    data = recipe_data(extract.TUTORIAL_FEATURES)
    del data["features"]
    write_json_file(data, tmp_path / "data.json")
    loaded = [preprocess.load_data(tmp_path / "data.json", tmp_path / "cache.npz")
              for _ in range(2)]
    assert capsys.readouterr().out.count("assuming the tutorial recipe") == 1
    assert all(d.features == extract.TUTORIAL_FEATURES and d.features_assumed for d in loaded)
    assert str(load_npz(tmp_path / "cache.npz")["features"]) == ""


@pytest.mark.parametrize("features, words", [
    ("mfcc", "'features' must be the MFCC recipe object"),
    ({**TINY_FEATURES, "n_mfcc": 12}, "'features' describes segments of 16 frames x 12 MFCCs, "
                                      "but the segments are 16 x 13"),
    ({**TINY_FEATURES, "hop_length": 0}, "'hop_length' = 0 must be at least 1"),
    ({**TINY_FEATURES, "window": "foo"}, "'window' = \"foo\" is not a window"),
    ({**TINY_FEATURES, "res_type": "foo"}, "'res_type' = \"foo\" is not a librosa resampler"),
])
def test_bad_recipes_stop_preprocess_with_one_line(features, words, tmp_path, capsys):
    data = recipe_data(TINY_FEATURES, features=features)
    write_json_file(data, tmp_path / "data.json")
    status = preprocess.main(["--data", str(tmp_path / "data.json"),
                              "--cache", str(tmp_path / "cache.npz")])
    err = capsys.readouterr().err
    assert status == 2 and words in err and err.count("\n") == 1
    assert not (tmp_path / "cache.npz").exists()
