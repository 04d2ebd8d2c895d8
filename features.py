"""The MFCC recipe: how a song becomes the (frames x n_mfcc) segments the network sees.

This is the one place to change the features. extract.py computes data.json with it, predict.py
featurizes new songs with the recipe stored in the model, and preprocess.py checks a data set's
shape against it. The recipe travels as a plain dict (data.json's "features", the cache and every
model file), so a model always featurizes new audio exactly as its training data was.

Usage:
    import features
    recipe = features.make_features(n_mfcc=20)           # the defaults are the tutorial's
    signal = features.load_audio("song.wav", recipe)      # float32 mono at recipe["sample_rate"]
    mfccs = features.segment_mfccs(signal, recipe)        # (segments, frames, n_mfcc) float32

librosa and soundfile are imported only where audio is read or analysed.
"""
import os
import warnings
from typing import Optional, Union

import msgspec
import numpy as np

from common import DataError

# What a researcher changes: each has a flag in extract.py.
SAMPLE_RATE = 22050  # Hz; every file is resampled to it and mixed down to mono
TRACK_DURATION = 30  # seconds of each track that extract.py cuts into segments
NUM_SEGMENTS = 10  # segments per track: 3-s segments of 66,150 samples
NUM_MFCC = 13  # MFCCs per frame: the segment's width
N_FFT = 2048  # STFT window, samples
HOP_LENGTH = 512  # samples between frames: 130 frames a segment
N_MELS = 128  # mel bands the MFCCs are computed from

# The rest of the recipe: librosa's own defaults, written down so that a model records them all.
WINDOW = "hann"  # STFT window function
CENTER = True  # frames are centred: the signal is padded by N_FFT // 2 on each side
PAD_MODE = "constant"  # padding of centred frames (librosa >= 0.10)
POWER = 2.0  # exponent of the magnitude spectrogram: 2 = power
FMIN = 0.0  # lowest mel frequency, Hz (the highest is half the sample rate)
HTK = False  # Slaney's mel formula, not HTK's
MEL_NORM = "slaney"  # mel filter normalization
DCT_TYPE = 2  # the DCT that turns log-mel bands into cepstra
DCT_NORM = "ortho"  # its normalization
LIFTER = 0.0  # cepstral liftering: none
REF = 1.0  # power_to_db: the power of 0 dB
AMIN = 1e-10  # power_to_db: floor before the logarithm
TOP_DB = 80.0  # power_to_db: dynamic range kept below each segment's peak
RES_TYPE = "soxr_hq"  # resampler for files at another sample rate

CHUNK_SEGMENTS = 16  # segments analysed per librosa call: bounds memory for long songs
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".au", ".snd", ".aiff", ".aif")


class _Recipe(msgspec.Struct, forbid_unknown_fields=True):
    """The types of a stored recipe; msgspec checks a dict against it and names what is wrong."""

    sample_rate: int
    track_duration: float
    num_segments: int
    n_mfcc: int
    n_fft: int
    hop_length: int
    win_length: int
    window: str
    center: bool
    pad_mode: str
    power: float
    n_mels: int
    fmin: float
    fmax: float
    htk: bool
    mel_norm: Union[str, float, None]
    dct_type: int
    dct_norm: Optional[str]
    lifter: float
    ref: float
    amin: float
    top_db: Optional[float]
    res_type: str
    segment_samples: int
    frames: int


def frame_count(samples, features):
    """Frames librosa's STFT gives for a signal of this many samples."""
    if features["center"]:
        return 1 + samples // features["hop_length"]
    return max(0, 1 + (samples - features["n_fft"]) // features["hop_length"])


def make_features(sample_rate=SAMPLE_RATE, track_duration=TRACK_DURATION,
                  num_segments=NUM_SEGMENTS, n_mfcc=NUM_MFCC, n_fft=N_FFT,
                  hop_length=HOP_LENGTH, n_mels=N_MELS):
    """The full recipe as a JSON-able dict: the settings given, the constants, the derived sizes."""
    features = dict(
        sample_rate=sample_rate, track_duration=track_duration, num_segments=num_segments,
        n_mfcc=n_mfcc, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=WINDOW,
        center=CENTER, pad_mode=PAD_MODE, power=POWER, n_mels=n_mels, fmin=FMIN,
        fmax=sample_rate / 2, htk=HTK, mel_norm=MEL_NORM, dct_type=DCT_TYPE, dct_norm=DCT_NORM,
        lifter=LIFTER, ref=REF, amin=AMIN, top_db=TOP_DB, res_type=RES_TYPE,
    )
    # As the tutorial computes it: int(SAMPLE_RATE * TRACK_DURATION / NUM_SEGMENTS).
    features["segment_samples"] = int(sample_rate * track_duration / num_segments)
    features["frames"] = frame_count(features["segment_samples"], features)
    return features


# The recipe of a data.json without "features": the tutorial's, which is the default.
TUTORIAL_FEATURES = make_features()


def check_features(obj, where):
    """Return obj if it is a complete, consistent recipe; DataError (prefixed by where) if not.

    Settings librosa would refuse are found by warm_up, in librosa's own words.
    """
    try:
        msgspec.convert(obj, _Recipe)
    except msgspec.ValidationError as exc:
        raise DataError(f"{where}: {exc}: re-extract with extract.py") from None
    size = int(obj["sample_rate"] * obj["track_duration"] / obj["num_segments"])
    if (obj["segment_samples"], obj["frames"]) != (size, frame_count(size, obj)):
        raise DataError(f"{where}: segment_samples and frames do not follow from the other "
                        f"settings: re-extract with extract.py")
    if size < 1 or obj["frames"] < 1:
        raise DataError(f"{where}: segments of {obj['track_duration']} s / "
                        f"{obj['num_segments']} give no samples or frames: use longer segments")
    return obj


def segment_shape(features):
    """The (C, H, W) of one segment as the network sees it: one channel, frames x MFCCs."""
    return 1, features["frames"], features["n_mfcc"]


def check_shape(shape, features, where):
    """DataError unless segments of shape (C, H, W) are the ones the recipe makes."""
    expected = segment_shape(features)
    if tuple(shape) != expected:
        raise DataError(f"{where}: segments are {'x'.join(map(str, shape))} (C x frames x MFCCs) "
                        f"but the MFCC recipe makes {'x'.join(map(str, expected))}: features "
                        f"and recipe do not belong together; re-extract with extract.py")


def describe(features):
    """The recipe in one line."""
    f = features
    return (f"{f['sample_rate']} Hz mono, {f['num_segments']} segments of "
            f"{f['segment_samples'] / f['sample_rate']:g} s = {f['frames']} frames x "
            f"{f['n_mfcc']} MFCCs (n_fft {f['n_fft']}, hop {f['hop_length']}, "
            f"{f['n_mels']} mel bands)")


def first_line(text):
    """The first non-blank line of a (library's, possibly multi-line) message."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


# ---------------------------------------------------------------------------------------------
# Audio


def load_audio(path, features, max_seconds=None):
    """The file as float32 mono at the recipe's rate, at most its first max_seconds.

    Only those seconds are decoded, so memory does not grow with the file. DataError names the
    file when it is not readable audio.
    """
    import librosa
    import soundfile

    try:
        # soundfile, not audioread: the same decoders on every machine (MP3 included). The path
        # goes as bytes, so that names that are not valid UTF-8 open as well.
        with soundfile.SoundFile(os.fsencode(path)) as audio:
            signal, _ = librosa.load(audio, sr=features["sample_rate"], mono=True,
                                     duration=max_seconds, res_type=features["res_type"],
                                     dtype=np.float32)
    except soundfile.LibsndfileError as exc:
        reason = first_line(exc.error_string)
        if "possibly a pipe" in reason:  # libsndfile's words for an MP3 it cannot parse
            reason = "its content is not in an audio format libsndfile decodes"
        raise DataError(f"{path}: not readable audio ({reason})") from None
    except librosa.util.exceptions.ParameterError as exc:  # e.g. samples that are not finite
        raise DataError(f"{path}: not usable audio ({first_line(exc)})") from None
    except (RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise DataError(f"{path}: not readable audio ({first_line(exc) or type(exc).__name__})"
                        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if signal.size == 0:
        raise DataError(f"{path}: holds no audio samples")
    if not np.isfinite(signal).all():
        raise DataError(f"{path}: holds NaN or infinite samples")
    return signal


def mfcc_batch(segments, features):
    """MFCCs (n, frames, n_mfcc) of equal-length segments (n, samples), as per-segment calls of
    librosa.feature.mfcc would give them.

    One mel-spectrogram call covers the batch; the dB conversion runs per segment, because its
    top_db floor is relative to the peak of what it is given, and must be each segment's own.
    """
    import librosa

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


def segment_mfccs(signal, features, max_segments=None):
    """MFCCs (n, frames, n_mfcc) float32 of the signal's consecutive segments from its start.

    As in the tutorial, a short last segment counts only if it still gives every frame.
    """
    size = features["segment_samples"]
    full = len(signal) // size
    tail = signal[full * size:]
    keep_tail = len(tail) > 0 and frame_count(len(tail), features) == features["frames"]
    if max_segments is not None:
        keep_tail = keep_tail and full < max_segments
        full = min(full, max_segments)
    batches = [mfcc_batch(signal[first * size:min(first + CHUNK_SEGMENTS, full) * size]
                          .reshape(-1, size), features)
               for first in range(0, full, CHUNK_SEGMENTS)]
    if keep_tail:
        batches.append(mfcc_batch(tail[None], features))
    if not batches:
        return np.empty((0, features["frames"], features["n_mfcc"]), dtype=np.float32)
    return np.concatenate(batches)


def analyse_file(path, features, max_seconds=None, max_segments=None):
    """(mfccs, None) for a usable audio file, (None, reason) for one to skip.

    Runs in a worker process: no failure of one file may stop the others.
    """
    try:
        signal = load_audio(path, features, max_seconds)
        with np.errstate(all="ignore"):  # overflowing audio: said below, not as numpy warnings
            mfccs = segment_mfccs(signal, features, max_segments)
    except DataError as exc:
        return None, str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - reported with the file's name, then the next file
        return None, f"analysis failed ({type(exc).__name__}: {first_line(exc)})"
    if len(mfccs) == 0:
        seconds = features["segment_samples"] / features["sample_rate"]
        return None, (f"too short ({len(signal) / features['sample_rate']:.2f} s; one segment "
                      f"needs {seconds:g} s)")
    if not np.isfinite(mfccs).all():
        return None, "its MFCCs are not finite numbers (are its samples far outside -1..1?)"
    return mfccs, None


def warm_up(features):
    """Analyse one silent segment: loads librosa's lazy parts once, before workers start, and
    says in one line, in librosa's words, when it refuses the recipe."""
    try:
        import librosa  # noqa: F401 - both needed by load_audio; missing, it is said here, once
        import soundfile  # noqa: F401

        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # librosa warns of settings that misfit
            mfccs = segment_mfccs(np.zeros(features["segment_samples"], np.float32), features)
    except ImportError as exc:
        raise DataError(f"the audio libraries are not installed ({exc.name} is missing): "
                        f"pip install -r requirements-audio.txt") from None
    except Exception as exc:  # noqa: BLE001 - librosa's errors have no common base class
        raise DataError(f"librosa cannot compute these MFCC settings ({type(exc).__name__}: "
                        f"{first_line(exc)}): change them") from None
    if mfccs.shape[2] != features["n_mfcc"]:  # librosa quietly gives at most n_mels MFCCs
        raise DataError(f"librosa gives {mfccs.shape[2]} MFCCs, not {features['n_mfcc']}, with "
                        f"{features['n_mels']} mel bands: use at most as many MFCCs as mel bands")

