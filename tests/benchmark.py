"""Benchmark the pipeline's scripts against plain, textbook versions of the same work.

Usage:
    python tests/benchmark.py                         # every part, 3 alternating rounds, CPU
    python tests/benchmark.py --data data.json --rounds 5 --epochs 6
    python tests/benchmark.py --part extract --tracks 300
    python tests/benchmark.py --device cuda           # also times a full 30-epoch run on the GPU

Each run is a subprocess; project and baseline alternate, and the report gives medians over rounds.
- preprocess: preprocess.py vs json.load + np.array + two train_test_split + savez_compressed, by
  wall time and peak RSS, on a GTZAN-sized data.json (10,000 segments of 130 x 13 full-precision
  floats, json.dump(indent=4): about 650 MB), generated once unless --data is given.
- train: train.py vs a DataLoader loop over the same network, by the median s/epoch of epochs 2..E.
- extract: extract.py vs the tutorial's loop (librosa.load, one mfcc call per segment, one
  process, json.dump) on --tracks synthetic 30-s wav files; both must give the same features.
- predict: predict.py, with the .pt and with the .onnx, vs extract.py on the same --predict-tracks
  clips, with a model trained for two epochs on them (the time does not depend on the weights).
Peak RSS is the largest of the child and the processes it waited for (os.wait4), such as workers.
Generated input is kept in <temp>/genre-benchmark. The ratios project / baseline are compared with
TARGETS; the benchmark reports and never fails on a missed target: exit status 0 (1 when a child
process fails, 2 on bad arguments). POSIX only.
"""
import argparse
import concurrent.futures
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the scripts live here
sys.path.insert(0, str(REPO))
import extract  # noqa: E402  (the synthetic-audio generator)
import features  # noqa: E402
import preprocess  # noqa: E402  (the synthetic data.json generator)
from common import at_least  # noqa: E402

ROUNDS = 3  # alternating project/baseline rounds; the report uses their medians
EPOCHS = 4  # epochs per training run; epoch 1 is warm-up, so the median covers 2..EPOCHS
CUDA_FULL_EPOCHS = 30  # a full-length GPU run, timed whole
SEGMENTS = 10_000  # GTZAN: 1,000 tracks x 10 segments
TRACKS = 300  # synthetic 30-s tracks for the extraction comparison
PREDICT_TRACKS = 100  # synthetic 30-s clips that predict.py and extract.py both process
DATA_DIR = Path(tempfile.gettempdir()) / "genre-benchmark"  # generated input, kept between runs
EPOCH_TIME = re.compile(r"Epoch time: ([\d.]+)s")  # printed by train.py and by the baseline

TARGETS = {  # ratio project / baseline, lower is better: (what, at most)
    "extract": ("extraction wall time", 0.5),
    "predict": ("prediction (.pt) / extract.py", 1.35),
    "predict_onnx": ("prediction (.onnx) / extract.py", 1.35),
    "train": ("training s/epoch", 0.7),
    "prep_time": ("preprocessing wall time", 0.65),
    "prep_mem": ("preprocessing peak memory", 0.6),
}

BASELINE_PREPROCESS = '''\
"""Plain preprocessing: json.load, np.array, min-max, two stratified splits, savez_compressed."""
import json
import sys

import numpy as np
from sklearn.model_selection import train_test_split

with open(sys.argv[1]) as f:
    data = json.load(f)
X = np.array(data["mfcc"], dtype=np.float32)
X = X.reshape(X.shape[0], 1, X.shape[1], X.shape[2])
y = np.array(data["labels"])
X = (X - X.min()) / (X.max() - X.min())
X_rest, X_test, y_rest, y_test = train_test_split(
    X, y, test_size=0.1, stratify=y, random_state=42)
X_train, X_val, y_train, y_val = train_test_split(
    X_rest, y_rest, test_size=0.2 / 0.9, stratify=y_rest, random_state=42)
np.savez_compressed(sys.argv[2], X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val,
                    X_test=X_test, y_test=y_test, mapping=np.array(data["mapping"]))
'''

BASELINE_TRAIN = '''\
"""Plain training loop: DataLoader over TensorDataset, NCHW, conv -> ReLU -> pool, .item()."""
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

cache, epochs, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(42)
data = np.load(cache)
train_set = TensorDataset(torch.from_numpy(data["X_train"]), torch.from_numpy(data["y_train"]))
val_set = TensorDataset(torch.from_numpy(data["X_val"]), torch.from_numpy(data["y_val"]))
train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
val_loader = DataLoader(val_set, batch_size=64)
channels, height, width = data["X_train"].shape[1:]
model = nn.Sequential(
    nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.BatchNorm2d(32), nn.Dropout2d(0.35),
    nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.BatchNorm2d(48), nn.Dropout2d(0.35),
    nn.Flatten(), nn.Linear(48 * (height // 4) * (width // 4), 64), nn.ReLU(),
    nn.BatchNorm1d(64), nn.Dropout(0.7), nn.Linear(64, len(data["mapping"])),
).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=0.0008, weight_decay=2e-4)
criterion = nn.CrossEntropyLoss()
for epoch in range(1, epochs + 1):
    start = time.perf_counter()
    model.train()
    train_loss = 0.0
    for xb, yb in train_loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_loss += loss.item() * len(yb)
    model.eval()
    val_loss, correct = 0.0, 0
    with torch.no_grad():
        for xb, yb in val_loader:
            xb, yb = xb.to(device), yb.to(device)
            out = model(xb)
            val_loss += criterion(out, yb).item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
    print(f"Epoch {epoch}: loss {train_loss / len(train_set):.4f}, "
          f"val_loss {val_loss / len(val_set):.4f}, val_acc {correct / len(val_set):.2%}, "
          f"Epoch time: {time.perf_counter() - start:.4f}s", flush=True)
'''

BASELINE_EXTRACT = '''\
"""The tutorial's extraction loop: librosa.load, one mfcc call per segment, json.dump."""
import json
import math
import os
import sys

import librosa

SAMPLE_RATE, SEGMENTS, N_MFCC, N_FFT, HOP = 22050, 10, 13, 2048, 512
SEGMENT_SAMPLES = SAMPLE_RATE * 30 // SEGMENTS
FRAMES = math.ceil(SEGMENT_SAMPLES / HOP)
root, output = sys.argv[1], sys.argv[2]

data = {"mapping": [], "labels": [], "mfcc": [], "tracks": []}
for label, genre in enumerate(sorted(os.listdir(root))):
    data["mapping"].append(genre)
    for name in sorted(os.listdir(os.path.join(root, genre))):
        signal, _ = librosa.load(os.path.join(root, genre, name), sr=SAMPLE_RATE)
        for i in range(SEGMENTS):
            piece = signal[i * SEGMENT_SAMPLES:(i + 1) * SEGMENT_SAMPLES]
            mfcc = librosa.feature.mfcc(y=piece, sr=SAMPLE_RATE, n_mfcc=N_MFCC,
                                        n_fft=N_FFT, hop_length=HOP).T
            if len(mfcc) == FRAMES:
                data["mfcc"].append(mfcc.tolist())
                data["labels"].append(label)
                data["tracks"].append(os.path.splitext(name)[0])

with open(output, "w") as f:
    json.dump(data, f)
'''


# ---------------------------------------------------------------------------------------------
# Input


def in_child(function, *args):
    """function(*args) in a forked process. A child started later reports as its peak RSS at least
    this process's peak (exec keeps the peak of the process image it replaces), so the large
    documents are built and read in a process of their own."""
    fork = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=fork) as pool:
        return pool.submit(function, *args).result()


def write_input(path, segments):
    """Write the generated data.json (through a temp file: a partial one is never reused)."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # Full precision and without the optional "tracks": both sides read the tutorial's format.
    doc = preprocess.make_demo_data(tracks_per_genre=segments // 100, decimals=None)
    del doc["tracks"]
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w") as handle:
        json.dump(doc, handle, indent=4)  # as librosa's output dumped as-is
    os.replace(temp, path)


def ensure_input(segments):
    """The generated data.json, written once."""
    path = DATA_DIR / f"gtzan_sized_{segments}.json"
    if not path.is_file():
        print(f"Generating {path} ({segments} segments); this takes a few minutes ...", flush=True)
        in_child(write_input, path, segments)
    return path


def ensure_audio(tracks):
    """A folder of `tracks` synthetic 30-s wav files in 10 genre folders, written once."""
    import soundfile

    root = DATA_DIR / f"audio_{tracks}"
    done = DATA_DIR / f"audio_{tracks}.complete"  # beside it: the tutorial loop takes any entry
    if not done.is_file():
        print(f"Generating {tracks} synthetic tracks in {root} ...", flush=True)
        genres = extract.DEMO_GENRES
        for index in range(tracks):
            genre, track = index % len(genres), index // len(genres)
            path = root / genres[genre] / f"{genres[genre]}.{track:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, extract.synthesize_track(genre, track), features.SAMPLE_RATE,
                            subtype="PCM_16")
        done.touch()
    return root


# ---------------------------------------------------------------------------------------------
# Running and timing


def run_child(args, log_path):
    """Run python with args in the repository; (wall s, peak RSS MiB, output). Raise if it fails."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss: the largest of it and its children
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; tell Popen
    output = Path(log_path).read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise RuntimeError(f"{' '.join(map(str, args))} exited with {proc.returncode}:\n{tail}")
    return wall, usage.ru_maxrss / 1024, output  # Linux reports ru_maxrss in KiB


def per_epoch(output):
    """The median of a training run's epoch times, leaving out the first (warm-up) epoch."""
    times = [float(value) for value in EPOCH_TIME.findall(output)]
    if len(times) < 2:
        raise RuntimeError(f"a training run printed {len(times)} epoch time(s):\n{output[-500:]}")
    return statistics.median(times[1:])


def wall_and_peak(wall, peak, output):
    """A run's figures as a round's line shows them."""
    return f"{wall:7.2f} s {peak:5.0f} MiB"


def alternate(title, commands, rounds, workdir, outputs=None, show=wall_and_peak):
    """Run commands {name: args} in turn, rounds times, removing each one's output file first;
    print a line per round and return {name: [(wall, peak, output) per round]}."""
    print(f"\n{title} (load average {load_average()})")
    results = {name: [] for name in commands}
    for index in range(1, rounds + 1):
        line = f"  round {index}:"
        for name, args in commands.items():
            if outputs and name in outputs:
                outputs[name].unlink(missing_ok=True)
            results[name].append(run_child(args, workdir / f"{name}.log"))
            line += f"  {name} {show(*results[name][-1])}"
        print(line, flush=True)
    return results


def medians(results, pick):
    """{name: median of pick(wall, peak, output) over the rounds}."""
    return {name: statistics.median(pick(*run) for run in runs) for name, runs in results.items()}


# ---------------------------------------------------------------------------------------------
# The comparisons: each returns {target key: (project, baseline, unit)}


def bench_preprocessing(data, baseline, workdir, rounds):
    """preprocess.py vs the plain script: wall time and peak memory."""
    outputs = {"project": workdir / "project.npz", "baseline": workdir / "baseline.npz"}
    results = alternate("Preprocessing", {
        "project": ["preprocess.py", "--data", data, "--cache", outputs["project"]],
        "baseline": [baseline, data, outputs["baseline"]]}, rounds, workdir, outputs)
    wall, peak = medians(results, lambda w, p, o: w), medians(results, lambda w, p, o: p)
    return {"prep_time": (wall["project"], wall["baseline"], "s"),
            "prep_mem": (peak["project"], peak["baseline"], "MiB")}


def bench_training(data, baseline, workdir, rounds, epochs, device):
    """train.py vs the DataLoader loop, on the cache preprocess.py writes: s/epoch."""
    cache = workdir / "project.npz"  # the preprocessing part's output, when it ran
    if not cache.is_file():
        run_child(["preprocess.py", "--data", data, "--cache", cache], workdir / "cache.log")
    results = alternate("Training: median s/epoch of epochs 2..E", {
        "project": ["train.py", "--data", data, "--cache", cache, "--model-dir",
                    workdir / "models", "--epochs", epochs, "--patience", 1000, "--no-plots",
                    "--device", device],
        "baseline": [baseline, cache, epochs, device]},
        rounds, workdir, show=lambda w, p, o: f"{per_epoch(o):.3f} s")
    med = medians(results, lambda w, p, o: per_epoch(o))
    return {"train": (med["project"], med["baseline"], "s")}


def bench_cuda_full_run(data, workdir):
    """Time one full train.py run of CUDA_FULL_EPOCHS epochs on the GPU (the cache exists)."""
    wall, _, output = run_child(
        ["train.py", "--data", data, "--cache", workdir / "project.npz", "--model-dir",
         workdir / "models", "--epochs", CUDA_FULL_EPOCHS, "--patience", 1000, "--no-plots",
         "--device", "cuda"], workdir / "cuda.log")
    times = [float(value) for value in EPOCH_TIME.findall(output)]
    print(f"\nFull {CUDA_FULL_EPOCHS}-epoch train.py run on cuda: {sum(times):.2f} s in "
          f"{len(times)} epochs, {wall:.2f} s for the whole process")


def largest_difference(ours, theirs):
    """Largest |difference| of two data.json files' MFCCs; raise if they differ in anything else."""
    import numpy as np

    ours, theirs = (json.loads(Path(path).read_text()) for path in (ours, theirs))
    for key in ("mapping", "labels", "tracks"):
        if ours[key] != theirs[key]:
            raise RuntimeError(f"extract.py and the tutorial loop disagree on '{key}'")
    return float(np.abs(np.array(ours["mfcc"], np.float32) - np.array(theirs["mfcc"], np.float32))
                 .max())


def bench_extraction(audio, baseline, workdir, rounds):
    """extract.py vs the tutorial loop: wall time, and a check that the features agree."""
    outputs = {"project": workdir / "project.json", "baseline": workdir / "baseline.json"}
    results = alternate(f"Extraction of {audio}", {
        "project": ["extract.py", audio, "--data", outputs["project"]],
        "baseline": [baseline, audio, outputs["baseline"]]}, rounds, workdir, outputs)
    print(f"  largest |difference| of the features: "
          f"{in_child(largest_difference, outputs['project'], outputs['baseline']):.3g}")
    wall = medians(results, lambda w, p, o: w)
    return {"extract": (wall["project"], wall["baseline"], "s")}


def bench_prediction(audio, workdir, rounds):
    """predict.py with the .pt and the .onnx vs extract.py on the same clips: wall time."""
    print("\nTraining a model on the clips for the prediction comparison ...", flush=True)
    data, models = workdir / "clips.json", workdir / "clip_models"
    run_child(["extract.py", audio, "--data", data], workdir / "clips.log")
    run_child(["train.py", "--data", data, "--cache", workdir / "clips.npz", "--model-dir", models,
               "--epochs", 2, "--split-by", "segment", "--no-plots", "--device", "cpu"],
              workdir / "clips.log")  # split by segment: it works with any number of clips
    extracted = workdir / "extract.json"
    results = alternate(f"Prediction of {audio}", {
        "predict_pt": ["predict.py", "--model", models / "final_model_pytorch.pt", "--device",
                       "cpu", audio],
        "predict_onnx": ["predict.py", "--model", models / "final_model.onnx", audio],
        "extract": ["extract.py", audio, "--data", extracted]},
        rounds, workdir, {"extract": extracted})
    count = sum(1 for _ in Path(audio).rglob("*.wav"))
    for name in ("predict_pt", "predict_onnx"):
        if any(f"Predicted {count} file(s)" not in output for _, _, output in results[name]):
            raise RuntimeError(f"{name}: predict.py did not predict all {count} clips")
    wall = medians(results, lambda w, p, o: w)
    return {"predict": (wall["predict_pt"], wall["extract"], "s"),
            "predict_onnx": (wall["predict_onnx"], wall["extract"], "s")}


# ---------------------------------------------------------------------------------------------
# Report


def summarize(figures):
    """Print each median pair, its ratio and the target it is held to."""
    print("\nMedians across rounds, ratio project / baseline:")
    for key, (project, baseline, unit) in figures.items():
        name, limit = TARGETS[key]
        ratio = project / baseline
        print(f"  {name:<32} {project:8.2f} / {baseline:8.2f} {unit:<3} = {ratio:.3f}  "
              f"target <= {limit:.2f}  {'PASS' if ratio <= limit else 'MISS'}")


def load_average():
    """The 1-, 5- and 15-minute load averages: other work on the machine skews the timings."""
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def describe_machine():
    """CPU model, core count and library versions, for the record."""
    with open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle
                    if line.startswith("model name")), platform.machine())
    versions = ", ".join(f"{pkg} {metadata.version(pkg)}" for pkg in
                         ("torch", "numpy", "msgspec", "librosa", "onnxruntime")
                         if importlib.util.find_spec(pkg))  # the train part needs no librosa
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {versions}"


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    count = at_least(int, 1)
    parser.add_argument("--data", type=Path, help="input data.json (default: generated, GTZAN-sized)")
    parser.add_argument("--segments", type=count, default=SEGMENTS,
                        help="segments of the generated input, a multiple of 100 (without --data)")
    parser.add_argument("--rounds", type=count, default=ROUNDS, help="alternating rounds")
    parser.add_argument("--epochs", type=at_least(int, 2), default=EPOCHS,
                        help="epochs per training run (the first is warm-up)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="training device; cuda also times a full 30-epoch run")
    parser.add_argument("--part", choices=("all", "preprocess", "train", "extract", "predict"),
                        default="all", help="which comparison to run")
    parser.add_argument("--tracks", type=count, default=TRACKS, help="clips for extraction")
    parser.add_argument("--predict-tracks", type=count, default=PREDICT_TRACKS,
                        help="clips for prediction")
    args = parser.parse_args(argv)
    if args.segments % 100:
        parser.error("--segments must be a multiple of 100 (10 genres x 10 segments per track)")
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    return args


def run(args, workdir):
    """Run the selected comparisons in workdir and print the report."""
    print(f"Machine: {describe_machine()}")
    baselines = {name: workdir / f"baseline_{name}.py" for name in ("prep", "train", "extract")}
    for name, text in zip(baselines, (BASELINE_PREPROCESS, BASELINE_TRAIN, BASELINE_EXTRACT)):
        baselines[name].write_text(text)
    parts = {"extract", "predict", "preprocess", "train"} if args.part == "all" else {args.part}
    figures = {}
    if "extract" in parts:
        figures.update(bench_extraction(ensure_audio(args.tracks), baselines["extract"], workdir,
                                        args.rounds))
    if "predict" in parts:
        figures.update(bench_prediction(ensure_audio(args.predict_tracks), workdir, args.rounds))
    if parts & {"preprocess", "train"}:
        data = (args.data or ensure_input(args.segments)).resolve()
        print(f"\nInput: {data} ({data.stat().st_size / 1e6:.1f} MB)")
    if "preprocess" in parts:
        figures.update(bench_preprocessing(data, baselines["prep"], workdir, args.rounds))
    if "train" in parts:
        figures.update(bench_training(data, baselines["train"], workdir, args.rounds, args.epochs,
                                      args.device))
        if args.device == "cuda":
            bench_cuda_full_run(data, workdir)
    summarize(figures)
    print(f"Load average at the end: {load_average()}")


def main(argv=None) -> int:
    """Run the benchmark; exit status 0 (it reports, it does not judge), 1 if a child fails."""
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="genre-bench-run-"))
    try:
        run(args, workdir)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
