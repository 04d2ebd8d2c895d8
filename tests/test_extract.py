"""extract.py: MFCCs as librosa computes them, data.json, and the files it skips, ignores, keeps."""
import json
import os
import signal
import threading
import time
import tracemalloc

import librosa
import msgspec
import numpy as np
import pytest
import soundfile

import extract
import features
from common import TEMP_SUFFIX, Terminated, run_main
from conftest import tone, write_audio

SR = 22050
# Two 1-s segments from the first 2 s of each track: 44 frames x 13 MFCCs, the tutorial's settings.
SHORT = ["--track-duration", "2", "--num-segments", "2"]


def run(audio_dir, data, *flags):
    """extract.main on audio_dir with short tracks and one worker unless flags say otherwise."""
    return extract.main([str(audio_dir), "--data", str(data), *SHORT, "--workers", "1", *flags])


def genres(root, **files):
    """Genre folders under root: a=("x.wav", ...) writes 2.5-s tones (seeded by order) there."""
    for seed, (genre, names) in enumerate(files.items()):
        for offset, name in enumerate(names):
            write_audio(root / genre / name, tone(2.5, freq=200 + 100 * seed, seed=seed + offset))
    return root


def no_temp_files(folder):
    """True when folder holds no temp file of an atomic write."""
    return not [p for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_mfccs_equal_per_segment_librosa_calls(tmp_path):
    # 44.1 kHz stereo, longer than the 2 s used, the second segment 60 dB quieter: a shared dB
    # floor, a different mix-down or resampling, or edge effects of a cut decode would all show.
    signal_ = np.stack([tone(5, 44100, seed=1), tone(5, 44100, freq=330, seed=2)], axis=1)
    signal_[44100:88200] *= 1e-3
    song = write_audio(tmp_path / "in" / "a" / "song.wav", signal_, 44100)
    genres(tmp_path / "in", b=["other.wav"])
    assert run(tmp_path / "in", tmp_path / "data.json") == 0
    data = json.loads((tmp_path / "data.json").read_text())
    y, _ = librosa.load(song, sr=SR)
    expected = [librosa.feature.mfcc(y=y[i * SR:(i + 1) * SR], sr=SR, n_mfcc=13, n_fft=2048,
                                     hop_length=512).T for i in range(2)]
    actual = np.array(data["mfcc"][:2], dtype=np.float32)
    assert actual.shape == (2, 44, 13)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert data["features"] == features.make_features(track_duration=2, num_segments=2)
    assert (data["mapping"], data["labels"]) == (["a", "b"], [0, 0, 1, 1])
    assert data["tracks"] == ["song", "song", "other", "other"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two genres with a name clash, a too-short file, a broken file and two ignored ones."""
    root = genres(tmp_path_factory.mktemp("mixed"), a=["x.wav", "y.flac"], b=["x.wav"])
    write_audio(root / "a" / "short.wav", tone(0.5))
    (root / "b" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    (root / "a" / ".DS_Store").write_bytes(bytes(100))
    (root / "b" / "notes.txt").write_text("liner notes\n")
    return root


def test_summary_names_every_file_not_extracted(mixed, tmp_path, capsys):
    (tmp_path / "data.json").write_text('{"mapping": ["old"], "labels": []}')  # ours: replaced
    assert run(mixed, tmp_path / "data.json") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("Extracted 6 segments from 3 tracks of 2 genres in ")
    assert lines[1:4] == ["  genre  tracks  segments", "  a           2         4",
                          "  b           1         2"]
    assert lines[4] == "Skipped 2 file(s):"
    assert lines[5].startswith("  a/short.wav: too short (0.50 s; one segment needs 1 s)")
    assert lines[6].startswith("  b/broken.wav: not readable audio (")
    assert lines[7] == "Ignored 2 hidden or non-audio file(s): a/.DS_Store, b/notes.txt"
    assert lines[8].startswith(f"Wrote {tmp_path / 'data.json'} (") and len(lines) == 9
    assert err.count("warning: skipped") == 2
    data = json.loads((tmp_path / "data.json").read_text())
    assert data["tracks"] == ["a/x.wav"] * 2 + ["y"] * 2 + ["b/x.wav"] * 2  # x.wav clashes


def test_output_is_the_same_bytes_for_any_worker_count(mixed, tmp_path):
    assert run(mixed, tmp_path / "one.json") == 0
    assert run(mixed, tmp_path / "two.json", "--workers", "2") == 0
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b'{"model": "mine"}', b"PK\x03\x04zip",
                                     b'{"labels": {"cat": 0}}', b'{"features": [], "type": "x"}'])
def test_a_file_that_is_not_our_data_json_is_kept(content, tmp_path, capsys):
    genres(tmp_path / "in", a=["x.wav"], b=["y.wav"])
    (tmp_path / "data.json").write_bytes(content)
    assert run(tmp_path / "in", tmp_path / "data.json") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --data ") and "pass another --data" in err[0]
    assert (tmp_path / "data.json").read_bytes() == content


def test_a_fifo_or_broken_link_is_skipped_unopened(tmp_path, capsys):
    root = genres(tmp_path / "in", a=["x.wav"], b=["y.wav"])
    os.mkfifo(root / "a" / "pipe.wav")
    os.symlink(tmp_path / "nowhere.wav", root / "b" / "link.wav")
    status, start = [], time.monotonic()
    worker = threading.Thread(target=lambda: status.append(run(root, tmp_path / "data.json")),
                              daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # a reader blocked on the FIFO: release it, then fail
        os.close(os.open(root / "a" / "pipe.wav", os.O_WRONLY | os.O_NONBLOCK))
        worker.join()
        pytest.fail("extract.py opened the FIFO and waited for a writer")
    assert status == [0] and time.monotonic() - start < 30
    out = capsys.readouterr().out
    assert "  a/pipe.wav: not a regular file" in out
    assert "  b/link.wav: a broken symbolic link" in out
    assert json.loads((tmp_path / "data.json").read_text())["tracks"] == ["x"] * 2 + ["y"] * 2


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_a_file_whose_mfccs_are_not_finite_is_skipped(tmp_path, capsys):
    root = genres(tmp_path / "in", a=["x.wav"], b=["y.wav"])
    soundfile.write(root / "a" / "loud.wav", np.full(3 * SR, 1e30, np.float32), SR,
                    subtype="FLOAT")
    assert run(root, tmp_path / "data.json") == 0
    assert "  a/loud.wav: its MFCCs are not finite" in capsys.readouterr().out
    data = json.loads((tmp_path / "data.json").read_text(),
                      parse_constant=lambda name: pytest.fail(f"data.json holds {name}"))
    assert data["tracks"] == ["x"] * 2 + ["y"] * 2


def test_names_that_are_not_utf8_are_read_and_written_as_escapes(tmp_path, capsys):
    root = genres(tmp_path / "in", a=["x.wav"], rock=["y.wav"])
    os.rename(root / "a", root / os.fsdecode(b"caf\xe9"))
    os.rename(root / "rock" / "y.wav", root / "rock" / os.fsdecode(b"\xff.wav"))
    assert run(root, tmp_path / "data.json") == 0
    assert "  caf\\xe9       1         2" in capsys.readouterr().out
    raw = (tmp_path / "data.json").read_bytes()
    data = msgspec.json.decode(raw)  # as preprocess.py reads it: no lone surrogates
    assert data["mapping"] == ["caf\\xe9", "rock"] and data["tracks"] == ["x"] * 2 + ["\\xff"] * 2


def test_a_genre_folder_with_control_characters_is_refused(tmp_path, capsys):
    genres(tmp_path / "in", a=["x.wav"], **{"b\x1b[31m": ["y.wav"]})
    assert run(tmp_path / "in", tmp_path / "data.json") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'b\\x1b[31m' has control characters" in err
    assert "rename" in err and not (tmp_path / "data.json").exists()


@pytest.mark.parametrize("flags, words", [
    (["--num-mfcc", "200"], "librosa gives 128 MFCCs, not 200"),
    (["--track-duration", "0.00001"], "give no samples or frames"),
])
def test_a_recipe_librosa_cannot_follow_is_one_line(flags, words, tmp_path, capsys):
    genres(tmp_path / "in", a=["x.wav"], b=["y.wav"])
    assert run(tmp_path / "in", tmp_path / "data.json", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "data.json").exists() and no_temp_files(tmp_path)


@pytest.mark.parametrize("stop, status", [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_an_interrupted_run_keeps_the_old_data_json(stop, status, tmp_path, monkeypatch, capsys):
    root = genres(tmp_path / "in", a=["x.wav", "y.wav"], b=["z.wav"])
    (tmp_path / "data.json").write_text('{"mapping": ["old"], "labels": []}')
    analyse, calls = features.analyse_file, []

    def stop_at_the_second_file(*args):
        calls.append(args)
        if len(calls) == 2:
            raise stop()
        return analyse(*args)

    monkeypatch.setattr(features, "analyse_file", stop_at_the_second_file)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # run_main's SIGTERM handler
    assert run_main(lambda: run(root, tmp_path / "data.json")) == status
    assert (tmp_path / "data.json").read_text() == '{"mapping": ["old"], "labels": []}'
    assert no_temp_files(tmp_path) and len(calls) == 2


def test_only_the_seconds_used_are_decoded(tmp_path):
    root = genres(tmp_path / "in", a=["x.wav"])
    write_audio(root / "b" / "long.wav", np.zeros(300 * SR, np.float32))  # 5 minutes
    whole = 300 * SR * 4  # bytes of its float32 samples: 26 MB
    run(root, tmp_path / "warm.json")  # imports and caches: not what is measured
    tracemalloc.start()
    try:
        assert run(root, tmp_path / "data.json") == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < whole / 4, f"{peak / 1e6:.1f} MB allocated for 3 s of a 5-minute file"
