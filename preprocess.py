"""Turn data.json (MFCC segments of songs) into a normalized train/validation/test cache.

Usage:
    python preprocess.py                  # data.json -> preprocessed_data.npz (always rebuilds)
    python preprocess.py --demo           # generated demo/data.json -> demo/preprocessed_data.npz
    python preprocess.py --data songs.json --cache songs.npz --val-split 0.2 --test-split 0.1
    python preprocess.py --split-by filtered   # GTZAN's fault-filtered split (whole GTZAN only)

The split is stratified by genre, by track when data.json has "tracks"; all splits are scaled to
[0, 1] by the training split's range. train.py's load_data() reuses the cache while it is fresh.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path

import msgspec
import numpy as np

import extract
import features as recipes
from common import (DataError, HelpFormatter, at_least, atomic_write, check_replaceable,
                    input_file, run_main)

JSON_PATH = "data.json"  # input: {"mapping", "labels", "mfcc", "tracks"?, "features"?}
PREPROCESSED_DATA_PATH = "preprocessed_data.npz"  # the cache train.py reads
VALIDATION_SPLIT = 0.2  # fraction of all data used for validation
TEST_SPLIT = 0.1  # fraction of all data held out for the final test
RANDOM_STATE = 42  # random_state of both train_test_split calls: same input, same split
SPLIT_BY = "auto"  # "track" when data.json has "tracks", else "segment"
SPLIT_CHOICES = ("auto", "segment", "track", "filtered")  # filtered: the shipped GTZAN lists
DEMO_DIR = str(extract.DEMO_DIR)  # --demo keeps its generated data.json, cache and models here
DEMO_JSON_PATH = os.path.join(DEMO_DIR, JSON_PATH)  # --demo's generated data.json
DEMO_CACHE_PATH = os.path.join(DEMO_DIR, PREPROCESSED_DATA_PATH)  # and its cache
CACHE_FORMAT_VERSION = 2  # bump when the cache layout changes, so that old caches are rebuilt
MIN_PER_GENRE = 3  # fewest tracks (or segments) per genre that a 3-way stratified split needs
SPLIT_NAMES = ("train", "val", "test")  # the splits, as the cache's keys name them
FILTERED_SPLIT_FILE = "gtzan_filtered_split.json"  # Kereliuk, Sturm & Larsen's lists, shipped
GTZAN_ID = re.compile(r"[a-z]+\.\d{5}")  # a GTZAN track id as those lists hold them: blues.00012
DEMO_GENRES = extract.DEMO_GENRES  # GTZAN's genres: the demo data's names, as the demo audio's
CACHE_MEMBERS = {"format_version.npy", "X_train.npy", "y_train.npy", "mapping.npy"}  # not any zip
CACHE_KIND = "a preprocessed-data cache"  # what --cache must hold to be replaced
DATA_HINT = "pass one with --data, make one with `python extract.py AUDIO_DIR`, or try --demo"
BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some Windows editors write


@dataclasses.dataclass(frozen=True)
class SplitSettings:
    """How the data is divided: part of the cache's fingerprint and of each model's card."""
    val_split: float = VALIDATION_SPLIT
    test_split: float = TEST_SPLIT
    seed: int = RANDOM_STATE
    split_by: str = SPLIT_BY


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A validated data.json."""
    x: np.ndarray  # (N, C, H, W) float32, raw (not normalized)
    y: np.ndarray  # (N,) int64
    mapping: list
    tracks: np.ndarray | None  # (N,) str: each segment's track id
    features: dict | None  # the stored MFCC recipe
    source_sha256: str


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """What train.py trains on: the splits scaled by the training range, and how they were made."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    tracks_test: list  # each test segment's track id; [] without tracks
    mapping: list
    norm_min: float
    norm_max: float
    split_kind: str  # "segment" | "track" | "filtered"
    split: SplitSettings
    source_sha256: str
    features: dict | None  # the recipe: the tutorial's when assumed, None when unknown
    features_assumed: bool


class _Document(msgspec.Struct):
    """data.json's types: msgspec names the first value that has another."""
    mapping: list[str]
    labels: list[int | float]  # 1.0 counts: numpy arrays dumped to JSON write labels so
    mfcc: list[msgspec.Raw]  # decoded a segment at a time, never all as Python floats
    tracks: list[str | int] | None = None
    features: dict | None = None


_SEGMENT = msgspec.json.Decoder(list[list[float | list[float]]])  # (H, W) or (H, W, C)


def decode_document(raw, path):
    """data.json's bytes as a _Document; DataError in msgspec's words, with line and column."""
    start = len(BOM) if raw.startswith(BOM) else 0
    try:
        return msgspec.json.decode(memoryview(raw)[start:], type=_Document)
    except (msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: {exc}: fix that value or re-extract with extract.py") from None
    except msgspec.DecodeError as exc:  # msgspec names a byte; a reader looks for line and column
        byte = re.search(r"\(byte (\d+)\)", str(exc))
        pos = start + int(byte.group(1)) if byte else len(raw)  # no byte: the file is cut short
        line = raw.count(b"\n", 0, pos) + 1
        column = pos - max(start, raw.rfind(b"\n", 0, pos) + 1) + 1
        if not byte:
            hint = "where the file ends: write it again"
        elif re.match(rb"-?(NaN|Inf)", raw[pos:pos + 4]):
            hint = "NaN and Infinity are not JSON numbers: drop that segment"
        else:
            hint = "fix it or write it again"
        raise DataError(f"{path}: {exc} at line {line}, column {column}: {hint}") from None


def check_labels(doc, path):
    """(labels int64, track ids or None) once the mapping, the counts and the tracks are checked."""
    names, n = doc.mapping, len(doc.mfcc)
    if not names or len(set(names)) < len(names) or not all(
            name.strip() and name.isprintable() for name in names):
        raise DataError(f"{path}: 'mapping' must list distinct, printable genre names: fix {names}")
    if len(doc.labels) != n or (doc.tracks is not None and len(doc.tracks) != n):
        raise DataError(f"{path}: {n} segments in 'mfcc' need as many 'labels' ({len(doc.labels)}) "
                        f"and 'tracks' ({'none' if doc.tracks is None else len(doc.tracks)})")
    y = np.array(doc.labels, dtype=object)  # JSON integers may exceed int64 and float64
    bad = np.flatnonzero(~((y >= 0) & (y < len(names)) & (y % 1 == 0)).astype(bool))
    if bad.size:
        raise DataError(f"{path}: labels[{bad[0]}] = {doc.labels[bad[0]]!s:.20} is not a genre "
                        f"index 0..{len(names) - 1}: fix it or add its genre to 'mapping'")
    y = y.astype(np.int64)
    if doc.tracks is None:
        return y, None
    tracks = np.array([str(track) for track in doc.tracks])
    _, first, track_of = np.unique(tracks, return_index=True, return_inverse=True)
    clash = np.flatnonzero(y[first][track_of] != y)
    if clash.size:
        raise DataError(f"{path}: track '{tracks[clash[0]]}' has segments of two genres: all "
                        f"segments of a track share one label")
    return y, tracks


def segment_array(segments, path):
    """The segments as one float32 (N, C, H, W) array, checked to share a shape and be finite."""
    if not segments:
        raise DataError(f"{path}: 'mfcc' holds no segments: extract features from audio first")
    x = None
    for index, raw in enumerate(segments):
        try:
            with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
                segment = np.array(_SEGMENT.decode(raw), dtype=np.float32)
        except (msgspec.ValidationError, ValueError) as exc:  # ValueError: ragged rows
            raise DataError(f"{path}: mfcc[{index}]: {recipes.first_line(exc)}: a segment is a "
                            f"list of frames of equal length") from None
        if not segment.size:
            raise DataError(f"{path}: mfcc[{index}] is empty: keep full segments only")
        x = np.empty((len(segments),) + segment.shape, np.float32) if x is None else x
        if segment.shape != x.shape[1:]:
            raise DataError(f"{path}: mfcc[{index}] has shape {segment.shape}, mfcc[0] "
                            f"{x.shape[1:]}: segments must share one shape; keep full ones only")
        x[index] = segment
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.size:
        raise DataError(f"{path}: mfcc[{bad[0]}] holds a value that is not a finite float32 "
                        f"number: drop or re-extract that segment")
    # A 2-D segment is one channel; a 3-D one is channels-last and moves them first.
    return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def recipe_of(features, shape):
    """(recipe, assumed): the stored one, else the tutorial's if the shape is its, else None."""
    if features:
        return features, False
    tutorial = recipes.TUTORIAL_FEATURES
    return (dict(tutorial) if tuple(shape) == recipes.segment_shape(tutorial) else None), True


def load_dataset(path):
    """data.json, read and validated; DataError (one line) for every bad input."""
    try:
        raw = Path(input_file(path, "--data", DATA_HINT)).read_bytes()
    except OSError as exc:
        raise DataError(f"--data {path} cannot be read ({exc.strerror}): check it") from None
    doc = decode_document(raw, path)
    y, tracks = check_labels(doc, path)
    x = segment_array(doc.mfcc, path)
    where = f"{path}: 'features'"
    print(f"Read {len(y)} segments of {len(doc.mapping)} genres from {path}")
    if doc.features is not None:
        recipes.check_shape(x.shape[1:], recipes.check_features(doc.features, where), where)
    elif recipe_of(None, x.shape[1:])[0]:
        print(f"Note: {path} has no 'features' (the MFCC recipe extract.py writes); assuming the "
              f"tutorial recipe, which gives segments of this shape")
    return Dataset(x, y, list(doc.mapping), tracks, doc.features, hashlib.sha256(raw).hexdigest())


def split_kind(settings, dataset, path):
    """"segment", "track" or "filtered": what --split-by asks for, given the data at hand."""
    if settings.split_by == "auto":
        return "segment" if dataset.tracks is None else "track"
    if settings.split_by != "segment" and dataset.tracks is None:
        raise DataError(f"{path}: --split-by {settings.split_by} needs 'tracks' (a track id per "
                        f"segment, as extract.py writes): add them or use --split-by segment")
    return settings.split_by


def stratified(dataset, kind, rows, size, seed):
    """train_test_split of the rows' units (tracks or segments), stratified by genre: (kept rows,
    held-out rows). size: a fraction or a count of units."""
    from sklearn.model_selection import train_test_split  # only when a split is made

    unit, first = np.arange(len(rows)), slice(None)
    if kind != "segment":
        _, first, unit = np.unique(dataset.tracks[rows], return_index=True, return_inverse=True)
    labels = dataset.y[rows][first]
    counts = np.bincount(labels, minlength=len(dataset.mapping))
    few = ", ".join(f"{g} ({n})" for g, n in zip(dataset.mapping, counts) if 0 < n < MIN_PER_GENRE)
    if few or np.count_nonzero(counts) < 2:
        raise DataError(f"a stratified split needs two genres or more, each of {MIN_PER_GENRE} "
                        f"{kind}s or more; too few: {few or 'all genres but one'}: add data or "
                        f"remove those genres" + ", or use --split-by segment" * (kind == "track"))
    try:
        kept, held = train_test_split(np.arange(len(labels)), test_size=size, stratify=labels,
                                      random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot split {len(labels)} {kind}s into stratified sets ({exc}): add "
                        f"data or change --val-split/--test-split") from None
    return rows[np.isin(unit, kept)], rows[np.isin(unit, held)]


def split_train_val(dataset, kind, rest_rows, val_fraction, seed):
    """Stratified (train, val) rows of rest_rows, by unit; val_fraction is of ALL the data."""
    total = len(dataset.y) if kind == "segment" else len(np.unique(dataset.tracks))
    return stratified(dataset, kind, rest_rows, int(np.ceil(val_fraction * total)), seed)


def filtered_rows(dataset):
    """Rows of the fault-filtered split's train, val and test lists; other tracks left out."""
    path = input_file(Path(__file__).with_name(FILTERED_SPLIT_FILE), "--split-by filtered",
                      "the project ships this file: restore it")
    odd = [track for track in dataset.tracks if not GTZAN_ID.fullmatch(track)]
    if odd:
        raise DataError(f"--split-by filtered needs GTZAN track ids such as blues.00012, not "
                        f"{str(odd[0])!r}: use --split-by track")
    lists = json.loads(path.read_text(encoding="utf-8"))
    parts = [np.flatnonzero(np.isin(dataset.tracks, lists[name])) for name in SPLIT_NAMES]
    out = np.setdiff1d(np.arange(len(dataset.y)), np.concatenate(parts))
    if out.size:
        print(f"Fault-filtered split: {out.size} segments of {len(set(dataset.tracks[out]))} "
              f"tracks in none of its lists are left out")
    has = np.array([np.bincount(dataset.y[p], minlength=len(dataset.mapping)) > 0 for p in parts])
    lacking = [f"{genre} (no {'/'.join(np.array(SPLIT_NAMES)[~has[:, g]])})"
               for g, genre in enumerate(dataset.mapping) if not has[:, g].all()]
    if lacking:
        raise DataError(f"the fault-filtered split leaves genres without tracks: "
                        f"{', '.join(lacking)}: it needs the whole GTZAN set (1,000 tracks); use "
                        f"--split-by track for a subset")
    return tuple(parts)


def split_rows(dataset, kind, settings):
    """(train, val, test) row indices: the fault-filtered lists, or two stratified splits."""
    if kind == "filtered":
        return filtered_rows(dataset)
    rest, test = stratified(dataset, kind, np.arange(len(dataset.y)), settings.test_split,
                            settings.seed)
    return (*split_train_val(dataset, kind, rest, settings.val_split, settings.seed), test)


def normalize(x, norm_min, norm_max):
    """x scaled by the training range to [0, 1]; constant training data maps to 0."""
    scale = (norm_max - norm_min) or 1.0
    return ((x - np.float32(norm_min)) / np.float32(scale)).astype(np.float32, copy=False)


def prepare(dataset, kind, rows, settings):
    """PreparedData of the rows (train, val, test), all scaled by the training rows' range."""
    lo, hi = float(dataset.x[rows[0]].min()), float(dataset.x[rows[0]].max())
    with np.errstate(all="ignore"):  # a range beyond float32 is refused below
        x = [normalize(dataset.x[part], lo, hi) for part in rows]
    if not all(np.isfinite(part).all() for part in x) or hi - lo > float(np.finfo(np.float32).max):
        raise DataError(f"the segments span [{lo:g}, {hi:g}] or more, too wide to scale in "
                        f"float32: they are not MFCCs of audio; re-extract them")
    y = [dataset.y[part] for part in rows]
    tracks = [] if dataset.tracks is None else dataset.tracks[rows[2]].tolist()
    return PreparedData(x[0], y[0], x[1], y[1], x[2], y[2], tracks, list(dataset.mapping), lo, hi,
                        kind, settings, dataset.source_sha256,
                        *recipe_of(dataset.features, dataset.x.shape[1:]))


def is_cache(path):
    """True when path is a zip holding our cache's members (not merely any zip)."""
    with zipfile.ZipFile(path) as archive:
        return CACHE_MEMBERS <= set(archive.namelist())


def write_cache(dataset, p, rows, path):
    """Write the cache of PreparedData p atomically, replacing only a cache of ours."""
    arrays = {key: np.array(value) for key, value in dict(
        dataclasses.asdict(p.split), mapping=p.mapping, split_kind=p.split_kind,
        norm_min=p.norm_min, norm_max=p.norm_max, source_sha256=p.source_sha256,
        features=json.dumps(dataset.features) if dataset.features else "",
        format_version=CACHE_FORMAT_VERSION).items()}  # 0-d arrays, as np.load gives them back
    for name, part in zip(SPLIT_NAMES, rows):
        arrays.update({f"X_{name}": getattr(p, f"x_{name}"), f"y_{name}": getattr(p, f"y_{name}"),
                       f"tracks_{name}": np.array([], str) if dataset.tracks is None
                       else dataset.tracks[part]})
    check_replaceable(path, "--cache", CACHE_KIND, is_cache)
    with atomic_write(path, "wb", "--cache") as handle:
        np.savez_compressed(handle, **arrays)


def is_sound(a):
    """Whether a cache's arrays fit together: a hand-made cache may hold anything."""
    if not (a["format_version"] == CACHE_FORMAT_VERSION and a["mapping"].dtype.kind == "U"
            and str(a["split_kind"]) in SPLIT_CHOICES[1:]
            and np.isfinite([a["norm_min"], a["norm_max"]]).all()):
        return False
    for name in SPLIT_NAMES:  # every split there, of one shape, finite, labelled in range
        x, y, tracks = a[f"X_{name}"], a[f"y_{name}"], a[f"tracks_{name}"]
        if not (x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == a["X_train"].shape[1:]
                and len(x) > 0 and np.isfinite(x).all() and y.dtype == np.int64
                and y.shape == (len(x),) and 0 <= y.min() and y.max() < len(a["mapping"])
                and len(tracks) in (0, len(x))):
            return False
    return True


def read_cache(path):
    """(PreparedData, None) of a sound cache, or (None, why it cannot be used)."""
    if not os.path.exists(path):
        return None, "no cache yet"
    try:
        with np.load(path, allow_pickle=False) as npz:
            a = {key: npz[key] for key in npz.files}
        if is_sound(a):
            stored = str(a["features"])
            return PreparedData(
                a["X_train"], a["y_train"], a["X_val"], a["y_val"], a["X_test"], a["y_test"],
                a["tracks_test"].tolist(), a["mapping"].tolist(), float(a["norm_min"]),
                float(a["norm_max"]), str(a["split_kind"]),
                SplitSettings(*(a[f.name].item() for f in dataclasses.fields(SplitSettings))),
                str(a["source_sha256"]),
                *recipe_of(json.loads(stored) if stored else None, a["X_train"].shape[1:])), None
    except Exception:  # noqa: BLE001 - zipfile, zlib and numpy each raise their own
        pass
    return None, "cache damaged or of another format"


def changes(stored, wanted):
    """{field: "field old -> new"} for each split setting that differs."""
    old, new = dataclasses.asdict(stored), dataclasses.asdict(wanted)
    return {key: f"{key} {old[key]} -> {new[key]}" for key in old if old[key] != new[key]}


def stale_reason(cached, json_path, settings):
    """Why the cache does not fit data.json and the split settings, or None when it does."""
    changed = changes(cached.split, settings)
    if changed:
        return f"split settings changed ({', '.join(changed.values())})"
    try:
        with open(json_path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:  # unreadable: load_dataset says so in one line
        digest = None
    if digest != cached.source_sha256:
        return f"{json_path} changed since the cache was built"
    return None


def load_data(json_path=JSON_PATH, cache_path=PREPROCESSED_DATA_PATH, settings=SplitSettings(),
              reprocess=False, explicit=()):
    """PreparedData from the cache while it is fresh, else rebuilt from data.json (saying why).

    Without data.json a sound cache is used as it is, unless a split flag given explicitly (a
    SplitSettings field named in explicit) asks for what it does not hold.
    """
    check_replaceable(cache_path, "--cache", CACHE_KIND, is_cache)  # before any work
    cached, reason = (None, "rebuild requested") if reprocess else read_cache(cache_path)
    if cached is not None and not os.path.exists(json_path):
        refused = [text for field, text in changes(cached.split, settings).items()
                   if field in explicit]
        if refused:
            raise DataError(f"--data {json_path} not found, so the cache {cache_path} cannot be "
                            f"rebuilt with {', '.join(refused)}: restore the data (or pass it "
                            f"with --data) or drop those flags")
        print(f"{json_path} not found; using the cache {cache_path} as it is")
        return cached
    input_file(json_path, "--data", DATA_HINT)  # a FIFO is refused before it is hashed
    reason = reason if cached is None else stale_reason(cached, json_path, settings)
    if reason is None:
        print(f"Loaded preprocessed data from {cache_path}")
        return cached
    print(f"Preprocessing {json_path} -> {cache_path} ({reason})")
    dataset = load_dataset(json_path)
    kind = split_kind(settings, dataset, json_path)
    rows = split_rows(dataset, kind, settings)
    prepared = prepare(dataset, kind, rows, settings)
    write_cache(dataset, prepared, rows, cache_path)
    return prepared


def make_demo_data(genres=10, tracks_per_genre=10, segments_per_track=10, frames=130, coeffs=13,
                   seed=0, decimals=2):
    """A deterministic, learnable, GTZAN-shaped data.json dict with tracks: each genre its own
    MFCC profile and rhythm, each track its own colour, each segment its own noise.
    decimals=None keeps full precision, as an extractor's output dumped as-is would."""
    rng = np.random.default_rng(seed)
    level = np.linspace(-200.0, 0.0, coeffs)  # MFCC-like: a large first coefficient, then smaller
    profile = rng.normal(0.0, 12.0, (genres, coeffs))
    rhythm = rng.uniform(0.05, 0.5, genres)  # cycles per frame of each genre's modulation
    data = {"mapping": list(DEMO_GENRES) if genres == len(DEMO_GENRES) else
            [f"genre{g}" for g in range(genres)], "labels": [], "mfcc": [], "tracks": []}
    for genre, track in np.ndindex(genres, tracks_per_genre):
        colour = rng.normal(0.0, 8.0, coeffs)
        for _ in range(segments_per_track):
            phase = rng.uniform(0.0, 2 * np.pi)
            pulse = 12.0 * np.sin(2 * np.pi * rhythm[genre] * np.arange(frames)[:, None] + phase)
            noise = rng.normal(0.0, 25.0, (frames, coeffs))
            segment = level + profile[genre] + colour + pulse + noise
            data["mfcc"].append((segment if decimals is None else segment.round(decimals)).tolist())
            data["labels"].append(genre)
            data["tracks"].append(f"demo{genre}.{track:05d}")
    return data


def ensure_demo_data(path):
    """Write the demo data set to path unless something is already there."""
    if not os.path.lexists(path):
        print(f"Writing demo data to {path}")
        with atomic_write(path, "wb") as handle:
            handle.write(msgspec.json.encode(make_demo_data()))


def add_split_arguments(parser):
    """The split flags, shared with train.py."""
    fraction = at_least(float, 0.0, strict=True)
    parser.add_argument("--val-split", type=fraction, default=VALIDATION_SPLIT,
                        help="fraction of all data used for validation")
    parser.add_argument("--test-split", type=fraction, default=TEST_SPLIT,
                        help="fraction of all data held out for the final test")
    parser.add_argument("--split-seed", type=at_least(int, 0, maximum=2**32 - 1),
                        default=RANDOM_STATE,
                        help="random_state of the split")
    parser.add_argument("--split-by", choices=SPLIT_CHOICES, default=SPLIT_BY,
                        help="auto: by track when data.json has 'tracks', so that a track stays "
                             "in one split; filtered: GTZAN's fault-filtered split (Kereliuk, "
                             "Sturm & Larsen 2015), for the whole GTZAN set")


def split_settings(args):
    """The SplitSettings of parsed flags; DataError when they leave no training data."""
    if args.val_split + args.test_split >= 1:
        raise DataError(f"--val-split {args.val_split} plus --test-split {args.test_split} leave "
                        f"no training data: keep their sum below 1")
    return SplitSettings(args.val_split, args.test_split, args.split_seed, args.split_by)


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, description="Validate "
                                     "data.json, split it, scale it to [0, 1] by the training "
                                     "split's range and write the cache train.py reads.")
    parser.add_argument("--data", default=JSON_PATH, help="input: the segments extract.py wrote")
    parser.add_argument("--cache", default=PREPROCESSED_DATA_PATH, help="output: the cache")
    add_split_arguments(parser)
    parser.add_argument("--demo", action="store_true",
                        help=f"use generated demo data in {DEMO_DIR}/ instead of --data/--cache")
    args = parser.parse_args(argv)
    if args.demo:
        if (args.data, args.cache) != (JSON_PATH, PREPROCESSED_DATA_PATH):
            parser.error("--demo uses its own files in demo/: drop --data and --cache")
        args.data, args.cache = DEMO_JSON_PATH, DEMO_CACHE_PATH
    return args


def print_summary(p, cache_path, seconds):
    """How the data was split and scaled, and what was written."""
    ys = [getattr(p, f"y_{name}") for name in SPLIT_NAMES]
    print("Input shape: (C={}, H={}, W={})".format(*p.x_train.shape[1:]))
    print(f"Split by {p.split_kind}: train/val/test = {'/'.join(str(len(y)) for y in ys)} segments")
    if p.split_kind == "segment":
        remedy = "--split-by track" if p.tracks_test else "add 'tracks' to data.json"
        print(f"Note: segments of one track can sit in both training and test sets, so test "
              f"accuracy is optimistic ({remedy} for a track-level split)")
    width = max(len(genre) for genre in p.mapping + ["genre"])
    print(f"  {'genre':<{width}}  {'train':>5}  {'val':>5}  {'test':>5}")
    for label, genre in enumerate(p.mapping):
        print(f"  {genre:<{width}}" + "".join(f"  {np.count_nonzero(y == label):>5}" for y in ys))
    print(f"Normalized to [0, 1] with the training range [{p.norm_min:.4f}, {p.norm_max:.4f}]")
    print(f"Wrote {cache_path} ({os.path.getsize(cache_path) / 1e6:.1f} MB) in {seconds:.1f} s")


def main(argv=None) -> int:
    """Rebuild the cache from data.json and print a summary; exit status 2 on bad input."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        settings = split_settings(args)
        if args.demo:
            ensure_demo_data(args.data)
        prepared = load_data(args.data, args.cache, settings, reprocess=True)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(prepared, args.cache, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
