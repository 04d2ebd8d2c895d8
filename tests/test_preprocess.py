"""preprocess.py against sklearn's train_test_split, hand-computed scaling, and hostile inputs."""
import errno
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

import preprocess
from common import TEMP_SUFFIX
from conftest import ROOT, tiny_data, write_json

SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run(capsys, *args):
    """main(args) -> (status, stdout, stderr)."""
    status = preprocess.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status, out, err


def build(capsys, data, *args):
    """Write data.json, run preprocess.py on it, return the cache's arrays."""
    write_json(data, "data.json")
    status, _, err = run(capsys, *args)
    assert status == 0, err
    with np.load("preprocessed_data.npz") as npz:
        return dict(npz)


def reference_split(units, labels, val=0.2, test=0.1, seed=42):
    """The design's stratified 70/20/10 split, made with sklearn directly: test first, then
    validation (val of ALL units) from the rest, the rest in sorted unit order."""
    rest, test_units = train_test_split(units, test_size=test, stratify=labels, random_state=seed)
    rest = np.sort(rest)
    train, val_units = train_test_split(rest, test_size=math.ceil(val * len(units)),
                                        stratify=labels[rest], random_state=seed)
    return {"train": train, "val": val_units, "test": test_units}


@contextmanager
def time_limit(seconds):
    """Fail instead of hanging when the block blocks (a FIFO opened for reading)."""
    def expire(signum, frame):
        raise TimeoutError("blocked")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------
# The split and the scaling


def test_track_split_equals_sklearn_and_keeps_tracks_whole(capsys):
    data = tiny_data()
    cache = build(capsys, data, "--split-seed", 7)
    names = np.array(sorted(set(data["tracks"])))
    genre = np.array([data["labels"][data["tracks"].index(name)] for name in names])
    ref = reference_split(np.arange(len(names)), genre, seed=7)
    for split in SPLITS:
        assert set(cache[f"tracks_{split}"]) == set(names[ref[split]]), split
        assert len(cache[f"tracks_{split}"]) == 4 * len(ref[split])  # each track's 4 segments
    assert str(cache["split_kind"]) == "track" and str(cache["split_by"]) == "auto"


def test_split_train_val_takes_val_of_all_tracks_from_the_rest(capsys):
    write_json(tiny_data(tracks=12), "data.json")  # 36 tracks
    dataset = preprocess.load_dataset("data.json")
    rest = np.flatnonzero(~np.isin(dataset.tracks, ["genre0.00000", "genre1.00000"]))
    train, val = preprocess.split_train_val(dataset, "track", rest, 0.2, 3)
    assert len(set(dataset.tracks[val])) == math.ceil(0.2 * 36)
    assert not set(dataset.tracks[train]) & set(dataset.tracks[val])
    assert sorted(np.concatenate([train, val])) == list(rest)


@pytest.mark.parametrize("flags, val, test", [
    ((), 0.2, 0.1), (("--val-split", 0.25, "--test-split", 0.15), 0.25, 0.15)])
def test_segment_split_and_scaling_equal_the_reference(capsys, flags, val, test):
    data = tiny_data(genres=4, tracks=5, segments=5)
    del data["tracks"]
    cache = build(capsys, data, *flags)
    raw, y = np.array(data["mfcc"], dtype=np.float32), np.array(data["labels"])
    ref = reference_split(np.arange(len(y)), y, val, test)
    lo, hi = float(raw[ref["train"]].min()), float(raw[ref["train"]].max())
    for split in SPLITS:
        rows = np.sort(ref[split])
        expected = ((raw[rows] - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)
        np.testing.assert_array_equal(cache[f"X_{split}"][:, 0], expected)
        np.testing.assert_array_equal(cache[f"y_{split}"], y[rows])
    assert cache["X_train"].dtype == np.float32 and cache["y_train"].dtype == np.int64
    assert str(cache["split_kind"]) == "segment" and len(cache["tracks_test"]) == 0


def test_scaling_uses_the_training_split_only(capsys):
    data = tiny_data()
    names = np.array(sorted(set(data["tracks"])))
    genre = np.array([data["labels"][data["tracks"].index(name)] for name in names])
    ref = reference_split(np.arange(len(names)), genre)
    outlier = data["tracks"].index(names[ref["test"][0]])
    data["mfcc"][outlier][0][0] = 1000.0  # far above any training value
    cache = build(capsys, data)
    raw = np.array(data["mfcc"], dtype=np.float32)
    train = raw[np.isin(data["tracks"], names[ref["train"]])]
    assert (float(cache["norm_min"]), float(cache["norm_max"])) == (train.min(), train.max())
    assert cache["X_train"].min() == 0.0 and cache["X_train"].max() == 1.0
    assert cache["X_test"].max() == pytest.approx((1000.0 - train.min()) / np.ptp(train), rel=1e-6)


def test_summary_shows_what_a_user_reads(capsys):
    write_json(tiny_data(frames=130, coeffs=13, tracks=4, segments=2), "data.json")
    status, out, _ = run(capsys, "--split-by", "segment")
    assert status == 0
    assert "Read 24 segments of 3 genres from data.json" in out
    assert "Input shape: (C=1, H=130, W=13)" in out and "tutorial recipe" in out
    assert "train/val/test = 16/5/3 segments" in out and "optimistic" in out
    with np.load("preprocessed_data.npz") as cache:
        counts = [np.bincount(cache[f"y_{split}"])[1] for split in SPLITS]
        lo, hi = float(cache["norm_min"]), float(cache["norm_max"])
    assert "  genre   train    val   test\n  genre0 " in out
    assert "  genre1" + "".join(f"{count:7d}" for count in counts) in out
    assert f"Normalized to [0, 1] with the training range [{lo:.4f}, {hi:.4f}]" in out
    assert "Wrote preprocessed_data.npz (0.1 MB) in " in out


# ---------------------------------------------------------------------------------------------
# The cache


def test_cache_is_reused_while_fresh_and_rebuilt_when_data_or_settings_change(capsys):
    write_json(tiny_data(), "data.json")
    first = preprocess.load_data()
    assert "(no cache yet)" in capsys.readouterr().out
    again = preprocess.load_data()
    assert "Loaded preprocessed data from" in capsys.readouterr().out
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert again.split == preprocess.SplitSettings() and again.features is None
    preprocess.load_data(settings=preprocess.SplitSettings(seed=1))
    assert "split settings changed (seed 42 -> 1)" in capsys.readouterr().out
    write_json(tiny_data(seed=1), "data.json")
    preprocess.load_data(settings=preprocess.SplitSettings(seed=1))
    assert "data.json changed since the cache was built" in capsys.readouterr().out


def old_cache(path, **change):
    """A cache as the previous version wrote it: the same keys, made here with numpy."""
    rng = np.random.default_rng(0)
    arrays = {"mapping": np.array(["a", "b"]), "split_kind": np.array("segment"),
              "norm_min": np.float64(-3), "norm_max": np.float64(4), "features": np.array(""),
              "source_sha256": np.array("0" * 64), "val_split": np.float64(0.2),
              "test_split": np.float64(0.1), "seed": np.int64(42), "split_by": np.array("auto"),
              "format_version": np.int64(2)}
    for split, n in zip(SPLITS, (6, 2, 2)):
        arrays.update({f"X_{split}": rng.random((n, 1, 8, 4), dtype=np.float32),
                       f"y_{split}": np.arange(n, dtype=np.int64) % 2,
                       f"tracks_{split}": np.array([], dtype=str)})
    np.savez_compressed(path, **{**arrays, **change})


def test_old_cache_is_used_without_data_unless_an_explicit_flag_asks_otherwise(capsys):
    old_cache("preprocessed_data.npz")
    data = preprocess.load_data(settings=preprocess.SplitSettings(seed=5))
    assert "not found; using the cache preprocessed_data.npz as it is" in capsys.readouterr().out
    assert data.x_train.shape == (6, 1, 8, 4) and data.mapping == ["a", "b"]
    assert (data.norm_min, data.norm_max, data.split.seed) == (-3.0, 4.0, 42)
    with pytest.raises(preprocess.DataError, match="cannot be rebuilt with seed 42 -> 5"):
        preprocess.load_data(settings=preprocess.SplitSettings(seed=5), explicit=("seed",))


@pytest.mark.parametrize("change", [{"y_train": np.array([0, 1, 2, 0, 1, 0])},
                                    {"X_val": np.zeros((2, 1, 8, 4))},
                                    {"X_test": np.zeros((0, 1, 8, 4), np.float32),
                                     "y_test": np.zeros(0, np.int64)},
                                    {"X_test": np.zeros((2, 1, 8, 5), np.float32)}])
def test_hand_made_cache_is_rebuilt_or_refused_in_one_line(capsys, change):
    old_cache("preprocessed_data.npz", **change)
    with pytest.raises(preprocess.DataError, match="data.json: not found"):
        preprocess.load_data()
    write_json(tiny_data(), "data.json")
    preprocess.load_data()
    assert "(cache damaged or of another format)" in capsys.readouterr().out
    assert preprocess.read_cache("preprocessed_data.npz")[0] is not None


def foreign_zip(path, names):
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"user data")


@pytest.mark.parametrize("names", [["archive/data.pkl", "archive/version"],  # a torch checkpoint
                                   ["[Content_Types].xml", "word/document.xml"],  # a .docx
                                   ["X_train.npy", "notes.txt"]])  # any zip with one like name
def test_foreign_zip_at_cache_is_kept(capsys, names):
    write_json(tiny_data(), "data.json")
    foreign_zip("model.pt", names)
    before = open("model.pt", "rb").read()
    status, _, err = run(capsys, "--cache", "model.pt")
    assert status == 2 and err.count("\n") == 1 and "is not a preprocessed-data cache" in err
    assert open("model.pt", "rb").read() == before


def test_fifo_or_folder_input_is_refused_at_once(capsys, tmp_path):
    os.mkfifo("data.json")
    with time_limit(10):
        status, _, err = run(capsys)
        assert status == 2 and "is not a regular file" in err
        os.mkdir("folder")
        status, _, err = run(capsys, "--data", "folder")
        assert status == 2 and "is a folder" in err
        os.mkfifo("cache.npz")
        status, _, err = run(capsys, "--cache", "cache.npz", "--data", "folder")
        assert status == 2 and "cache.npz exists and is not a regular file" in err


def test_a_full_disk_keeps_the_old_cache(capsys, monkeypatch):
    build(capsys, tiny_data())
    before = open("preprocessed_data.npz", "rb").read()
    write_json(tiny_data(seed=3), "data.json")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez_compressed", full)
    status, _, err = run(capsys)
    assert status == 2 and err.count("\n") == 1 and "the disk is full" in err
    assert open("preprocessed_data.npz", "rb").read() == before
    assert sorted(os.listdir()) == ["data.json", "preprocessed_data.npz"]


def test_a_killed_writer_leaves_the_old_cache_and_a_rerun_no_temp_file(capsys, tmp_path):
    build(capsys, gtzan_data(), "--split-by", "filtered")  # the child then needs no sklearn
    before = open("preprocessed_data.npz", "rb").read()
    for name in (".preprocessed_data.npz.my-backup.tmp", "notes.partial"):  # the user's
        (tmp_path / name).write_text("mine")
    script = ("import os, signal, sys, numpy as np\n"
              f"sys.path.insert(0, {str(ROOT)!r})\nimport preprocess\n"
              "def die(handle, **arrays):\n"
              "    handle.write(b'half a cache'); handle.flush()\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "np.savez_compressed = die\npreprocess.main(['--split-by', 'filtered'])\n")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert any(name.endswith(TEMP_SUFFIX) and name.startswith(".") for name in os.listdir())
    assert open("preprocessed_data.npz", "rb").read() == before
    assert run(capsys, "--split-by", "filtered")[0] == 0
    assert sorted(os.listdir()) == [".preprocessed_data.npz.my-backup.tmp", "data.json",
                                    "notes.partial", "preprocessed_data.npz"]


# ---------------------------------------------------------------------------------------------
# data.json: one line for each kind of bad input


def test_malformed_json_is_named_by_line_and_column(capsys):
    with open("data.json", "w") as handle:
        handle.write('{\n  "mapping": ["a", "b"],\n  "labels": [0,, 1]\n}')
    status, _, err = run(capsys)
    assert status == 2 and err.count("\n") == 1
    assert "data.json: JSON is malformed" in err and "at line 3, column 16" in err
    with open("data.json", "w") as handle:
        handle.write('{"mapping": ["a", "b"], "labels": [0, 1], "mfcc": [[[NaN')
    assert "line 1, column 54: NaN and Infinity are not JSON numbers" in run(capsys)[2]
    with open("data.json", "w") as handle:
        handle.write('{"mapping": ["a", "b"], "labels": [0, 1], "mfcc": [[[1')
    assert "truncated" in run(capsys)[2]


def test_a_byte_order_mark_and_integral_float_labels_are_accepted(capsys):
    data = tiny_data()
    data["labels"] = [float(label) for label in data["labels"]]  # as numpy arrays dump them
    with open("data.json", "wb") as handle:
        handle.write(b"\xef\xbb\xbf" + json.dumps(data).encode())
    assert run(capsys)[0] == 0


def mutated(**change):
    data = tiny_data()
    for key, value in change.items():
        if callable(value):
            value(data)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize("data, message", [
    (mutated(labels=lambda d: d["labels"].__setitem__(5, 3)), "labels[5] = 3 is not a genre"),
    (mutated(labels=lambda d: d["labels"].__setitem__(5, True)), "Expected `int | float`, got"),
    (mutated(labels=lambda d: d["labels"].__setitem__(5, 10**400)), "labels[5] = 1000"),
    (mutated(labels=lambda d: d["labels"].__setitem__(5, 1.5)), "labels[5] = 1.5 is not"),
    (mutated(mapping=["a", "a", "b"]), "distinct"),
    (mutated(mapping=["a", "", "b"]), "distinct, printable"),
    (mutated(mfcc=lambda d: d["mfcc"][7].pop()), "mfcc[7] has shape (15, 8)"),
    (mutated(mfcc=lambda d: d["mfcc"][7][0].pop()), "mfcc[7]"),
    (mutated(mfcc=lambda d: d["mfcc"][2][0].__setitem__(0, 1e39)), "mfcc[2] holds a value"),
    (mutated(mfcc=lambda d: (d["mfcc"][0][0].__setitem__(0, 3e38),
                             d["mfcc"][1][0].__setitem__(0, -3e38))), "too wide to scale"),
    (mutated(tracks=lambda d: d["tracks"].__setitem__(1, "genre1.00000")), "two genres"),
    (mutated(tracks=["x"]), "120 segments in 'mfcc' need as many"),
    (mutated(features={"sample_rate": 22050}), "'features'"),
    (mutated(labels=lambda d: d.update(labels=[0] * 118 + [1, 1], tracks=None)), "genre1 (2)"),
])
def test_bad_data_is_one_line_naming_it(capsys, data, message):
    write_json({key: value for key, value in data.items() if value is not None}, "data.json")
    status, _, err = run(capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err


def test_split_flags_are_checked(capsys):
    write_json(mutated(tracks=None) | {"tracks": None}, "data.json")
    status, _, err = run(capsys, "--split-by", "track")
    assert status == 2 and "needs 'tracks'" in err
    status, _, err = run(capsys, "--val-split", "0.6", "--test-split", "0.5")
    assert status == 2 and "no training data" in err
    with pytest.raises(SystemExit) as stop:  # sklearn's random_state takes 0 .. 2**32 - 1
        preprocess.parse_args(["--split-seed", str(2**32)])
    assert stop.value.code == 2 and "at most 4294967295" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The fault-filtered split and the demo


def gtzan_data(per_genre=100):
    """One tiny segment for each of the first per_genre GTZAN ids of every genre."""
    genres = preprocess.DEMO_GENRES
    tracks = [f"{genre}.{i:05d}" for genre in genres for i in range(per_genre)]
    labels = [g for g in range(len(genres)) for _ in range(per_genre)]
    mfcc = (np.arange(len(tracks) * 12).reshape(-1, 4, 3) % 7).tolist()
    return {"mapping": list(genres), "labels": labels, "mfcc": mfcc, "tracks": tracks}


def test_filtered_split_holds_exactly_the_listed_tracks(capsys):
    lists = json.loads((ROOT / preprocess.FILTERED_SPLIT_FILE).read_text())
    assert "Kereliuk" in lists["source"]
    assert [len(set(lists[split])) for split in SPLITS] == [443, 197, 290]
    assert len(set().union(*(lists[split] for split in SPLITS))) == 930
    write_json(gtzan_data(), "data.json")
    status, out, err = run(capsys, "--split-by", "filtered")
    assert status == 0, err
    assert "70 segments of 70 tracks in none of its lists are left out" in out
    with np.load("preprocessed_data.npz") as cache:
        for split in SPLITS:
            assert sorted(cache[f"tracks_{split}"]) == sorted(lists[split])
        assert str(cache["split_kind"]) == str(cache["split_by"]) == "filtered"


def test_filtered_split_of_a_subset_names_the_missing_genres(capsys):
    write_json(gtzan_data(per_genre=10), "data.json")
    status, _, err = run(capsys, "--split-by", "filtered")
    assert status == 2 and err.count("\n") == 1
    assert "blues (no train" in err and "whole GTZAN set" in err
    write_json(tiny_data(), "data.json")
    assert "GTZAN track ids" in run(capsys, "--split-by", "filtered")[2]


def test_demo_data_is_deterministic_and_gtzan_shaped():
    small = preprocess.make_demo_data(genres=3, tracks_per_genre=2, segments_per_track=2)
    assert small == preprocess.make_demo_data(genres=3, tracks_per_genre=2, segments_per_track=2)
    defaults = inspect.signature(preprocess.make_demo_data).parameters
    assert [defaults[name].default for name in ("genres", "tracks_per_genre", "segments_per_track",
                                                "frames", "coeffs")] == [10, 10, 10, 130, 13]
    demo = preprocess.make_demo_data(tracks_per_genre=2, segments_per_track=3)
    assert demo["mapping"][0] == "blues" and demo["mapping"][-1] == "rock"
    assert np.shape(demo["mfcc"]) == (60, 130, 13) and len(set(demo["tracks"])) == 20
    profiles = np.array(demo["mfcc"]).mean(axis=1).reshape(10, 6, 13).mean(axis=1)
    assert np.linalg.norm(profiles - profiles.mean(axis=0), axis=1).min() > 5  # learnable
