"""Turn data.json (MFCC segments of songs) into a normalized, stratified train/validation/test cache.

Usage:
    python preprocess.py                  # data.json -> preprocessed_data.npz (always rebuilds)
    python preprocess.py --demo           # generated demo/data.json -> demo/preprocessed_data.npz
    python preprocess.py --data songs.json --cache songs.npz --val-split 0.2 --test-split 0.1

train.py imports load_data() from here: it reuses the cache while it is fresh and rebuilds it, saying
why, when it is missing, stale or unreadable.
"""
import argparse
import concurrent.futures
import hashlib
import json
import math
import re
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

import extract  # only for the MFCC recipe's schema: importing it needs no audio library
from common import (DataError, HelpFormatter, atomic_write, check_archive_output, file_path,
                    run_command, seed_value, write_json)

JSON_PATH = "data.json"  # input: {"mapping": [...], "labels": [...], "mfcc": [...], "tracks"?: [...]}
PREPROCESSED_DATA_PATH = "preprocessed_data.npz"  # cache read by train.py
VALIDATION_SPLIT = 0.2  # fraction of the whole data set used for validation
TEST_SPLIT = 0.1  # fraction of the whole data set held out for the final test
RANDOM_STATE = 42  # seed of both train_test_split calls: same input, same split, any machine
SPLIT_BY = "auto"  # "segment", "track", or "auto" (= "track" when data.json has a "tracks" list)
DEMO_DIR = "demo"  # --demo keeps its generated data.json, cache and models here
CACHE_FORMAT_VERSION = 2  # bump when the cache layout changes, so that old caches are rebuilt
MIN_PER_GENRE = 3  # fewest segments (or tracks) per genre that a three-way split can stratify

SPLIT_NAMES = ("train", "val", "test")
DEMO_GENRES = list(extract.DEMO_GENRES)  # the demo data set's genre names, as the demo audio's
SPLIT_CHOICES = ("auto", "segment", "track")
# The flag of each SplitSettings field.
SPLIT_FLAGS = {"val_split": "--val-split", "test_split": "--test-split", "seed": "--split-seed",
               "split_by": "--split-by"}


@dataclass(frozen=True)
class SplitSettings:
    """How the segments are divided; part of the cache's fingerprint."""

    val_split: float = VALIDATION_SPLIT
    test_split: float = TEST_SPLIT
    seed: int = RANDOM_STATE
    split_by: str = SPLIT_BY


@dataclass(frozen=True)
class PreparedData:
    """The three splits as float32 (N, C, H, W) tensors, int64 labels, and what describes them."""

    x_train: object
    y_train: object
    x_val: object
    y_val: object
    x_test: object
    y_test: object
    mapping: list
    norm_min: float
    norm_max: float
    split_kind: str
    tracks_test: list  # track id of each test row; empty when data.json has no "tracks"
    source_sha256: str = ""  # SHA-256 of the data.json the cache was built from
    split: SplitSettings = SplitSettings()  # the settings the cache was split with
    # The MFCC recipe (extract.py's "features"). Without one in data.json: the tutorial recipe
    # when the segments have its shape, else None (unknown), and features_assumed is True.
    features: dict = None
    features_assumed: bool = True


class _Document(msgspec.Struct):
    """The typed shape of data.json; msgspec rejects wrong types with the path of the culprit."""

    mapping: list[str]
    # Floats are allowed so that integral ones (1.0, as numpy arrays dumped to JSON often are) can
    # be accepted; check_labels refuses the others.
    labels: list[int | float]
    # Segments stay raw JSON here and are decoded one at a time into a float32 array, so the whole
    # file never exists as Python lists of floats (that would double the peak memory).
    mfcc: list[msgspec.Raw]
    tracks: list[str | int] | None = None
    features: dict | None = None


_KEY_HINTS = {
    "mapping": "'mapping' must be a list of genre names (strings)",
    "labels": "'labels' must hold one integer genre index per segment (true/false are not integers)",
    "mfcc": "'mfcc' must hold one 2-D (frames x coefficients) or 3-D list of numbers per segment",
    "tracks": "'tracks' must hold one track id (string or integer) per segment",
    "features": "'features' must be the MFCC recipe object that extract.py writes",
}


# ---------------------------------------------------------------------------------------------
# Reading and validating data.json


def check_source(path, context=""):
    """Raise DataError, naming the absolute path and --data, unless path is an existing file.

    context is said after the path, e.g. why a missing cache makes the file necessary.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise DataError(
            f"--data {path} not found{context}: pass the path of your data.json with --data, "
            f"make one from audio with `python extract.py AUDIO_DIR` (see README), or try the "
            f"built-in demo data with --demo"
        )
    if not path.is_file():
        raise DataError(f"--data {path} is not a file: pass the path of your data.json with --data")


def read_source(path):
    """Return the bytes of the data file, or raise DataError saying how to get one."""
    check_source(path)
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"--data {Path(path).absolute()} cannot be read ({exc.strerror}): check "
                        f"its permissions") from None


def decode_document(raw, path):
    """Parse and type-check data.json, turning decoder errors into one readable line."""
    try:
        return msgspec.json.decode(raw, type=_Document)
    except msgspec.ValidationError as exc:
        raise DataError(_describe_validation_error(str(exc), path)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # the latter: bad bytes in a string
        raise DataError(_describe_malformed_json(raw, path, exc)) from None
    except RecursionError:
        raise DataError(f"{path}: nested far too deeply to be MFCC data: check the file") from None


def _describe_validation_error(message, path):
    """Reword msgspec's 'Expected X, got Y - at `$.key[i]`' for a user."""
    if message.startswith("Expected `object`"):
        return f"{path}: the top level must be a JSON object with keys mapping, labels and mfcc"
    missing = re.search(r"missing required field `(\w+)`", message)
    if missing:
        key = missing.group(1)
        return f"{path}: missing key '{key}': {_KEY_HINTS[key]}"
    where = re.search(r"at `\$\.(\w+)(.*)`", message)
    problem = _reword(message.split(" - at ")[0])
    if not where:
        return f"{path}: {problem}"
    key, index = where.groups()
    return f"{path}: {key}{index}: {problem}; {_KEY_HINTS.get(key, 'fix that value')}"


def _reword(problem):
    """msgspec's wording of a problem, made plainer where it is cryptic."""
    if problem == "Number out of range":
        return "a number too large to represent (infinite)"
    return problem


def _describe_malformed_json(raw, path, error):
    """Say why strict JSON parsing failed: NaN/Infinity tokens, bad encoding, or broken syntax."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{path}: not UTF-8 text (bad byte at offset {exc.start}): save it as UTF-8 JSON"
    try:
        doc = json.loads(text)  # lenient: accepts the NaN/Infinity tokens that msgspec refuses
    except json.JSONDecodeError as exc:
        return (
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"the file may be truncated: write it again"
        )
    where = _locate_non_finite(doc)
    if where is None:  # e.g. a lone UTF-16 surrogate escape, which only the lenient parser accepts
        return f"{path}: not valid strict JSON ({error}): write it again"
    token = re.search(r"-?\b(?:NaN|Infinity)\b", text)
    line = text.count("\n", 0, token.start()) + 1 if token else "?"
    return (
        f"{path}: {where} (line {line}): {token.group(0) if token else 'a value'} is not a finite "
        f"number: drop or re-extract the segments that contain it"
    )


def _locate_non_finite(doc):
    """Name the first top-level entry holding NaN or Infinity, e.g. "mfcc[3]", or None."""
    items = doc.items() if isinstance(doc, dict) else [("document", doc)]
    for key, value in items:
        for index, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
            if _has_non_finite(item):
                return key if index is None else f"{key}[{index}]"
    return None


def _has_non_finite(value):
    """True when a parsed JSON value is or contains NaN or an infinity."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(item) for item in value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    return False


_SEGMENT = msgspec.json.Decoder(list[list[float | list[float]]])  # 2-D (H, W) or 3-D (H, W, C)


def decode_segment(raw, index, path):
    """One segment of 'mfcc' as a float32 array; DataError naming mfcc[index] if it is malformed."""
    try:
        segment = _SEGMENT.decode(raw)
    except msgspec.ValidationError as exc:
        problem, _, where = str(exc).partition(" - at `$")
        raise DataError(
            f"{path}: mfcc[{index}]{where.rstrip('`')}: {_reword(problem)}; {_KEY_HINTS['mfcc']}"
        ) from None
    try:
        with np.errstate(over="ignore"):  # float32 overflow becomes inf, reported by the caller
            return np.array(segment, dtype=np.float32)
    except ValueError:
        raise DataError(
            f"{path}: mfcc[{index}] is ragged (its rows differ in length or mix numbers and lists): "
            f"re-extract it"
        ) from None


def to_segment_array(segments, path):
    """Decode the segments into one float32 (N, C, H, W) array, checking they share one shape."""
    if not segments:
        raise DataError(f"{path}: 'mfcc' holds no segments: extract features from some audio first")
    first = decode_segment(segments[0], 0, path)
    if 0 in first.shape:
        raise DataError(f"{path}: mfcc[0] has shape {first.shape}: segments must not be empty")
    x = np.empty((len(segments),) + first.shape, dtype=np.float32)
    for index, raw in enumerate(segments):
        segment = decode_segment(raw, index, path)
        if segment.shape != first.shape:
            raise DataError(
                f"{path}: mfcc[{index}] has shape {segment.shape} but mfcc[0] has {first.shape}: "
                f"every segment must have the same shape; keep only full-length segments"
            )
        x[index] = segment
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        raise DataError(
            f"{path}: mfcc[{bad[0][0]}] holds a NaN or infinite value: drop or re-extract that segment"
        )
    # 2-D segments get one channel; 3-D ones are channels-last and move their channels first.
    return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def check_mapping(mapping, path):
    """Refuse an empty genre list, a name listed twice, or one with a control character."""
    if not mapping:
        raise DataError(f"{path}: 'mapping' is empty: list the genre names, index = label")
    if len(set(mapping)) != len(mapping):
        name = next(m for i, m in enumerate(mapping) if m in mapping[:i])
        raise DataError(f"{path}: genre '{name}' appears twice in 'mapping': names must be unique")
    for index, name in enumerate(mapping):
        # A newline or tab in a name would break the one-genre-per-line reports and files.
        if any(unicodedata.category(char) == "Cc" for char in name):
            raise DataError(f"{path}: mapping[{index}] = {name!r} contains a control character "
                            f"(such as a newline or tab): remove it from the genre name")


def integral_labels(labels, path):
    """The labels as Python ints; integral floats such as 1.0 count, 1.5 is an error."""
    for index, label in enumerate(labels):
        if isinstance(label, float) and not label.is_integer():
            raise DataError(f"{path}: labels[{index}] = {label} is not a whole number: a label is "
                            f"the integer index of a genre in 'mapping'")
    return [int(label) for label in labels]


def check_labels(labels, mapping, path):
    """Return labels as int64 after checking each indexes the mapping."""
    check_mapping(mapping, path)
    labels = integral_labels(labels, path)
    huge = next((i for i, label in enumerate(labels) if not -2**63 <= label < 2**63), None)
    if huge is not None:  # msgspec accepts integers of any size; int64 does not
        raise DataError(
            f"{path}: labels[{huge}] = {labels[huge]} is outside 0..{len(mapping) - 1}: "
            f"fix the label"
        )
    y = np.array(labels, dtype=np.int64)
    bad = np.flatnonzero((y < 0) | (y >= len(mapping)))
    if len(bad):
        raise DataError(
            f"{path}: labels[{bad[0]}] = {y[bad[0]]} is outside 0..{len(mapping) - 1} "
            f"('mapping' has {len(mapping)} genres): fix the label or add the genre to 'mapping'"
        )
    return y


def check_tracks(tracks, y, path):
    """Return track ids as strings after checking their count and that each track has one genre."""
    if len(tracks) != len(y):
        raise DataError(
            f"{path}: 'tracks' has {len(tracks)} entries but 'labels' has {len(y)}: "
            f"give one track id per segment, or drop 'tracks'"
        )
    ids = np.array([str(t) for t in tracks])
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    mismatch = np.flatnonzero(y != y[first][inverse])
    if len(mismatch):
        i = mismatch[0]
        raise DataError(
            f"{path}: track '{ids[i]}' has segments with labels {y[first[inverse[i]]]} and {y[i]} "
            f"(tracks[{first[inverse[i]]}] and tracks[{i}]): all segments of a track share one genre"
        )
    return ids


def check_features(features, x, path):
    """The recipe of data.json, validated and matching the segments' shape; None when absent."""
    if features is None:
        return None
    where = f"{path}: 'features'"
    features = extract.validate_features(features, where)
    shape = tuple(x.shape[1:])
    expected = (1, features["frames"], features["n_mfcc"])
    if shape != expected:
        raise DataError(
            f"{where} describes segments of {expected[1]} frames x {expected[2]} MFCCs, but the "
            f"segments are {' x '.join(map(str, shape[1:]))}"
            f"{f' x {shape[0]} channels' if shape[0] != 1 else ''}: re-extract with extract.py"
        )
    return features


def load_dataset(path):
    """Read, validate and convert data.json.

    Returns (x, y, mapping, tracks or None, features or None, raw sha256).
    """
    path = Path(path).absolute()  # every message names the file it looked at in full
    raw = read_source(path)
    # hashlib releases the GIL, so the fingerprint is computed while msgspec parses.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(lambda: hashlib.sha256(raw).hexdigest())
        doc = decode_document(raw, path)
    if len(doc.mfcc) != len(doc.labels):
        raise DataError(
            f"{path}: 'mfcc' has {len(doc.mfcc)} segments but 'labels' has {len(doc.labels)}: "
            f"give exactly one label per segment"
        )
    y = check_labels(doc.labels, doc.mapping, path)
    tracks = None if doc.tracks is None else check_tracks(doc.tracks, y, path)
    x = to_segment_array(doc.mfcc, path)
    features = check_features(doc.features, x, path)
    return x, y, list(doc.mapping), tracks, features, digest.result()


# ---------------------------------------------------------------------------------------------
# Splitting and normalizing


def resolve_split_kind(split_by, tracks, path):
    """Return "segment" or "track" for the requested --split-by and the data at hand."""
    if split_by == "track" and tracks is None:
        raise DataError(
            f"{path}: --split-by track needs a 'tracks' list (one track id per segment): "
            f"add it or use --split-by segment"
        )
    if split_by == "auto":
        return "segment" if tracks is None else "track"
    return split_by


def check_genre_sizes(unit_labels, mapping, unit, path):
    """Refuse genres too small to stratify; return the names of genres with no data at all."""
    counts = np.bincount(unit_labels, minlength=len(mapping))
    if np.count_nonzero(counts) < 2:
        raise DataError(f"{path}: only one genre has segments: a classifier needs at least two")
    for genre, count in zip(mapping, counts):
        if 0 < count < MIN_PER_GENRE:
            # Few tracks with many segments each can still be split by segment (optimistically).
            other = " or split by segment (--split-by segment)" if unit == "track" else ""
            raise DataError(
                f"{path}: genre '{genre}' has only {count} {unit}(s); a stratified train/validation/"
                f"test split needs at least {MIN_PER_GENRE} per genre: add data for it, remove "
                f"it{other}"
            )
    return [genre for genre, count in zip(mapping, counts) if count == 0]


def split_units(y, groups=None):
    """The units a split moves whole: (unit of each row or None for segments, label of each unit)."""
    if groups is None:
        return None, y
    _, first, unit_of_row = np.unique(groups, return_index=True, return_inverse=True)
    return unit_of_row, y[first]


def split_stratified(unit_labels, settings, unit_of_row=None):
    """Return train/val/test row indices, stratified by label; rows of one unit stay together."""
    # Imported here, not at the top: predict.py imports this module (for normalize) and should
    # not pay scikit-learn's start-up time.
    from sklearn.model_selection import train_test_split

    units = np.arange(len(unit_labels))
    rest, test = train_test_split(
        units, test_size=settings.test_split, stratify=unit_labels, random_state=settings.seed
    )
    train, val = train_test_split(
        rest,
        test_size=settings.val_split / (1 - settings.test_split),
        stratify=unit_labels[rest],
        random_state=settings.seed,
    )
    if unit_of_row is None:
        return train, val, test
    return tuple(np.flatnonzero(np.isin(unit_of_row, part)) for part in (train, val, test))


def tutorial_shape(shape):
    """True when (C, H, W) segments have the shape the tutorial recipe gives."""
    tutorial = extract.TUTORIAL_FEATURES
    return tuple(shape) == (1, tutorial["frames"], tutorial["n_mfcc"])


def features_of(arrays):
    """(recipe, assumed) of a cache: its stored recipe, else the tutorial's if the shape fits."""
    stored = str(arrays["features"])
    if stored:
        return json.loads(stored), False
    if tutorial_shape(arrays["X_train"].shape[1:]):
        return dict(extract.TUTORIAL_FEATURES), True
    return None, True


def normalization_range(x_train):
    """Global min and max of the training split: the only statistics used to scale every split."""
    return float(x_train.min()), float(x_train.max())


def normalize(x, norm_min, norm_max):
    """Scale x to [0, 1] by the training range; constant data maps to 0 instead of dividing by 0."""
    scale = (norm_max - norm_min) or 1.0
    return ((x - np.float32(norm_min)) / np.float32(scale)).astype(np.float32, copy=False)


def build_arrays(path, settings):
    """Load data.json, split and normalize it; return the cache's arrays (fingerprint included)."""
    path = Path(path).absolute()  # every message names the file it looked at in full
    x, y, mapping, tracks, features, digest = load_dataset(path)
    if features is None and tutorial_shape(x.shape[1:]):
        print(f"Note: {path} has no 'features' (the MFCC recipe written by extract.py); "
              f"assuming the tutorial recipe, extract.py's defaults")
    kind = resolve_split_kind(settings.split_by, tracks, path)
    unit_of_row, unit_labels = split_units(y, tracks if kind == "track" else None)
    empty = check_genre_sizes(unit_labels, mapping, kind, path)
    if empty:
        print(f"warning: {path}: no segments for genre(s) {', '.join(empty)}; "
              f"the model keeps an output for each but never sees one", file=sys.stderr)
    try:
        parts = split_stratified(unit_labels, settings, unit_of_row)
    except ValueError as exc:
        raise DataError(
            f"{path}: cannot split {len(unit_labels)} {kind}s into stratified train/validation/"
            f"test sets ({exc}): add data or change --val-split/--test-split"
        ) from None
    norm_min, norm_max = normalization_range(x[parts[0]])
    arrays = {"mapping": np.array(mapping, dtype=str), "split_kind": np.array(kind),
              "features": np.array("" if features is None else json.dumps(features))}
    for name, rows in zip(SPLIT_NAMES, parts):
        arrays[f"X_{name}"] = normalize(x[rows], norm_min, norm_max)
        arrays[f"y_{name}"] = y[rows]
        arrays[f"tracks_{name}"] = tracks[rows] if tracks is not None else np.array([], dtype=str)
    arrays.update(norm_min=np.float64(norm_min), norm_max=np.float64(norm_max))
    arrays.update(fingerprint(digest, settings))
    return arrays


def fingerprint(digest, settings):
    """What produced a cache: the source's content hash, the split settings and the format."""
    return {
        "source_sha256": np.array(digest),
        "val_split": np.float64(settings.val_split),
        "test_split": np.float64(settings.test_split),
        "seed": np.int64(settings.seed),
        "split_by": np.array(settings.split_by),
        "format_version": np.int64(CACHE_FORMAT_VERSION),
    }


# ---------------------------------------------------------------------------------------------
# The cache


def write_cache(arrays, path):
    """Write the arrays as a compressed npz, atomically."""
    with atomic_write(path, flag="--cache") as handle:
        np.savez_compressed(handle, **arrays)


CACHE_KEYS = (
    [f"{kind}_{name}" for kind in ("X", "y", "tracks") for name in SPLIT_NAMES]
    + ["mapping", "split_kind", "norm_min", "norm_max", "features"]
    + list(fingerprint("", SplitSettings()))
)


def read_cache(path):
    """Return the cache's arrays, or None when it is missing, unreadable or of another format."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in CACHE_KEYS}
    except Exception:  # a truncated or foreign file fails in zipfile, zlib, numpy or the key lookup
        return None
    return arrays if int(arrays["format_version"]) == CACHE_FORMAT_VERSION else None


def stored_settings(arrays):
    """The SplitSettings a cache was built with."""
    return SplitSettings(float(arrays["val_split"]), float(arrays["test_split"]),
                         int(arrays["seed"]), str(arrays["split_by"]))


def changed_settings(arrays, settings):
    """{field: (cached, requested)} for each split setting that differs from the cache's."""
    stored = {key: arrays[key].item() for key in SPLIT_FLAGS}
    wanted = {key: getattr(settings, key) for key in stored}
    return {key: (stored[key], wanted[key]) for key in stored if stored[key] != wanted[key]}


def describe_changes(changes):
    """{field: (old, new)} as ["field old -> new", ...]."""
    return [f"{key} {old} -> {new}" for key, (old, new) in changes.items()]


def stale_reason(arrays, json_path, settings):
    """Why the cache no longer matches data.json and the settings, or None when it is fresh."""
    changed = describe_changes(changed_settings(arrays, settings))
    if changed:
        return "split settings changed (" + ", ".join(changed) + ")"
    if file_sha256(json_path) != arrays["source_sha256"].item():
        return f"{json_path} changed since the cache was built"
    return None


def file_sha256(path):
    """SHA-256 of a file's content, read in chunks."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror}): check its permissions") from None


def use_cache_as_it_is(arrays, json_path, cache_path, settings, explicit, log):
    """The cache's arrays when data.json is gone; DataError if an explicit setting cannot apply.

    explicit names the SplitSettings fields given on the command line: those the cache cannot
    honour are an error, while defaults that differ from the cache only earn a note.
    """
    changes = changed_settings(arrays, settings)
    refused = {key: change for key, change in changes.items() if key in explicit}
    if refused:
        raise DataError(
            f"--data {Path(json_path).absolute()} not found, so the cache "
            f"{Path(cache_path).absolute()} cannot be rebuilt with "
            f"{', '.join(describe_changes(refused))}: restore the data file (or pass it with "
            f"--data), or drop {' and '.join(SPLIT_FLAGS[key] for key in refused)}"
        )
    ignored = f"; it cannot apply {', '.join(describe_changes(changes))}" if changes else ""
    log(f"{Path(json_path).absolute()} not found; using the existing cache "
        f"{Path(cache_path).absolute()} as it is{ignored}")
    return arrays


def missing_source_context(cache_path, reprocess):
    """Why a missing data.json matters: what is wrong with the cache that would replace it."""
    cache_path = Path(cache_path).absolute()
    if reprocess:
        return f", and --reprocess asks to rebuild the cache --cache {cache_path} from it"
    if not cache_path.exists():
        return f", and there is no cache at --cache {cache_path} to use instead"
    return f", and the cache --cache {cache_path} is unreadable or of an older format"


def prepare_cache(json_path, cache_path, settings, reprocess=False, log=print, explicit=()):
    """Return the cache's arrays: reused when fresh, rebuilt (saying why) otherwise.

    explicit: the SplitSettings fields given on the command line (see use_cache_as_it_is).
    """
    check_archive_output(cache_path, "--cache")
    arrays = None if reprocess else read_cache(cache_path)
    if arrays is not None and not Path(json_path).is_file():
        return use_cache_as_it_is(arrays, json_path, cache_path, settings, explicit, log)
    if reprocess:
        reason = "rebuild requested"
    elif arrays is None:
        reason = "no cache yet" if not Path(cache_path).exists() else "cache unreadable or outdated"
    else:
        reason = stale_reason(arrays, json_path, settings)
    if reason is None:
        log(f"Loaded preprocessed data from {cache_path}")
        return arrays
    check_source(json_path, context=missing_source_context(cache_path, reprocess))
    log(f"Preprocessing {json_path} -> {cache_path} ({reason})")
    arrays = build_arrays(json_path, settings)
    write_cache(arrays, cache_path)
    return arrays


def load_data(json_path=JSON_PATH, cache_path=PREPROCESSED_DATA_PATH, settings=SplitSettings(),
              reprocess=False, log=print, explicit=()):
    """Return PreparedData for train.py, preprocessing first when the cache is missing or stale.

    explicit: the SplitSettings fields given on the command line (see use_cache_as_it_is).
    """
    import torch  # imported here so that `python preprocess.py` stays light and fast

    arrays = prepare_cache(json_path, cache_path, settings, reprocess, log, explicit)
    tensors = {key: torch.from_numpy(arrays[key]) for key in CACHE_KEYS if key[:2] in ("X_", "y_")}
    features, assumed = features_of(arrays)
    return PreparedData(
        x_train=tensors["X_train"], y_train=tensors["y_train"],
        x_val=tensors["X_val"], y_val=tensors["y_val"],
        x_test=tensors["X_test"], y_test=tensors["y_test"],
        mapping=arrays["mapping"].tolist(),
        norm_min=float(arrays["norm_min"]), norm_max=float(arrays["norm_max"]),
        split_kind=str(arrays["split_kind"]), tracks_test=arrays["tracks_test"].tolist(),
        source_sha256=str(arrays["source_sha256"]), split=stored_settings(arrays),
        features=features, features_assumed=assumed,
    )


# ---------------------------------------------------------------------------------------------
# Demo data


def make_demo_data(genres=10, tracks_per_genre=10, segments_per_track=10, frames=130, coeffs=13,
                   seed=0, decimals=2):
    """A deterministic, learnable, GTZAN-shaped data set in the data.json format (with tracks).

    decimals=None keeps full float64 precision, as an extractor's output dumped as-is would.
    """
    rng = np.random.default_rng(seed)
    level = np.linspace(-200.0, 0.0, coeffs)  # MFCC-like: a large first coefficient, then smaller
    genre_profile = rng.normal(0.0, 12.0, (genres, coeffs))
    genre_rhythm = rng.uniform(0.05, 0.5, genres)  # cycles per frame of each genre's modulation
    frame = np.arange(frames)[:, None]
    mfcc, labels, tracks = [], [], []
    for genre in range(genres):
        for track in range(tracks_per_genre):
            colour = rng.normal(0.0, 8.0, coeffs)  # what sets a track apart from its genre-mates
            for _ in range(segments_per_track):
                phase = rng.uniform(0.0, 2 * np.pi)
                pulse = 12.0 * np.sin(2 * np.pi * genre_rhythm[genre] * frame + phase)
                noise = rng.normal(0.0, 25.0, (frames, coeffs))
                segment = level + genre_profile[genre] + colour + pulse + noise
                mfcc.append((segment if decimals is None else np.round(segment, decimals)).tolist())
                labels.append(genre)
                tracks.append(f"demo{genre}.{track:05d}")
    mapping = DEMO_GENRES if genres == len(DEMO_GENRES) else [f"genre{g}" for g in range(genres)]
    return {"mapping": list(mapping), "labels": labels, "mfcc": mfcc, "tracks": tracks}


def ensure_demo_data(path, log=print):
    """Write the demo data set to path unless it is already there."""
    if not Path(path).exists():
        log(f"Writing demo data to {path}")
        write_json(make_demo_data(), path)


def demo_paths():
    """Where --demo keeps its data.json and cache."""
    return str(Path(DEMO_DIR) / JSON_PATH), str(Path(DEMO_DIR) / PREPROCESSED_DATA_PATH)


# ---------------------------------------------------------------------------------------------
# Command line


def check_distinct(parser, source, target, target_flag):
    """Refuse to write the cache over the input (or the input over itself)."""
    if Path(source).resolve() == Path(target).resolve():
        parser.error(f"{target_flag} {target} is the input file: writing it would destroy the data")


def split_fraction(text):
    """argparse type: a fraction strictly between 0 and 1."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction strictly between 0 and 1")
    return value


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Validate data.json, normalize it to [0, 1] and write a stratified "
                    "train/validation/test split to a compressed .npz cache.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data", type=file_path, default=JSON_PATH, help="input JSON file")
    parser.add_argument("--cache", type=file_path, default=PREPROCESSED_DATA_PATH,
                        help="cache file to write")
    add_split_arguments(parser)
    parser.add_argument("--demo", action="store_true",
                        help=f"use generated demo data in {DEMO_DIR}/ instead of --data/--cache")
    args = parser.parse_args(argv)
    check_split_arguments(parser, args)
    check_distinct(parser, args.data, args.cache, "--cache")
    if args.demo and (args.data, args.cache) != (JSON_PATH, PREPROCESSED_DATA_PATH):
        parser.error("--demo uses its own files in demo/; drop --data and --cache")
    return args


def add_split_arguments(parser, defaults=True):
    """The split flags, shared with train.py; without defaults, absent flags stay unset."""
    def default(value):
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--val-split", type=split_fraction, default=default(VALIDATION_SPLIT),
                        help="fraction of all data used for validation")
    parser.add_argument("--test-split", type=split_fraction, default=default(TEST_SPLIT),
                        help="fraction of all data held out for testing")
    parser.add_argument("--split-seed", type=seed_value, default=default(RANDOM_STATE),
                        help="random_state of the train/validation/test split")
    parser.add_argument("--split-by", choices=SPLIT_CHOICES, default=default(SPLIT_BY),
                        help="keep each track's segments in one split ('auto': when data.json "
                             "has 'tracks')")


def given_split_settings(parser, argv=None):
    """The SplitSettings fields whose flags argv gives explicitly, even if at their defaults.

    parser has the split flags without defaults (add_split_arguments(..., defaults=False)), so
    only the flags actually on the command line end up in the parsed namespace.
    """
    given = vars(parser.parse_args(argv))
    return frozenset(field for field, flag in SPLIT_FLAGS.items()
                     if flag[2:].replace("-", "_") in given)  # argparse's dest of the flag


def check_split_arguments(parser, args):
    """Reject split fractions that leave no training data."""
    if args.val_split + args.test_split >= 1.0:
        parser.error("--val-split plus --test-split must stay below 1 to leave training data")


def split_settings(args):
    """The SplitSettings named on the command line."""
    return SplitSettings(args.val_split, args.test_split, args.split_seed, args.split_by)


def print_summary(arrays, json_path, cache_path, seconds):
    """Report what was read and what was written."""
    n = {name: len(arrays[f"y_{name}"]) for name in SPLIT_NAMES}
    shape = arrays["X_train"].shape[1:]
    mapping, kind = arrays["mapping"].tolist(), str(arrays["split_kind"])
    print(f"Read {sum(n.values())} segments of {len(mapping)} genres from {json_path}")
    print(f"Input shape: (C={shape[0]}, H={shape[1]}, W={shape[2]})")
    print(f"Split by {kind}: train/val/test = {n['train']}/{n['val']}/{n['test']} segments")
    if kind == "segment":
        remedy = "--split-by track" if len(arrays["tracks_train"]) else "add 'tracks' to data.json"
        print("Note: segments of one track can sit in both training and test sets, so test "
              f"accuracy is optimistic ({remedy} for a track-level split)")
    width = max(len(genre) for genre in mapping + ["genre"])
    print(f"  {'genre':<{width}}  {'train':>5}  {'val':>5}  {'test':>5}")
    for label, genre in enumerate(mapping):
        counts = [int(np.sum(arrays[f"y_{name}"] == label)) for name in SPLIT_NAMES]
        print(f"  {genre:<{width}}  {counts[0]:>5}  {counts[1]:>5}  {counts[2]:>5}")
    print(f"Normalized to [0, 1] with the training range "
          f"[{float(arrays['norm_min']):.4f}, {float(arrays['norm_max']):.4f}]")
    size_mb = Path(cache_path).stat().st_size / 1e6
    print(f"Wrote {cache_path} ({size_mb:.1f} MB) in {seconds:.1f} s")


def main(argv=None) -> int:
    """Rebuild the cache from data.json and print a summary; exit status 2 on bad input."""
    args = parse_args(argv)
    json_path, cache_path = demo_paths() if args.demo else (args.data, args.cache)
    start = time.perf_counter()
    try:
        check_archive_output(cache_path, "--cache")
        if args.demo:
            ensure_demo_data(json_path)
        arrays = build_arrays(json_path, split_settings(args))
        write_cache(arrays, cache_path)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted; the previous cache, if any, is unchanged.", file=sys.stderr)
        return 130
    print_summary(arrays, json_path, cache_path, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
