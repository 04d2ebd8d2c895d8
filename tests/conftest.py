"""Shared test helpers: the repository on sys.path, one OpenMP thread, synthetic audio and data."""
import json
import os
import subprocess
import sys
from pathlib import Path

# The tests' models and batches are tiny: a second OpenMP thread only spins on the shared cores.
# Set before anything imports torch, and inherited by the scripts' subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `import preprocess` from any working directory


def tiny_data(genres=3, tracks=10, segments=4, frames=16, coeffs=8, seed=0):
    """A small learnable data.json dict with tracks: each genre its own mean MFCC profile."""
    rng = np.random.default_rng(seed)
    profile = rng.normal(0.0, 3.0, (genres, coeffs))
    mfcc, labels, names = [], [], []
    for genre in range(genres):
        for track in range(tracks):
            for _ in range(segments):
                mfcc.append((profile[genre] + rng.normal(0.0, 1.0, (frames, coeffs))).tolist())
                labels.append(genre)
                names.append(f"genre{genre}.{track:05d}")
    return {"mapping": [f"genre{g}" for g in range(genres)], "labels": labels, "mfcc": mfcc,
            "tracks": names}


def write_json(obj, path):
    """Write obj as JSON to path; return the path."""
    Path(path).write_text(json.dumps(obj), encoding="utf-8")
    return Path(path)


def tone(seconds, sample_rate=22050, freq=440.0, seed=0):
    """A float32 tone with a little noise: audio librosa analyses like music."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    return signal.astype(np.float32)


def write_audio(path, signal, sample_rate=22050):
    """Write a signal as a sound file (format from the suffix); return the path."""
    import soundfile

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), signal, sample_rate)
    return Path(path)


def run_script(script, *args, cwd, timeout=120, **kwargs):
    """Run `python SCRIPT ARGS` in cwd; return the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kwargs)
