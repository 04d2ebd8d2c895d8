"""Tests of preprocess.py against sklearn's train_test_split and hand-computed values."""
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

import common
import preprocess
from conftest import load_npz

SCRIPT = Path(preprocess.__file__).resolve()
SPLITS = ("train", "val", "test")
CACHE = "preprocessed_data.npz"


# ---------------------------------------------------------------------------------------------
# Trusted references


def subset(data, keep):
    """data restricted to the segment indices in keep (per-segment keys only)."""
    out = dict(data)
    for key in ("mfcc", "labels", "tracks"):
        if key in data:
            out[key] = [data[key][i] for i in keep]
    return out


def without_tracks(data):
    """data as the tutorial writes it: no 'tracks' key."""
    return {key: value for key, value in data.items() if key != "tracks"}


def reference_segment_split(y, val=0.2, test=0.1, seed=42):
    """The stratified 70/20/10 split (test first, then validation), made with sklearn directly."""
    idx = np.arange(len(y))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=y, random_state=seed)
    train_idx, val_idx = train_test_split(
        rest, test_size=val / (1 - test), stratify=y[rest], random_state=seed
    )
    return {"train": train_idx, "val": val_idx, "test": test_idx}


def raw_2d(data):
    """The segments of 2-D data as float64 (N, H, W), straight from the JSON lists."""
    return np.array(data["mfcc"], dtype=np.float32).astype(np.float64)


def source_rows(x_cached, x_expected):
    """Index into x_expected of each cached row; every cached row must match one to ~float32."""
    cached = x_cached.reshape(len(x_cached), -1).astype(np.float64)
    expected = x_expected.reshape(len(x_expected), -1).astype(np.float64)
    distance = np.abs(cached[:, None, :] - expected[None, :, :]).max(axis=2)
    rows = distance.argmin(axis=1)
    worst = distance[np.arange(len(rows)), rows].max(initial=0.0)
    assert worst < 1e-5, f"a cached row matches no expected row (off by {worst})"
    return rows


def uneven_genres(data, per_genre_counts, unit):
    """Keep the first per_genre_counts[g] units (segments or tracks) of each genre g."""
    labels, tracks = np.array(data["labels"]), np.array(data["tracks"])
    keep = []
    for genre, count in enumerate(per_genre_counts):
        rows = np.flatnonzero(labels == genre)
        if unit == "segment":
            keep.extend(rows[:count])
        else:
            kept_tracks = list(dict.fromkeys(tracks[rows]))[:count]
            keep.extend(rows[np.isin(tracks[rows], kept_tracks)])
    return subset(data, sorted(keep))


# ---------------------------------------------------------------------------------------------
# Segment split: sizes, stratification, equality with sklearn


@pytest.fixture
def segment_data(make_data):
    """100 segments, no track ids, genres of 40/30/20/10 segments."""
    data = make_data(genres=4, tracks_per_genre=4, segments_per_track=10, frames=4, coeffs=3)
    return without_tracks(uneven_genres(data, [40, 30, 20, 10], "segment"))


def test_segment_split_is_70_20_10_and_stratified_per_genre(segment_data, build_cache):
    cache = build_cache(segment_data)
    assert [len(cache[f"y_{s}"]) for s in SPLITS] == [70, 20, 10]
    # Stratified: every genre splits 70/20/10 too (the genre sizes make these exact).
    expected = {"train": [28, 21, 14, 7], "val": [8, 6, 4, 2], "test": [4, 3, 2, 1]}
    for name in SPLITS:
        assert np.bincount(cache[f"y_{name}"], minlength=4).tolist() == expected[name], name


@pytest.mark.parametrize("args, val, test, seed", [
    ((), 0.2, 0.1, 42),
    (("--split-seed", 7), 0.2, 0.1, 7),
    (("--val-split", 0.25, "--test-split", 0.15), 0.25, 0.15, 42),
])
def test_segment_split_equals_sklearn_reference(segment_data, build_cache, args, val, test, seed):
    cache = build_cache(segment_data, *args)
    y = np.array(segment_data["labels"])
    ref = reference_segment_split(y, val, test, seed)
    raw = raw_2d(segment_data)
    lo, hi = raw[ref["train"]].min(), raw[ref["train"]].max()
    expected = (raw - lo) / (hi - lo)
    for name in SPLITS:
        rows = source_rows(cache[f"X_{name}"][:, 0], expected)
        assert sorted(rows) == sorted(ref[name]), name
        np.testing.assert_array_equal(cache[f"y_{name}"], y[rows])


# ---------------------------------------------------------------------------------------------
# Normalization


def test_normalization_uses_the_training_range_only(segment_data, build_cache):
    y = np.array(segment_data["labels"])
    ref = reference_segment_split(y)
    test_row, val_row = ref["test"][0], ref["val"][0]
    segment_data["mfcc"][test_row][0][0] = 9999.0  # far outside the training range
    segment_data["mfcc"][val_row][1][1] = -9999.0
    cache = build_cache(segment_data)

    raw = raw_2d(segment_data)
    lo, hi = raw[ref["train"]].min(), raw[ref["train"]].max()
    assert hi < 9999.0 and lo > -9999.0
    assert float(cache["norm_min"]) == pytest.approx(lo, abs=1e-9)
    assert float(cache["norm_max"]) == pytest.approx(hi, abs=1e-9)
    assert cache["X_train"].min() == 0.0 and cache["X_train"].max() == 1.0
    # Validation and test rows go through the same affine map, outliers and all.
    assert cache["X_test"].max() == pytest.approx((9999.0 - lo) / (hi - lo), rel=1e-6)
    assert cache["X_val"].min() == pytest.approx((-9999.0 - lo) / (hi - lo), rel=1e-6)
    expected = (raw - lo) / (hi - lo)
    for name in ("val", "test"):
        rows = source_rows(cache[f"X_{name}"][:, 0], expected)
        assert sorted(rows) == sorted(ref[name])
        np.testing.assert_allclose(cache[f"X_{name}"][:, 0], expected[rows], atol=1e-6)


def test_constant_input_does_not_divide_by_zero(make_data, build_cache):
    data = without_tracks(make_data())
    data["mfcc"] = [[[5.0 for _ in row] for row in segment] for segment in data["mfcc"]]
    cache = build_cache(data)
    assert float(cache["norm_min"]) == float(cache["norm_max"]) == 5.0
    for name in SPLITS:
        x = cache[f"X_{name}"]
        assert np.all(np.isfinite(x)) and np.all((x >= 0) & (x <= 1))
        assert np.all(x == x.flat[0])


# ---------------------------------------------------------------------------------------------
# Layout and cache format


def test_2d_segments_get_one_channel(make_data, build_cache):
    data = without_tracks(make_data(frames=8, coeffs=4))
    cache = build_cache(data)
    raw = raw_2d(data)
    lo, hi = float(cache["norm_min"]), float(cache["norm_max"])
    for name in SPLITS:
        x = cache[f"X_{name}"]
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 4)
        rows = source_rows(x[:, 0], (raw - lo) / (hi - lo))
        for k, row in enumerate(rows):
            np.testing.assert_allclose(x[k, 0], (raw[row] - lo) / (hi - lo), atol=1e-6)


def test_3d_channels_last_segments_become_channels_first(make_data, build_cache):
    data = without_tracks(make_data(frames=8, coeffs=6))
    # Each segment becomes H=8, W=2, C=3, channels last: segment[h][w][c].
    data["mfcc"] = [np.array(s).reshape(8, 2, 3).tolist() for s in data["mfcc"]]
    cache = build_cache(data)
    hwc = np.array(data["mfcc"], dtype=np.float32).astype(np.float64)
    y = np.array(data["labels"])
    train = reference_segment_split(y)["train"]
    lo, hi = hwc[train].min(), hwc[train].max()
    expected = np.empty((len(hwc), 3, 8, 2))
    for n in range(len(hwc)):
        for c in range(3):
            for h in range(8):
                for w in range(2):
                    expected[n, c, h, w] = (hwc[n, h, w, c] - lo) / (hi - lo)
    seen = []
    for name in SPLITS:
        x = cache[f"X_{name}"]
        assert x.dtype == np.float32 and x.shape[1:] == (3, 8, 2)
        rows = source_rows(x, expected)
        np.testing.assert_allclose(x, expected[rows], atol=1e-6)
        seen.extend(rows)
    assert sorted(seen) == list(range(len(hwc)))


def test_cache_loads_without_pickle_with_documented_keys_and_dtypes(make_data, build_cache,
                                                                   tmp_path):
    data = make_data()
    build_cache(data)
    with np.load(tmp_path / CACHE, allow_pickle=False) as npz:
        cache = {key: npz[key] for key in npz.files}  # reading each key fails on object arrays
    for name in SPLITS:
        x, y = cache[f"X_{name}"], cache[f"y_{name}"]
        assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (1, 8, 4)
        assert y.dtype == np.int64 and len(y) == len(x)
        assert len(cache[f"tracks_{name}"]) == len(y)  # the track id of every row
    assert sum(len(cache[f"y_{s}"]) for s in SPLITS) == len(data["labels"])
    assert cache["mapping"].dtype.kind == "U"
    assert cache["mapping"].tolist() == data["mapping"]
    assert cache["norm_min"].shape == () and cache["norm_max"].shape == ()
    assert str(cache["split_kind"]) == "track"


# ---------------------------------------------------------------------------------------------
# prepare_cache / load_data: reuse, staleness, corruption


@pytest.fixture
def cached(make_data, write_data, tmp_path):
    """data.json and a freshly built cache beside it; returns (json_path, cache_path, data)."""
    data = make_data()
    json_path, cache_path = write_data(data), tmp_path / CACHE
    log = []
    preprocess.prepare_cache(json_path, cache_path, preprocess.SplitSettings(), log=log.append)
    assert cache_path.is_file() and any("Preprocessing" in line for line in log)
    return json_path, cache_path, data


def prepare(json_path, cache_path, reprocess=False, **settings):
    """prepare_cache with the given settings; returns (arrays, the lines it logged)."""
    log = []
    arrays = preprocess.prepare_cache(json_path, cache_path, preprocess.SplitSettings(**settings),
                                      reprocess=reprocess, log=log.append)
    return arrays, "\n".join(log)


def file_state(path):
    """What changes when a file is rewritten or replaced."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


def test_fresh_cache_is_reused_without_rebuilding(cached, monkeypatch):
    json_path, cache_path, _ = cached
    before = file_state(cache_path)
    monkeypatch.setattr(preprocess, "build_arrays",
                        lambda *a, **k: pytest.fail("a fresh cache was rebuilt"))
    arrays, log = prepare(json_path, cache_path)
    assert "Loaded" in log
    assert file_state(cache_path) == before
    np.testing.assert_array_equal(arrays["X_test"], load_npz(cache_path)["X_test"])


def test_edited_data_json_triggers_a_rebuild(cached):
    json_path, cache_path, data = cached
    old = load_npz(cache_path)
    data["mfcc"] = [[[round(2 * v, 2) for v in row] for row in seg] for seg in data["mfcc"]]
    json_path.write_text(json.dumps(data))
    arrays, log = prepare(json_path, cache_path)
    assert "Preprocessing" in log and "changed" in log
    assert float(arrays["norm_min"]) == pytest.approx(2 * float(old["norm_min"]), rel=1e-6)
    assert float(load_npz(cache_path)["norm_max"]) == pytest.approx(2 * float(old["norm_max"]),
                                                                    rel=1e-6)


@pytest.mark.parametrize("setting, value, effect", [
    ("val_split", 0.3, lambda old, new: len(new["y_val"]) > len(old["y_val"])),
    ("test_split", 0.2, lambda old, new: len(new["y_test"]) > len(old["y_test"])),
    ("seed", 7, lambda old, new: set(new["tracks_test"]) != set(old["tracks_test"])),
    ("split_by", "segment", lambda old, new: str(new["split_kind"]) == "segment"),
])
def test_changed_split_settings_trigger_a_rebuild(cached, setting, value, effect):
    json_path, cache_path, _ = cached
    old = load_npz(cache_path)
    arrays, log = prepare(json_path, cache_path, **{setting: value})
    assert "Preprocessing" in log and setting in log
    assert effect(old, arrays) and effect(old, load_npz(cache_path))
    _, log = prepare(json_path, cache_path, **{setting: value})
    assert "Loaded" in log  # and the rebuilt cache is fresh for the new settings


@pytest.mark.parametrize("corrupt", [
    lambda good: good[:40] + b"\x00 garbage after the zip header" * 10,
    lambda good: good[: len(good) // 2],
    lambda good: b"",
    lambda good: good[:-10],
], ids=["garbage-in-a-zip", "truncated-half", "empty", "truncated-tail"])
def test_corrupt_cache_is_rebuilt(cached, corrupt):
    json_path, cache_path, _ = cached
    good = load_npz(cache_path)
    cache_path.write_bytes(corrupt(cache_path.read_bytes()))
    arrays, log = prepare(json_path, cache_path)
    assert "Preprocessing" in log and "unreadable" in log
    rebuilt = load_npz(cache_path)
    for key in ("X_train", "X_val", "X_test", "y_train", "y_val", "y_test"):
        np.testing.assert_array_equal(rebuilt[key], good[key])
        np.testing.assert_array_equal(arrays[key], good[key])


def test_cache_of_another_layout_is_rebuilt(cached):
    json_path, cache_path, _ = cached
    with open(cache_path, "wb") as handle:
        np.savez_compressed(handle, X_train=np.zeros((2, 1, 8, 4), np.float32))
    arrays, log = prepare(json_path, cache_path)
    assert "Preprocessing" in log
    assert len(load_npz(cache_path)["y_train"]) == len(arrays["y_train"]) == 42


def test_missing_data_json_uses_the_readable_cache_as_is(cached):
    json_path, cache_path, _ = cached
    before = file_state(cache_path)
    json_path.unlink()
    arrays, log = prepare(json_path, cache_path)
    assert "not found" in log and "Preprocessing" not in log
    assert file_state(cache_path) == before
    np.testing.assert_array_equal(arrays["X_val"], load_npz(cache_path)["X_val"])


def test_missing_data_json_says_which_settings_it_cannot_apply(cached):
    json_path, cache_path, _ = cached
    json_path.unlink()
    log = []
    settings = preprocess.SplitSettings(test_split=0.3)
    preprocess.prepare_cache(json_path, cache_path, settings, log=log.append)
    assert "cannot apply test_split 0.1 -> 0.3" in " ".join(log)


def test_missing_data_json_and_no_cache_is_a_data_error(tmp_path):
    with pytest.raises(preprocess.DataError, match="not found"):
        prepare(tmp_path / "data.json", tmp_path / CACHE)
    assert not (tmp_path / CACHE).exists()


def test_deleted_cache_is_rebuilt(cached):
    json_path, cache_path, _ = cached
    cache_path.unlink()
    _, log = prepare(json_path, cache_path)
    assert "Preprocessing" in log and cache_path.is_file()


def test_reprocess_rebuilds_a_fresh_cache(cached, monkeypatch):
    json_path, cache_path, _ = cached
    builds, real_build = [], preprocess.build_arrays
    monkeypatch.setattr(preprocess, "build_arrays",
                        lambda *a, **k: builds.append(a) or real_build(*a, **k))
    arrays, log = prepare(json_path, cache_path, reprocess=True)
    assert "Preprocessing" in log and len(builds) == 1
    np.testing.assert_array_equal(load_npz(cache_path)["X_train"], arrays["X_train"])


def test_cache_of_an_older_format_version_is_rebuilt(cached):
    json_path, cache_path, _ = cached
    arrays = load_npz(cache_path)
    arrays["format_version"] = np.int64(arrays["format_version"]) - 1
    with open(cache_path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    _, log = prepare(json_path, cache_path)
    assert "Preprocessing" in log
    assert int(load_npz(cache_path)["format_version"]) == int(arrays["format_version"]) + 1


def test_load_data_returns_float32_nchw_tensors_and_int64_labels(cached):
    import torch

    json_path, cache_path, data = cached
    log = []
    prepared = preprocess.load_data(json_path, cache_path, preprocess.SplitSettings(),
                                    log=log.append)
    assert any("Loaded" in line for line in log)
    cache = load_npz(cache_path)
    total = 0
    for name in SPLITS:
        x, y = getattr(prepared, f"x_{name}"), getattr(prepared, f"y_{name}")
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        assert x.dim() == 4 and tuple(x.shape[1:]) == (1, 8, 4)
        assert isinstance(y, torch.Tensor) and y.dtype == torch.int64 and len(y) == len(x)
        np.testing.assert_array_equal(x.numpy(), cache[f"X_{name}"])
        np.testing.assert_array_equal(y.numpy(), cache[f"y_{name}"])
        total += len(y)
    assert total == len(data["labels"])
    assert prepared.mapping == data["mapping"]
    assert prepared.norm_min == float(cache["norm_min"]) < prepared.norm_max
    assert prepared.split_kind == "track"
    assert prepared.tracks_test == cache["tracks_test"].tolist()


# ---------------------------------------------------------------------------------------------
# Atomic writes


# Imports preprocess, makes writing the cache stall (mid-write or just before the rename) and
# prints a marker, so that the test can kill -9 the process at that point.
STALLING_RUN = r"""
import io, os, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import preprocess

def stall():
    print("STALLED", flush=True)
    time.sleep(300)

real_savez = np.savez_compressed
def half_written(file, **arrays):
    buffer = io.BytesIO()
    real_savez(buffer, **arrays)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    file.flush()
    stall()

real_fsync = os.fsync
def fsync_then_stall(fd):
    real_fsync(fd)
    stall()

if {where!r} == "mid-write":
    np.savez_compressed = half_written
else:
    os.fsync = fsync_then_stall
sys.exit(preprocess.main([]))
"""


@pytest.mark.skipif(os.name != "posix", reason="kill -9 is POSIX")
@pytest.mark.parametrize("where", ["mid-write", "before-rename"])
def test_kill_9_while_writing_keeps_the_old_cache(where, make_data, write_data, build_cache,
                                                  tmp_path, monkeypatch, capsys):
    build_cache(make_data())
    old = (tmp_path / CACHE).read_bytes()
    new_data = make_data(seed=1)
    write_data(new_data)
    code = STALLING_RUN.format(root=str(SCRIPT.parent), where=where)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        os.kill(proc.pid, signal.SIGKILL)  # kill -9, while the cache is being written
    finally:
        proc.kill()  # when something above failed; harmless on a killed process
        proc.wait()
        errors = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert line.strip() == "STALLED", f"the writer did not reach the write: {errors}"
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / CACHE).read_bytes() == old  # the old cache, byte for byte
    temps = list(tmp_path.glob(".*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the interrupted write went there

    monkeypatch.chdir(tmp_path)
    assert preprocess.main([]) == 0, capsys.readouterr().err
    assert list(tmp_path.glob(".*.tmp")) == temps  # too fresh to tell from a slow live writer
    old_enough = time.time() - common.STALE_TEMP_SECONDS - 1
    os.utime(temps[0], (old_enough, old_enough))
    assert preprocess.main([]) == 0
    assert list(tmp_path.glob(".*.tmp")) == []  # unlocked and old: the killed writer's, removed
    cache = load_npz(tmp_path / CACHE)
    assert sum(len(cache[f"y_{s}"]) for s in SPLITS) == len(new_data["labels"])
    assert (tmp_path / CACHE).read_bytes() != old


def test_failed_write_keeps_the_old_cache_and_no_temp_file(make_data, build_cache, tmp_path,
                                                           monkeypatch):
    build_cache(make_data())
    old = (tmp_path / CACHE).read_bytes()
    (tmp_path / "data.json").write_text(json.dumps(make_data(seed=1)))

    def broken(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # like Ctrl-C in the middle of writing

    monkeypatch.setattr(preprocess.np, "savez_compressed", broken)
    args = ["--data", str(tmp_path / "data.json"), "--cache", str(tmp_path / CACHE)]
    assert preprocess.main(args) == 130  # Ctrl-C: exit status 130, no traceback
    assert (tmp_path / CACHE).read_bytes() == old
    assert list(tmp_path.glob(".*.tmp")) == []


# ---------------------------------------------------------------------------------------------
# Bad input, through the command line

MISSING, DIRECTORY = object(), object()


def bad_input_base():
    """Good data that each case spoils: 3 genres x 10 one-segment tracks of 4 x 3."""
    return preprocess.make_demo_data(genres=3, tracks_per_genre=10, segments_per_track=1,
                                     frames=4, coeffs=3)


def with_value(d, key_path, value):
    """Set d[k0][k1]... = value and return d."""
    target = d
    for key in key_path[:-1]:
        target = target[key]
    target[key_path[-1]] = value
    return d


def drop(d, key):
    """d without key."""
    d.pop(key)
    return d


def json_with_token(d, token):
    """d as JSON text with mfcc[4][1][2] written as the literal token (e.g. 1e999)."""
    with_value(d, ["mfcc", 4, 1, 2], 123456.789)
    return json.dumps(d).replace("123456.789", token)


BAD_INPUTS = [
    # id, turn good data (dict) into what data.json holds, extra arguments, patterns for stderr
    ("missing", lambda d: MISSING, [], [r"--data /\S+/data\.json not found", r"demo"]),
    ("directory", lambda d: DIRECTORY, [], [r"not a file"]),
    ("not-utf8", lambda d: json.dumps(with_value(d, ["mapping", 0], "g\u00e9nre"),
                                      ensure_ascii=False).encode("latin-1"), [], [r"UTF-8"]),
    ("not-json", lambda d: "genre,label\nblues,0\n", [], [r"not valid JSON"]),
    ("truncated", lambda d: json.dumps(d)[:300], [], [r"not valid JSON", r"truncated"]),
    ("empty-file", lambda d: b"", [], [r"not valid JSON"]),
    ("top-level-list", lambda d: json.dumps([d]), [], [r"top level", r"object"]),
    ("missing-mapping", lambda d: drop(d, "mapping"), [], [r"missing key 'mapping'"]),
    ("missing-labels", lambda d: drop(d, "labels"), [], [r"missing key 'labels'"]),
    ("missing-mfcc", lambda d: drop(d, "mfcc"), [], [r"missing key 'mfcc'"]),
    ("mapping-not-a-list", lambda d: with_value(d, ["mapping"], "genre0 genre1 genre2"), [],
     [r"mapping", r"list of genre names"]),
    ("mapping-not-strings", lambda d: with_value(d, ["mapping"], [0, 1, 2]), [],
     [r"mapping\[0\]", r"str"]),
    ("length-mismatch", lambda d: with_value(d, ["labels"], d["labels"][:-1]), [],
     [r"mfcc", r"labels", r"\b30\b", r"\b29\b"]),
    ("no-segments", lambda d: drop(with_value(with_value(d, ["mfcc"], []), ["labels"], []),
                                   "tracks"), [], [r"no segments"]),
    ("shape-differs", lambda d: with_value(d, ["mfcc", 4], d["mfcc"][4][:-1]), [],
     [r"mfcc\[4\]", r"\(3, 3\)", r"\(4, 3\)"]),
    ("ragged-segment", lambda d: with_value(d, ["mfcc", 4, 1], [1.0]), [],
     [r"mfcc\[4\]", r"ragged"]),
    ("segment-1d", lambda d: with_value(d, ["mfcc", 4], [1.0, 2.0, 3.0]), [],
     [r"mfcc\[4\]", r"2-D"]),
    ("segment-4d", lambda d: with_value(d, ["mfcc", 4], [[[[1.0], [2.0]]] * 3] * 4), [],
     [r"mfcc\[4\]", r"2-D"]),
    ("all-segments-4d", lambda d: with_value(d, ["mfcc"], [[[[[1.0]]]]] * 30), [],
     [r"mfcc\[0\]", r"2-D"]),
    ("string-value", lambda d: with_value(d, ["mfcc", 4, 1, 2], "loud"), [],
     [r"mfcc\[4\]\[1\]\[2\]", r"str"]),
    ("nan", lambda d: with_value(d, ["mfcc", 4, 1, 2], float("nan")), [],
     [r"mfcc\[4\]", r"NaN"]),
    ("infinity", lambda d: with_value(d, ["mfcc", 4, 1, 2], float("inf")), [],
     [r"mfcc\[4\]", r"Infinity"]),
    ("minus-infinity", lambda d: with_value(d, ["mfcc", 4, 1, 2], float("-inf")), [],
     [r"mfcc\[4\]", r"Infinity"]),
    ("1e999", lambda d: json_with_token(d, "1e999"), [], [r"mfcc\[4\]", r"infinite"]),
    ("beyond-float32", lambda d: json_with_token(d, "1e39"), [], [r"mfcc\[4\]", r"infinite"]),
    ("label-float", lambda d: with_value(d, ["labels", 2], 1.5), [],
     [r"labels\[2\] = 1\.5", r"not a whole number", r"integer"]),
    ("genre-with-newline", lambda d: with_value(d, ["mapping", 1], "hip\nhop"), [],
     [r"mapping\[1\]", r"'hip\\nhop'", r"control character"]),
    ("genre-with-tab", lambda d: with_value(d, ["mapping", 2], "jazz\t"), [],
     [r"mapping\[2\]", r"control character"]),
    ("label-true", lambda d: with_value(d, ["labels", 2], True), [], [r"labels\[2\]", r"int"]),
    ("label-string", lambda d: with_value(d, ["labels", 2], "1"), [], [r"labels\[2\]", r"int"]),
    ("label-too-big", lambda d: with_value(d, ["labels", 2], 3), [],
     [r"labels\[2\]", r"\b3\b", r"0\.\.2|range"]),
    ("label-negative", lambda d: with_value(d, ["labels", 2], -1), [], [r"labels\[2\]", r"-1"]),
    ("label-beyond-int64", lambda d: with_value(d, ["labels", 2], 10**30), [], [r"labels\[2\]"]),
    ("genre-too-few-segments", lambda d: drop(subset(d, list(range(10)) + [10, 11]
                                                     + list(range(20, 30))), "tracks"), [],
     [r"'genre1'", r"only 2 segment"]),
    ("genre-too-few-tracks", lambda d: uneven_genres(d, [10, 2, 10], "track"), [],
     [r"'genre1'", r"only 2 track", r"--split-by segment"]),
    ("tracks-wrong-length", lambda d: with_value(d, ["tracks"], d["tracks"][:-1]), [],
     [r"tracks", r"\b29\b", r"\b30\b"]),
    ("one-genre-only", lambda d: drop(subset(d, range(10)), "tracks"), [],
     [r"only one genre", r"at least two"]),
    ("output-is-a-directory", lambda d: d, ["--cache", "."], [r"--cache /\S+ is a folder"]),
    ("track-with-two-labels", lambda d: with_value(d, ["tracks", 4], d["tracks"][12]), [],
     [r"track 'demo1\.00002'", r"labels"]),
    ("split-by-track-without-tracks", lambda d: drop(d, "tracks"), ["--split-by", "track"],
     [r"tracks", r"--split-by"]),
]


@pytest.mark.parametrize("args", [[], ["--split-by", "segment"], ["--split-by", "track"]])
def test_bad_input_base_is_good_data(build_cache, args):
    """So that each bad case below fails because of what it spoils, not for want of data."""
    cache = build_cache(bad_input_base(), *args)
    assert sum(len(cache[f"y_{s}"]) for s in SPLITS) == 30


# Most cases call preprocess.main in-process: a subprocess pays about a second of interpreter and
# import start-up, which the suite cannot afford thirty times. This one goes through the real
# command line, as do the plain run and the argparse error below, so that the exit status and
# stderr of `python preprocess.py` itself stay covered.
THROUGH_CLI = {"missing"}


def run_main(module, args):
    """module.main(args) in-process; returns its exit status, argparse's SystemExit included."""
    try:
        return module.main(list(map(str, args)))
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_the_cache_alone(
        case, good_cache_bytes, write_data, run_cli, tmp_path, capsys, monkeypatch):
    case_id, make_bad, args, patterns = case
    bad = make_bad(bad_input_base())
    if bad is DIRECTORY:
        (tmp_path / "data.json").mkdir()
    elif bad is not MISSING:
        write_data(bad)
    (tmp_path / CACHE).write_bytes(good_cache_bytes)  # made by an earlier, good run
    cache_mtime = (tmp_path / CACHE).stat().st_mtime_ns
    listing = sorted(os.listdir(tmp_path))

    if case_id in THROUGH_CLI:
        result = run_cli(*args)
        status, stderr = result.returncode, result.stderr
    else:
        monkeypatch.chdir(tmp_path)
        status, stderr = run_main(preprocess, args), capsys.readouterr().err

    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for pattern in patterns:
        assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    assert (tmp_path / CACHE).read_bytes() == good_cache_bytes
    assert (tmp_path / CACHE).stat().st_mtime_ns == cache_mtime
    assert sorted(os.listdir(tmp_path)) == listing  # no temporary or other file left behind


def test_genre_without_segments_is_allowed_with_one_warning(make_data, write_data, tmp_path,
                                                            monkeypatch, capsys):
    data = make_data()
    data["mapping"].append("silence")
    write_data(data)
    monkeypatch.chdir(tmp_path)
    status, result = preprocess.main([]), capsys.readouterr()
    assert status == 0, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "silence" in lines[0]
    cache = load_npz(tmp_path / CACHE)
    assert cache["mapping"].tolist() == data["mapping"]
    silence = [line.split() for line in result.out.splitlines() if "silence" in line]
    assert silence == [["silence", "0", "0", "0"]]


# ---------------------------------------------------------------------------------------------
# Track split


@pytest.fixture
def track_data(make_data):
    """4 genres of 12/9/7/5 tracks, 3 segments each."""
    data = make_data(genres=4, tracks_per_genre=12, segments_per_track=3, frames=4, coeffs=3)
    return uneven_genres(data, [12, 9, 7, 5], "track")


def test_track_split_keeps_every_track_in_one_split(track_data, build_cache):
    cache = build_cache(track_data)
    assert str(cache["split_kind"]) == "track"
    raw = raw_2d(track_data)
    lo, hi = float(cache["norm_min"]), float(cache["norm_max"])
    tracks, y = np.array(track_data["tracks"]), np.array(track_data["labels"])
    rows_of = {}
    for name in SPLITS:
        rows_of[name] = source_rows(cache[f"X_{name}"][:, 0], (raw - lo) / (hi - lo))
        # The recorded track id and label of each row are those of the segment it holds.
        np.testing.assert_array_equal(cache[f"tracks_{name}"], tracks[rows_of[name]])
        np.testing.assert_array_equal(cache[f"y_{name}"], y[rows_of[name]])
    assert sorted(np.concatenate(list(rows_of.values()))) == list(range(len(y)))
    track_sets = [set(tracks[rows_of[name]]) for name in SPLITS]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not track_sets[a] & track_sets[b], (SPLITS[a], SPLITS[b])
    for name in SPLITS:  # whole tracks: all 3 segments of each track are in its split
        _, counts = np.unique(cache[f"tracks_{name}"], return_counts=True)
        assert set(counts) == {3}


@pytest.mark.parametrize("seed", [42, 5])
def test_track_split_is_stratified_like_sklearn_on_the_tracks(track_data, build_cache, seed):
    cache = build_cache(track_data, "--split-seed", seed)
    ids = list(dict.fromkeys(track_data["tracks"]))
    genre_of = dict(zip(track_data["tracks"], track_data["labels"]))
    labels = np.array([genre_of[t] for t in ids])
    units = np.arange(len(ids))
    rest, test = train_test_split(units, test_size=0.1, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=0.2 / 0.9, stratify=labels[rest],
                                  random_state=seed)
    for name, ref in zip(SPLITS, (train, val, test)):
        expected = np.bincount(labels[ref], minlength=4)
        got = np.bincount([genre_of[t] for t in set(cache[f"tracks_{name}"])], minlength=4)
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert sum(len(set(cache[f"tracks_{s}"])) for s in SPLITS) == len(ids) == 33


def test_track_split_is_deterministic_for_a_seed(track_data, build_cache):
    first = build_cache(track_data, "--split-seed", 3, output="a.npz")
    again = build_cache(track_data, "--split-seed", 3, output="b.npz")
    other = build_cache(track_data, "--split-seed", 4, output="c.npz")
    for key in [f"{kind}_{name}" for kind in ("X", "y", "tracks") for name in SPLITS]:
        np.testing.assert_array_equal(first[key], again[key])
    assert set(first["tracks_test"]) != set(other["tracks_test"])


def test_split_by_segment_with_tracks_gives_the_segment_split(track_data, build_cache):
    cache = build_cache(track_data, "--split-by", "segment")
    assert str(cache["split_kind"]) == "segment"
    y = np.array(track_data["labels"])
    ref = reference_segment_split(y)
    raw = raw_2d(track_data)
    lo, hi = raw[ref["train"]].min(), raw[ref["train"]].max()
    for name in SPLITS:
        rows = source_rows(cache[f"X_{name}"][:, 0], (raw - lo) / (hi - lo))
        assert sorted(rows) == sorted(ref[name]), name
    shared = set(cache["tracks_train"]) & set(cache["tracks_test"])
    assert shared  # what the track split exists to prevent


@pytest.mark.parametrize("tracks, args, kind", [
    (True, [], "track"),
    (True, ["--split-by", "segment"], "segment"),
    (False, [], "segment"),
    (True, ["--split-by", "track"], "track"),
])
def test_summary_names_the_split_and_warns_only_for_segment_splits(make_data, build_cache,
                                                                   tracks, args, kind):
    data = make_data() if tracks else without_tracks(make_data())
    _, out = build_cache(data, *args, stdout=True)
    assert re.search(rf"split by {kind}\b", out, re.IGNORECASE), out
    assert out.lower().count("optimistic") == (1 if kind == "segment" else 0), out


# ---------------------------------------------------------------------------------------------
# Command line


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        preprocess.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for option, default in [("--data", "data.json"), ("--cache", "preprocessed_data.npz"),
                            ("--val-split", "0.2"), ("--test-split", "0.1"), ("--split-seed", "42"),
                            ("--split-by", "auto")]:
        assert option in out
        assert re.search(rf"default: {re.escape(default)}\)", out), (option, default)


@pytest.mark.parametrize("args", [
    ["--val-split", "0.6", "--test-split", "0.5"],
    ["--val-split", "0.9", "--test-split", "0.1"],
    ["--val-split", "0"],
    ["--test-split", "1"],
    ["--val-split", "-0.2"],
    ["--split-seed", "abc"],
    ["--split-seed", "-1"],
    ["--split-seed", str(2**32)],
    ["--split-by", "album"],
    ["--cache", ""],
])
def test_bad_split_options_are_argparse_errors(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        preprocess.main(args)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_output_over_the_input_is_refused(make_data, write_data, tmp_path, capsys):
    json_path = write_data(make_data())
    before = json_path.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        preprocess.main(["--data", str(json_path), "--cache", str(tmp_path / "." / "data.json")])
    assert exit_info.value.code == 2 and "destroy" in capsys.readouterr().err
    assert json_path.read_bytes() == before


def test_cli_split_fractions_error_through_a_subprocess(run_cli, make_data, write_data, tmp_path):
    write_data(make_data())
    result = run_cli("--val-split", "0.6", "--test-split", "0.5")
    assert result.returncode == 2 and "usage" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / CACHE).exists()


def test_plain_run_prints_the_summary(make_data, write_data, run_cli, tmp_path):
    data = without_tracks(make_data())
    write_data(data)
    result = run_cli()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (tmp_path / CACHE).is_file()
    assert re.search(r"\b60 segments\b", out), out
    shape_line = next(line for line in out.splitlines() if "shape" in line.lower())
    assert re.findall(r"\d+", shape_line) == ["1", "8", "4"], shape_line  # (C, H, W)
    y = np.array(data["labels"])
    ref = reference_segment_split(y)
    for genre, name in enumerate(data["mapping"]):
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [name])
        expected = [str(int(np.sum(y[ref[s]] == genre))) for s in SPLITS]
        assert row[1:] == expected, (name, row)
    raw = raw_2d(data)[ref["train"]]
    for value in (raw.min(), raw.max()):
        assert f"{value:.2f}" in out, (value, out)
    assert CACHE in out
    assert re.search(r"\d+(\.\d+)? ?[kKM]i?B", out), "cache size missing"
    assert re.search(r"\d+(\.\d+)? ?s\b", out), "elapsed time missing"


def test_a_live_writers_temp_file_survives_a_second_writer(tmp_path):
    target = tmp_path / "out.json"
    with common.atomic_write(target, "w") as first:
        first.write("{}")
        [live] = tmp_path.glob(".*.tmp")
        old = time.time() - common.STALE_TEMP_SECONDS - 1
        os.utime(live, (old, old))  # even when it looks abandoned, its lock says it is alive
        common.write_json({"second": True}, target)
        assert live.exists()
        assert json.loads(target.read_text()) == {"second": True}
    assert json.loads(target.read_text()) == {}  # the first writer finished last, and won
    assert list(tmp_path.glob(".*.tmp")) == []


def test_temp_files_of_concurrent_writers_have_unique_names(tmp_path):
    target = tmp_path / "out.json"
    with common.atomic_write(target, "w"), common.atomic_write(target, "w"):
        temps = list(tmp_path.glob(".out.json.*.tmp"))  # two, both beside the target
    assert len(temps) == 2


def test_integral_float_labels_are_accepted_as_integers(make_data, build_cache):
    data = make_data()
    as_ints = build_cache(data, output="ints.npz")
    data["labels"] = [float(label) for label in data["labels"]]  # as numpy arrays dump to JSON
    as_floats = build_cache(data, output="floats.npz")
    for key in ("y_train", "y_val", "y_test", "tracks_test"):
        assert as_floats[key].dtype == as_ints[key].dtype
        assert as_floats[key].tolist() == as_ints[key].tolist()


@pytest.mark.parametrize("script", ["preprocess", "train"])
def test_help_shows_no_default_for_on_off_flags(script, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--demo" in out and "(default: False)" not in out
    assert "(default: 0.2)" in out  # the formatter still shows real defaults


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_written_files_get_the_umask_mode_or_keep_the_old_files_mode(tmp_path):
    old_umask = os.umask(0o022)
    try:
        common.write_json({}, tmp_path / "new.json")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644  # as open() would give
        (tmp_path / "shared.json").write_text("{}")
        os.chmod(tmp_path / "shared.json", 0o664)
        common.write_json({"a": 1}, tmp_path / "shared.json")
        assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old_umask)
