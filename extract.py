"""Turn genre folders of audio into data.json: the MFCCs of 3-s segments, with the recipe written down.

Usage:
    python extract.py AUDIO_DIR                   # AUDIO_DIR/<genre>/<track>.wav ... -> data.json
    python extract.py genres --data songs.json --workers 2
    python extract.py --demo                      # synthesize demo/audio/ and extract demo/audio.json

Every subfolder of AUDIO_DIR is a genre (sorted names = `mapping`). Each track is loaded as mono at
SAMPLE_RATE, cut into NUM_SEGMENTS segments of TRACK_DURATION / NUM_SEGMENTS seconds, and every
segment with exactly the expected number of frames becomes one (frames x NUM_MFCC) entry of `mfcc`,
computed with librosa exactly as `librosa.feature.mfcc(y=segment, ...)` would. The full recipe,
every librosa setting that changes the numbers included, goes to data.json's `features` object.

Nothing from librosa or soundfile is imported at module level, so preprocess.py (and anything
else) can import this module to validate a recipe without the audio libraries installed.
"""
import argparse
import collections
import concurrent.futures
import contextlib
import ctypes
import functools
import importlib.util
import json
import math
import os
import re
import signal as signals
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

from common import (DataError, HelpFormatter, at_least, atomic_write, check_output_file,
                    file_path, fork_context, interrupts_deferred, run_command)

# The recipe. Defaults are the tutorial's constants and current librosa's own defaults.
SAMPLE_RATE = 22050  # Hz; every file is resampled to it and mixed down to mono
TRACK_DURATION = 30  # seconds of each track that are cut into segments
NUM_SEGMENTS = 10  # segments per track: 3-s segments of 66,150 samples
NUM_MFCC = 13  # MFCCs per frame (the segment's width)
N_FFT = 2048  # STFT window size in samples
HOP_LENGTH = 512  # samples between frames
WIN_LENGTH = None  # STFT window length; None = N_FFT
WINDOW = "hann"  # STFT window function
CENTER = True  # frames are centred, the signal padded by N_FFT // 2 on each side
PAD_MODE = "constant"  # padding for centred frames (librosa >= 0.10; older versions used "reflect")
POWER = 2.0  # exponent of the magnitude spectrogram (2 = power)
N_MELS = 128  # mel bands
FMIN = 0.0  # lowest mel frequency, Hz
FMAX = None  # highest mel frequency, Hz; None = SAMPLE_RATE / 2
HTK = False  # HTK mel formula instead of Slaney's
MEL_NORM = "slaney"  # mel filter normalization: "slaney", a number (p-norm) or None
DCT_TYPE = 2  # type of the DCT that turns log-mel bands into cepstra
DCT_NORM = "ortho"  # DCT normalization: "ortho" or None
LIFTER = 0.0  # cepstral liftering (0 = none)
REF = 1.0  # power_to_db reference power (0 dB)
AMIN = 1e-10  # power_to_db floor before the logarithm
TOP_DB = 80.0  # power_to_db dynamic range below each segment's peak; None = no floor
RES_TYPE = "soxr_hq"  # resampler for files at another rate

JSON_PATH = "data.json"  # output file
# Processes that decode and analyse files in parallel: the cores this process may run on.
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
CHUNK_SEGMENTS = 16  # segments analysed per librosa call: bounds memory for long songs
# glibc malloc: blocks up to this size come from (and go back to) the heap, not fresh kernel pages;
# a track's largest array, its 10-segment STFT, is 10.7 MB.
MMAP_THRESHOLD = 16 * 2**20
TRIM_THRESHOLD = 64 * 2**20  # glibc malloc: free heap memory kept for the next track, bytes
DEMO_DIR = "demo"  # --demo writes its audio and data here
DEMO_AUDIO = "audio"  # --demo: synthesized genre folders, under DEMO_DIR
DEMO_JSON = "audio.json"  # --demo: extracted features, under DEMO_DIR (train.py --demo owns data.json)
DEMO_TRACKS = 10  # --demo tracks per genre: the fewest that give every genre a test track
DEMO_SEED = 0  # --demo: the synthesized audio is the same on every machine
INSTALL_HINT = "pip install -r requirements-audio.txt"  # how to get librosa and soundfile

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".au", ".snd", ".aiff", ".aif")
OUR_KEYS = ("mapping", "labels", "mfcc", "tracks", "features")  # keys of a data.json we may replace
DEMO_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop",
               "reggae", "rock")
PAD_MODES = ("constant", "edge", "linear_ramp", "reflect", "symmetric")
# librosa's resamplers (librosa.resample's res_type) -> the package each one runs on.
RESAMPLERS = {
    **dict.fromkeys(("soxr_vhq", "soxr_hq", "soxr_mq", "soxr_lq", "soxr_qq"), "soxr"),
    **dict.fromkeys(("kaiser_best", "kaiser_fast"), "resampy"),
    **dict.fromkeys(("fft", "scipy", "polyphase"), "scipy"),
    **dict.fromkeys(("linear", "zero_order_hold", "sinc_best", "sinc_medium", "sinc_fastest"),
                    "samplerate"),
}

# Recipe key -> (kind, may be null). Every key is required; "derived" keys follow from the others.
FIELDS = {
    "sample_rate": ("int", False), "track_duration": ("number", False),
    "num_segments": ("int", False), "n_mfcc": ("int", False), "n_fft": ("int", False),
    "hop_length": ("int", False), "win_length": ("int", False), "window": ("str", False),
    "center": ("bool", False), "pad_mode": ("str", False), "power": ("number", False),
    "n_mels": ("int", False), "fmin": ("number", False), "fmax": ("number", False),
    "htk": ("bool", False), "mel_norm": ("mel_norm", True), "dct_type": ("int", False),
    "dct_norm": ("str", True), "lifter": ("number", False), "ref": ("number", False),
    "amin": ("number", False), "top_db": ("number", True), "res_type": ("str", False),
    "segment_samples": ("int", False), "frames": ("int", False),
}


# ---------------------------------------------------------------------------------------------
# The recipe


def frame_count(samples, features):
    """Frames librosa's STFT gives for a signal of this many samples."""
    if features["center"]:
        return 1 + samples // features["hop_length"]
    return max(0, 1 + (samples - features["n_fft"]) // features["hop_length"])


def make_features(sample_rate=SAMPLE_RATE, track_duration=TRACK_DURATION,
                  num_segments=NUM_SEGMENTS, n_mfcc=NUM_MFCC, n_fft=N_FFT, hop_length=HOP_LENGTH,
                  win_length=WIN_LENGTH, window=WINDOW, center=CENTER, pad_mode=PAD_MODE,
                  power=POWER, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=HTK, mel_norm=MEL_NORM,
                  dct_type=DCT_TYPE, dct_norm=DCT_NORM, lifter=LIFTER, ref=REF, amin=AMIN,
                  top_db=TOP_DB, res_type=RES_TYPE):
    """A complete recipe: the settings given, None defaults resolved, derived sizes computed."""
    features = dict(
        sample_rate=sample_rate, track_duration=track_duration, num_segments=num_segments,
        n_mfcc=n_mfcc, n_fft=n_fft, hop_length=hop_length,
        win_length=n_fft if win_length is None else win_length, window=window, center=center,
        pad_mode=pad_mode, power=float(power), n_mels=n_mels, fmin=float(fmin),
        fmax=sample_rate / 2 if fmax is None else float(fmax), htk=htk, mel_norm=mel_norm,
        dct_type=dct_type, dct_norm=dct_norm, lifter=float(lifter), ref=float(ref),
        amin=float(amin), top_db=None if top_db is None else float(top_db), res_type=res_type,
    )
    # As the tutorial computes it: int(SAMPLE_RATE * TRACK_DURATION / NUM_SEGMENTS).
    features["segment_samples"] = int(sample_rate * track_duration / num_segments)
    features["frames"] = frame_count(features["segment_samples"], features)
    return features


def default_features():
    """The default recipe (the tutorial's), as a new JSON-able dict."""
    return make_features()


# The recipe assumed for a data.json without "features": the tutorial's, i.e. the defaults.
TUTORIAL_FEATURES = default_features()


def _check_type(key, value, where):
    """Raise DataError unless value has the kind FIELDS gives for key."""
    kind, nullable = FIELDS[key]
    if value is None:
        if nullable:
            return
        raise DataError(f"{where}: '{key}' is null but must be a {kind}: fix or re-extract it")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": number and math.isfinite(value),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "mel_norm": value == "slaney" or (number and math.isfinite(value)),
    }[kind]
    if not ok:
        expected = {"mel_norm": '"slaney", a number or null', "int": "an integer",
                    "number": "a finite number", "bool": "true or false",
                    "str": "a string"}[kind]
        raise DataError(f"{where}: '{key}' = {json.dumps(value)} must be {expected}")


def _impossible(f):
    """The first impossible value of a well-typed recipe, as 'key = value: why', or None."""
    rules = [
        ("sample_rate", f["sample_rate"] > 0, "must be positive"),
        ("track_duration", f["track_duration"] > 0, "must be positive"),
        ("num_segments", f["num_segments"] >= 1, "must be at least 1"),
        ("n_fft", f["n_fft"] >= 1, "must be at least 1"),
        ("hop_length", f["hop_length"] >= 1, "must be at least 1"),
        ("win_length", 1 <= f["win_length"] <= f["n_fft"], "must be between 1 and n_fft"),
        ("pad_mode", f["pad_mode"] in PAD_MODES, f"must be one of {', '.join(PAD_MODES)}"),
        ("power", f["power"] > 0, "must be positive"),
        ("n_mels", f["n_mels"] >= 1, "must be at least 1"),
        ("n_mfcc", 1 <= f["n_mfcc"] <= f["n_mels"], "must be between 1 and n_mels"),
        ("fmin", 0 <= f["fmin"] < f["fmax"], "must be >= 0 and below fmax"),
        ("fmax", f["fmax"] <= f["sample_rate"] / 2, "must not exceed sample_rate / 2"),
        ("dct_type", f["dct_type"] in (1, 2, 3), "must be 1, 2 or 3"),
        ("dct_norm", f["dct_norm"] in ("ortho", None), 'must be "ortho" or null'),
        ("lifter", f["lifter"] >= 0, "must be >= 0"),
        ("ref", f["ref"] > 0, "must be positive"),
        ("amin", f["amin"] > 0, "must be positive"),
        ("top_db", f["top_db"] is None or f["top_db"] >= 0, "must be >= 0 or null"),
        ("mel_norm", f["mel_norm"] is None or f["mel_norm"] == "slaney" or f["mel_norm"] > 0,
         'must be "slaney", a positive number or null'),
    ]
    for key, ok, why in rules:
        if not ok:
            return f"'{key}' = {json.dumps(f[key])} {why}"
    return None


def first_line(text):
    """The first non-blank line of a (library's, possibly multi-line) message."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def installed(package):
    """True when package can be imported here (without importing it)."""
    return importlib.util.find_spec(package) is not None


def _window_problem(window):
    """Why scipy (which librosa asks for its windows) rejects window, or None.

    scipy comes with librosa; where it is missing nothing computes a window, so nothing is checked.
    """
    try:
        from scipy.signal import get_window
    except ImportError:
        return None
    try:
        get_window(window, 4)
    except (ValueError, TypeError) as exc:
        return (f"'window' = {json.dumps(window)} is not a window scipy.signal.get_window "
                f"accepts ({first_line(exc)}): use e.g. hann, hamming, blackman or boxcar")
    return None


def _resampler_problem(res_type):
    """Why librosa cannot resample with res_type here, or None.

    Whether its package is installed matters only where librosa is: nothing resamples elsewhere.
    """
    if res_type not in RESAMPLERS:
        return (f"'res_type' = {json.dumps(res_type)} is not a librosa resampler: use one of "
                f"{', '.join(RESAMPLERS)}")
    package = RESAMPLERS[res_type]
    if installed("librosa") and not installed(package):
        usable = [name for name, needs in RESAMPLERS.items() if installed(needs)]
        return (f"'res_type' = {json.dumps(res_type)} needs the {package} package: "
                f"`pip install {package}`, or use one of {', '.join(usable)}")
    return None


def validate_features(obj, where):
    """Return a checked copy of a recipe; DataError (one line, prefixed by where) if malformed."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: must be an object of MFCC settings, not {type(obj).__name__}")
    missing = [key for key in FIELDS if key not in obj]
    unknown = sorted(key for key in obj if key not in FIELDS)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}: "
                        f"re-extract with extract.py or remove them")
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(map(repr, missing))}: "
                        f"re-extract with extract.py")
    for key in FIELDS:
        _check_type(key, obj[key], where)
    problem = (_impossible(obj) or _window_problem(obj["window"])
               or _resampler_problem(obj["res_type"]))
    if problem:
        raise DataError(f"{where}: {problem}")
    features = {key: obj[key] for key in FIELDS}
    derived = make_features(**{k: v for k, v in features.items()
                               if k not in ("segment_samples", "frames")})
    for key in ("segment_samples", "frames"):
        if features[key] != derived[key]:
            raise DataError(f"{where}: '{key}' = {features[key]} does not follow from the other "
                            f"settings (expected {derived[key]}): re-extract with extract.py")
    if features["frames"] < 1:
        raise DataError(f"{where}: a segment of {features['segment_samples']} samples gives no "
                        f"frame with n_fft {features['n_fft']}: use longer segments")
    return features


# ---------------------------------------------------------------------------------------------
# Audio analysis (librosa and soundfile are imported only here)


def import_librosa():
    """Import librosa and soundfile; DataError with the install command if they are missing."""
    try:
        import librosa
        import soundfile
    except ImportError as exc:
        raise DataError(f"extract.py needs librosa and soundfile ({exc.name} is missing): "
                        f"run `{INSTALL_HINT}`") from None
    return librosa, soundfile


def load_signal(path, features):
    """The file as float32 mono at features["sample_rate"]; DataError naming it if unreadable."""
    librosa, soundfile = import_librosa()
    try:
        # Through soundfile explicitly: librosa would otherwise fall back to audioread, which
        # depends on whatever decoders the machine has.
        with soundfile.SoundFile(str(path)) as audio:
            signal, _ = librosa.load(audio, sr=features["sample_rate"], mono=True,
                                     res_type=features["res_type"], dtype=np.float32)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        # libsndfile's own words, without soundfile's "Error opening '<path>': " before them.
        reason = first_line(getattr(exc, "error_string", None) or exc) or type(exc).__name__
        raise DataError(f"{path}: not readable audio ({reason})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if signal.size == 0:
        raise DataError(f"{path}: holds no audio samples")
    if not np.isfinite(signal).all():
        raise DataError(f"{path}: holds NaN or infinite samples")
    return signal


def segment_starts(length, features, max_segments=None):
    """Start samples of the segments to analyse: full ones, or a last one with all its frames."""
    size = features["segment_samples"]
    count = -(-length // size)
    if max_segments is not None:
        count = min(count, max_segments)
    starts = [i * size for i in range(count)]
    return [s for s in starts
            if frame_count(min(size, length - s), features) == features["frames"]]


def mfcc_batch(segments, features):
    """MFCCs (n, frames, n_mfcc) of equal-length segments (n, samples), as per-segment mfcc calls.

    One mel-spectrogram call covers the batch, but the dB conversion runs per segment: its top_db
    floor is relative to the peak of the array it is given, and must be each segment's own.
    """
    librosa, _ = import_librosa()
    f = features
    mel = librosa.feature.melspectrogram(
        y=segments, sr=f["sample_rate"], n_fft=f["n_fft"], hop_length=f["hop_length"],
        win_length=f["win_length"], window=f["window"], center=f["center"],
        pad_mode=f["pad_mode"], power=f["power"], n_mels=f["n_mels"], fmin=f["fmin"],
        fmax=f["fmax"], htk=f["htk"], norm=f["mel_norm"])
    db = np.stack([librosa.power_to_db(m, ref=f["ref"], amin=f["amin"], top_db=f["top_db"])
                   for m in mel])
    mfcc = librosa.feature.mfcc(S=db, n_mfcc=f["n_mfcc"], dct_type=f["dct_type"],
                                norm=f["dct_norm"], lifter=f["lifter"])
    return np.ascontiguousarray(mfcc.transpose(0, 2, 1), dtype=np.float32)


def signal_mfccs(signal, features, max_segments=None):
    """MFCCs (n, frames, n_mfcc) float32 of the signal's segments from the start.

    Segments whose frame count differs from features["frames"] are dropped; max_segments=None
    takes every segment of a long signal.
    """
    size = features["segment_samples"]
    starts = segment_starts(len(signal), features, max_segments)
    out = np.empty((len(starts), features["frames"], features["n_mfcc"]), dtype=np.float32)
    full = [i for i, s in enumerate(starts) if s + size <= len(signal)]
    with one_blas_thread():
        for first in range(0, len(full), CHUNK_SEGMENTS):
            rows = full[first:first + CHUNK_SEGMENTS]
            out[rows] = mfcc_batch(np.stack([signal[starts[i]:starts[i] + size] for i in rows]),
                                   features)
        for i in sorted(set(range(len(starts))) - set(full)):  # a slightly short last segment
            out[i] = mfcc_batch(signal[None, starts[i]:], features)[0]
    return out


def analyse_file(path, features):
    """(mfccs, None) for a usable file, (None, reason) for one to skip; runs in a worker."""
    try:
        signal = load_signal(path, features)
        mfccs = signal_mfccs(signal, features, features["num_segments"])
    except DataError as exc:
        return None, str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - one odd file must not end a long run; it is reported
        return None, f"analysis failed ({type(exc).__name__}: {first_line(exc)})"
    if len(mfccs) == 0:
        seconds = features["segment_samples"] / features["sample_rate"]
        return None, (f"shorter than one segment ({len(signal) / features['sample_rate']:.2f} s "
                      f"< {seconds:g} s)")
    return mfccs, None


# ---------------------------------------------------------------------------------------------
# Finding the audio


def is_hidden(path, root):
    """True when any part of path below root starts with a dot (.DS_Store, ._x.wav, .git/)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_genres(audio_dir):
    """The sorted genre subfolders of audio_dir; DataError when there are none."""
    root = Path(audio_dir)
    if not root.exists():
        raise DataError(f"{root} not found: pass the folder that holds one subfolder per genre")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: pass the folder that holds one subfolder per "
                        f"genre (e.g. GTZAN's genres/)")
    try:
        entries = list(root.iterdir())
    except OSError as exc:
        raise DataError(f"{root} cannot be read ({exc.strerror}): check its permissions") from None
    if not entries:
        raise DataError(f"{root} is empty: put one subfolder of audio files per genre in it")
    genres = sorted(p for p in entries if p.is_dir() and not p.name.startswith("."))
    if not genres:
        raise DataError(f"{root} has no genre subfolders: put each genre's audio files in a "
                        f"subfolder named after the genre (e.g. {root}/blues/)")
    if len(genres) == 1:
        raise DataError(f"{root} has one subfolder, {genres[0].name}/, so one genre: a classifier "
                        f"needs two or more (if the genre folders are inside it, pass "
                        f"{genres[0]})")
    return genres


def scan_folder(folder, root):
    """(audio files, ignored files) in folder and its subfolders, sorted; hidden below root or
    of another extension: ignored."""
    audio, ignored = [], []
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        if is_hidden(path, root) or path.suffix.lower() not in AUDIO_EXTENSIONS:
            ignored.append(path)
        else:
            audio.append(path)
    return audio, ignored


def list_files(genres, root):
    """(audio files as (label, path), ignored files) of every genre folder, in sorted order."""
    files, ignored = [], []
    for label, genre in enumerate(genres):
        audio, skipped = scan_folder(genre, root)
        files += [(label, path) for path in audio]
        ignored += skipped
    return files, ignored


def track_ids(paths, root):
    """File names without extension; the relative path where two files would share a name."""
    counts = collections.Counter(p.stem for p in paths)
    return [p.relative_to(root).as_posix() if counts[p.stem] > 1 else p.stem for p in paths]


# ---------------------------------------------------------------------------------------------
# Running the analysis


@functools.cache
def blas_controller():
    """threadpoolctl's handle on the thread pools loaded here, or None without threadpoolctl.

    Finding the pools scans every loaded library (2 ms, a tenth of a track's analysis), so it is
    done once a process, after librosa (and the BLAS that scipy brings) is loaded; forked workers
    inherit the handle with the libraries it points to.
    """
    import_librosa()
    try:
        from threadpoolctl import ThreadpoolController  # comes with librosa (via scikit-learn)
    except ImportError:
        return None
    return ThreadpoolController()


def one_blas_thread():
    """A context in which numpy's BLAS (matrix products inside librosa) uses one thread.

    The analysis runs one file per core already; a BLAS pool in each worker only makes them spin
    against each other (two workers on two cores: twice the CPU time, half the speed). The thread
    count also changes the rounding of those products, so every analysis uses one thread: the
    features are then the same whatever the number of workers, in extract.py and predict.py.
    """
    controller = blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1)


def reuse_freed_memory():
    """Make glibc's malloc keep a track's big freed arrays for the next track (not on other C
    libraries, which have their own policies).

    glibc's defaults give large freed blocks straight back to the kernel (unmapping them, or
    trimming the top of the heap), so every track's tens of MB of arrays were faulted in and
    zeroed again: 850,000 page faults for 300 tracks, a fifth of the CPU time (72,000 with these
    limits). The command lines set it once, before their workers fork, so it holds in them too;
    it is a setting of the whole process, so library calls leave it alone.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError, TypeError):
        return
    # mallopt(3) parameter numbers; setting both also turns off glibc's own adaptive thresholds.
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    mallopt(m_trim_threshold, TRIM_THRESHOLD)


def start_worker(parent=None):
    """Set up a worker process: Ctrl-C is left to the main process, which stops the pool and
    exits cleanly. A worker forked from parent (a pid) also ends with it, even when that is
    killed (on Linux; elsewhere, and for workers started otherwise, when their pool closes).
    """
    signals.signal(signals.SIGINT, signals.SIG_IGN)
    if parent is None:
        return
    pr_set_pdeathsig = 1  # prctl(2): the signal this process gets when its parent ends
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signals.SIGKILL)
    if os.getppid() != parent:  # the parent ended before that
        os._exit(1)


def warm_up(features):
    """Run the analysis once on silence, so that librosa's lazy imports and compiled kernels are
    loaded before the workers fork (each would otherwise pay for them again).

    A recipe that passed validate_features should not fail here; if librosa still refuses it,
    that is said in one line before any file is read.
    """
    try:
        signal_mfccs(np.zeros(features["segment_samples"], dtype=np.float32), features)
    except Exception as exc:  # noqa: BLE001 - librosa's errors have no common base class
        raise DataError(f"librosa cannot compute these MFCC settings ({type(exc).__name__}: "
                        f"{first_line(exc)}): change them") from None


@contextlib.contextmanager
def analysis_pool(workers, count, features):
    """A process pool to analyse count files, or None where this process does them all.

    librosa is warmed up first, so that the workers fork with its lazy parts loaded, and so that a
    recipe librosa refuses is said once, before any file is read. Ctrl-C pressed during the
    warm-up or the forks is raised once they are done: inside them it could be lost.
    """
    with interrupts_deferred():
        warm_up(features)
    if workers == 1 or count < 2:
        yield None
        return
    context = fork_context()  # elsewhere the workers start afresh, and pay for librosa again
    with concurrent.futures.ProcessPoolExecutor(
            min(workers, count), mp_context=context, initializer=start_worker,
            initargs=(os.getpid() if context else None,)) as pool:
        try:
            with interrupts_deferred():
                start_processes(lambda: pool.submit(os.getpid))  # a fork starts every worker
            yield pool
        except BaseException:
            # The files in progress finish (a fraction of a second); the others never start.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def start_processes(start):
    """Call start(), which starts processes; DataError in one line if the system refuses."""
    try:
        start()
    except OSError as exc:
        raise DataError(f"cannot start a worker process ({exc.strerror or exc}): try again "
                        f"with --workers 1") from None


def analyse_all(paths, features, workers, progress):
    """analyse_file for every path, results in input order whatever the number of workers."""
    with analysis_pool(workers, len(paths), features) as pool:
        mapper = map if pool is None else pool.map
        for result in mapper(analyse_file, paths, [features] * len(paths)):
            yield result
            progress()


def warn(line):
    """Print line on stderr, first clearing a progress line there is on a terminal."""
    print(("\r\033[K" if sys.stderr.isatty() else "") + line, file=sys.stderr)


def make_progress(total, stream=sys.stderr):
    """A callback that redraws 'files done/total, elapsed, remaining' on a terminal."""
    start, done = time.perf_counter(), [0]
    show = stream.isatty()

    def step():
        done[0] += 1
        if not show:
            return
        elapsed = time.perf_counter() - start
        remaining = elapsed / done[0] * (total - done[0])
        end = "\n" if done[0] == total else ""
        print(f"\r  {done[0]}/{total} files, {elapsed:.0f} s elapsed, ~{remaining:.0f} s left ",
              end=end, file=stream, flush=True)

    return step


def collect(files, root, features, workers, write_track):
    """Analyse every file, handing each usable track to write_track(label, track, mfccs) in input
    order; return {label: [(track, segments)]} and the skipped files with reasons."""
    paths = [path for _, path in files]
    ids = track_ids(paths, root)
    kept, skipped = {}, []
    results = analyse_all(paths, features, workers, make_progress(len(paths)))
    for (label, path), track, (mfccs, reason) in zip(files, ids, results):
        if mfccs is None:
            name = path.relative_to(root).as_posix()
            warn(f"warning: skipped {path}: {reason}")
            skipped.append((name, reason))
        else:
            write_track(label, track, mfccs)
            kept.setdefault(label, []).append((track, len(mfccs)))
    return kept, skipped


def check_coverage(kept, genres, skipped, root):
    """DataError when no file was usable, or a genre was left without segments."""
    if not kept:
        why = f" ({len(skipped)} skipped: see the warnings)" if skipped else ""
        raise DataError(f"{root}: no readable audio in any genre folder{why}: supported formats "
                        f"are {', '.join(e[1:] for e in AUDIO_EXTENSIONS)}")
    empty = [genre.name for label, genre in enumerate(genres) if label not in kept]
    if empty:
        raise DataError(f"{root}: genre(s) {', '.join(empty)} have no usable audio, so no "
                        f"segments: add audio there or remove the folder(s)")


# ---------------------------------------------------------------------------------------------
# Writing data.json


def is_data_json(head):
    """True when a file's first bytes start a JSON object whose first key is one of ours."""
    first_key = re.match(rb'\s*\{\s*"(\w+)"', head)
    return bool(first_key) and first_key.group(1).decode() in OUR_KEYS


def check_replaceable(path):
    """Refuse to overwrite a file at path unless it looks like a data.json of ours."""
    check_output_file(path, "--data", "a data.json (a JSON object with mapping, labels and mfcc)",
                      ".json", is_data_json)


@contextlib.contextmanager
def data_writer(path, mapping, features):
    """Yield write_track(label, track, mfccs), which streams data.json to path as tracks come.

    Memory holds only the features not yet written, and the numbers are written while the
    workers are still analysing. The file replaces path atomically when the block ends; the labels and tracks, known
    then, follow the mfcc list. msgspec writes the numbers (the same shortest round-trip digits as
    json.dumps) six times faster: with the json module, writing took a third of the extraction.
    """
    labels, tracks, encoder = [], [], msgspec.json.Encoder()
    with atomic_write(path, "wb", flag="--data") as handle:
        handle.write(f'{{"mapping": {json.dumps(mapping)}, "features": {json.dumps(features)}, '
                     f'"mfcc": ['.encode())

        def write_track(label, track, mfccs):
            separator = b", " if labels else b""
            handle.write(separator + encoder.encode(mfccs.tolist())[1:-1])  # its segments
            labels.extend([label] * len(mfccs))
            tracks.extend([track] * len(mfccs))

        yield write_track
        handle.write(f'], "labels": {json.dumps(labels)}, "tracks": {json.dumps(tracks)}}}\n'
                     .encode())


def print_summary(mapping, kept, skipped, ignored, root, output, seconds):
    """Tracks and segments per genre, what was skipped or ignored, the time and the output."""
    tracks = sum(len(v) for v in kept.values())
    segments = sum(n for v in kept.values() for _, n in v)
    print(f"Extracted {segments} segments from {tracks} tracks of {len(mapping)} genres "
          f"in {seconds:.1f} s")
    width = max(len(g) for g in mapping + ["genre"])
    print(f"  {'genre':<{width}}  {'tracks':>6}  {'segments':>8}")
    for label, genre in enumerate(mapping):
        entries = kept.get(label, [])
        print(f"  {genre:<{width}}  {len(entries):>6}  {sum(n for _, n in entries):>8}")
    if skipped:
        print(f"Skipped {len(skipped)} file(s):")
        for name, reason in skipped:
            print(f"  {name}: {reason}")
    if ignored:
        names = ", ".join(p.relative_to(root).as_posix() for p in ignored[:5])
        more = f", ... ({len(ignored) - 5} more)" if len(ignored) > 5 else ""
        print(f"Ignored {len(ignored)} hidden or non-audio file(s): {names}{more}")
    print(f"Wrote {output} ({Path(output).stat().st_size / 1e6:.1f} MB)")


def extract(audio_dir, output, features, workers=WORKERS):
    """Extract audio_dir to output; return (mapping, kept, skipped, ignored)."""
    genres = find_genres(audio_dir)
    files, ignored = list_files(genres, Path(audio_dir))
    if not files:
        raise DataError(f"{audio_dir}: no audio files in its genre folders (supported: "
                        f"{', '.join(e[1:] for e in AUDIO_EXTENSIONS)})")
    mapping = [genre.name for genre in genres]
    with data_writer(output, mapping, features) as write_track:
        kept, skipped = collect(files, Path(audio_dir), features, workers, write_track)
        check_coverage(kept, genres, skipped, audio_dir)  # its error leaves output as it was
    return mapping, kept, skipped, ignored


# ---------------------------------------------------------------------------------------------
# Demo audio


def synthesize_track(genre, track, sample_rate=SAMPLE_RATE, seconds=TRACK_DURATION):
    """A deterministic float32 track: each genre its own pitch, timbre, tempo and percussion."""
    rng = np.random.default_rng([DEMO_SEED, genre, track])
    t = np.arange(int(sample_rate * seconds), dtype=np.float64) / sample_rate
    tempo = 70 + 11 * genre + rng.uniform(-2, 2)  # beats per minute
    beat = (t * tempo / 60) % 1.0  # position inside the current beat, 0..1
    f0 = 65.0 * 2 ** (genre * 0.4 + rng.uniform(0, 0.15))  # fundamental, Hz
    rolloff = 0.25 + 0.07 * genre  # amplitude ratio of successive harmonics: brightness
    tone = sum(rolloff ** k * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 2 * np.pi))
               for k in range(6))
    pluck = np.exp(-beat * (1.5 + genre))  # note decay per beat
    hits = rng.standard_normal(t.size) * np.exp(-beat * (8 + 4 * (genre % 3)))
    y = tone / np.abs(tone).max() * pluck + (0.1 + 0.08 * (genre % 4)) * hits
    return (0.8 * y / np.abs(y).max()).astype(np.float32)


def ensure_demo_audio(audio_dir, log=print):
    """Write the demo genre folders of FLAC files that are not already there."""
    paths = {(genre, track): Path(audio_dir) / name / f"{name}.{track:05d}.flac"
             for genre, name in enumerate(DEMO_GENRES) for track in range(DEMO_TRACKS)}
    missing = {key: path for key, path in paths.items() if not path.exists()}
    if not missing:
        return
    _, soundfile = import_librosa()
    log(f"Writing demo audio ({len(DEMO_GENRES)} genres x {DEMO_TRACKS} tracks of "
        f"{TRACK_DURATION} s, FLAC) to {audio_dir}/")
    for (genre, track), path in missing.items():
        with atomic_write(path, flag="--demo") as handle:  # an interrupted run leaves no stub
            soundfile.write(handle, synthesize_track(genre, track), SAMPLE_RATE,
                            format="FLAC", subtype="PCM_16")


# ---------------------------------------------------------------------------------------------
# Command line


def optional(kind, *words):
    """argparse type: kind, or one of the given words (case-insensitive); "none" means None."""
    def parse(text):
        lowered = text.lower()
        if lowered == "none":
            return None
        if lowered in words:
            return lowered
        return kind(text)
    return parse


def positive_int(text):
    """argparse type: an integer of at least 1."""
    return at_least(int, 1)(text)


RECIPE_FLAGS = [  # (flag, recipe key, argparse type, default, help); one per recipe constant
    ("--sample-rate", "sample_rate", positive_int, SAMPLE_RATE, "sample rate, Hz (mono)"),
    ("--track-duration", "track_duration", at_least(float, 0, strict=True), TRACK_DURATION,
     "seconds of each track cut into segments"),
    ("--num-segments", "num_segments", positive_int, NUM_SEGMENTS, "segments per track"),
    ("--num-mfcc", "n_mfcc", positive_int, NUM_MFCC, "MFCCs per frame"),
    ("--n-fft", "n_fft", positive_int, N_FFT, "STFT window size, samples"),
    ("--hop-length", "hop_length", positive_int, HOP_LENGTH, "samples between frames"),
    ("--win-length", "win_length", optional(positive_int), WIN_LENGTH, "window length; none = n_fft"),
    ("--window", "window", str, WINDOW, "window function"),
    ("--center", "center", None, CENTER, "centre frames (pad the signal by n_fft // 2)"),
    ("--pad-mode", "pad_mode", str, PAD_MODE, "padding of centred frames"),
    ("--power", "power", at_least(float, 0, strict=True), POWER, "spectrogram exponent"),
    ("--n-mels", "n_mels", positive_int, N_MELS, "mel bands"),
    ("--fmin", "fmin", at_least(float, 0), FMIN, "lowest mel frequency, Hz"),
    ("--fmax", "fmax", optional(at_least(float, 0, strict=True)), FMAX,
     "highest mel frequency, Hz; none = sample rate / 2"),
    ("--htk", "htk", None, HTK, "HTK mel formula"),
    ("--mel-norm", "mel_norm", optional(float, "slaney"), MEL_NORM,
     "mel filter norm: slaney, a number, or none"),
    ("--dct-type", "dct_type", int, DCT_TYPE, "DCT type (1, 2 or 3)"),
    ("--dct-norm", "dct_norm", optional(str, "ortho"), DCT_NORM, "DCT norm: ortho or none"),
    ("--lifter", "lifter", at_least(float, 0), LIFTER, "cepstral liftering (0 = none)"),
    ("--ref", "ref", at_least(float, 0, strict=True), REF, "power_to_db reference power"),
    ("--amin", "amin", at_least(float, 0, strict=True), AMIN, "power_to_db floor"),
    ("--top-db", "top_db", optional(at_least(float, 0)), TOP_DB,
     "dB range kept below each segment's peak; none = all"),
    ("--res-type", "res_type", str, RES_TYPE, "resampler for files at another rate"),
]


def parse_args(argv=None):
    """Parse the command line; the recipe flags are checked together as one recipe."""
    parser = argparse.ArgumentParser(
        description="Extract the MFCCs of 3-s segments of genre folders of audio into data.json, "
                    "with the full recipe in its 'features' object.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("audio_dir", nargs="?", type=file_path, metavar="AUDIO_DIR",
                        help="folder with one subfolder of audio files per genre")
    parser.add_argument("--data", "--output", dest="data", type=file_path, default=JSON_PATH,
                        help="data.json to write")
    parser.add_argument("--workers", type=positive_int, default=WORKERS,
                        help="processes analysing files in parallel")
    parser.add_argument("--demo", action="store_true",
                        help=f"synthesize {DEMO_DIR}/{DEMO_AUDIO}/ and extract it to "
                             f"{DEMO_DIR}/{DEMO_JSON}")
    for flag, key, kind, default, text in RECIPE_FLAGS:
        if kind is None:
            parser.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction,
                                default=default, help=text)
        else:
            parser.add_argument(flag, dest=key, type=kind, default=default, help=text,
                                metavar=flag[2:].upper().replace("-", "_"))
    args = parser.parse_args(argv)
    if args.demo and (args.audio_dir is not None or args.data != JSON_PATH):
        parser.error("--demo uses its own folders in demo/; drop AUDIO_DIR and --data")
    if not args.demo and args.audio_dir is None:
        parser.error("give AUDIO_DIR, the folder with one subfolder per genre (or try --demo)")
    try:
        args.features = validate_features(
            make_features(**{key: getattr(args, key) for _, key, *_ in RECIPE_FLAGS}), "settings")
    except DataError as exc:
        parser.error(str(exc))
    return args


def demo_paths():
    """Where --demo keeps its audio and its extracted data."""
    return str(Path(DEMO_DIR) / DEMO_AUDIO), str(Path(DEMO_DIR) / DEMO_JSON)


def main(argv=None) -> int:
    """Extract the audio, write data.json and print a summary; exit status 2 on bad input."""
    args = parse_args(argv)
    audio_dir, output = demo_paths() if args.demo else (args.audio_dir, args.data)
    existed = os.path.lexists(output)  # never raises: check_replaceable reports what it cannot see
    reuse_freed_memory()
    try:
        import_librosa()
        check_replaceable(output)
        if args.demo:
            ensure_demo_audio(audio_dir)
        start = time.perf_counter()  # the extraction's own time, without writing demo audio
        mapping, kept, skipped, ignored = extract(audio_dir, output, args.features, args.workers)
    except DataError as exc:
        warn(f"error: {exc}")
        return 2
    except concurrent.futures.BrokenExecutor:
        warn("error: a worker process died (out of memory?): try again with --workers 1")
        return 2
    except KeyboardInterrupt:
        print(f"\nInterrupted; {output} is {'unchanged' if existed else 'not written'}.",
              file=sys.stderr)
        return 130
    print_summary(mapping, kept, skipped, ignored, Path(audio_dir), output,
                  time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
