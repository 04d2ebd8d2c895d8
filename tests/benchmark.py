"""Benchmark preprocess.py and train.py against plain, textbook versions of the same work.

Usage:
    python tests/benchmark.py                         # generated GTZAN-sized input, 3 rounds, CPU
    python tests/benchmark.py --data data.json --rounds 5 --epochs 6
    python tests/benchmark.py --device cuda           # also times a full 30-epoch project run
    python tests/benchmark.py --part train            # only the training comparison
    python tests/benchmark.py --part extract --tracks 300   # audio -> data.json vs the tutorial loop
    python tests/benchmark.py --part predict          # predict.py vs extract.py on 100 clips

Without --data it writes a GTZAN-sized data.json (10 genres, 10,000 segments of 130 x 13 full
precision floats, json.dump(indent=4), about 640 MB) once into the system temp folder and reuses it.
Project and baseline run alternately, each in its own subprocess: preprocessing is measured by wall
time and peak RSS (os.wait4: the largest of the child and the processes it started and waited
for, such as worker pools), training by the median seconds per epoch of epochs 2..E.
The extract part synthesizes --tracks 30-s wav files once (extract.py's demo generator) and
compares `extract.py` with the tutorial's loop (librosa.load, one mfcc call per segment, one
process, json.dump), checking that both give the same features. The predict part times predict.py
on --predict-tracks such clips against extract.py on the same files, with a model trained briefly
on them (the time does not depend on the weights). The ratios project/baseline are
compared with the TARGETS below. Benchmarks report, they do
not fail: the exit status is 0 (2 on bad arguments, 1 when a child process fails). POSIX only.
"""
import argparse
import json
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

REPO = Path(__file__).resolve().parent.parent  # preprocess.py and train.py live here
sys.path.insert(0, str(REPO))
import extract  # noqa: E402  (the synthetic-audio generator)
import preprocess  # noqa: E402  (the one synthetic-data generator)
from common import at_least  # noqa: E402

ROUNDS = 3  # alternating project/baseline rounds; the report uses their medians
EPOCHS = 4  # epochs per training run; epoch 1 is warm-up, so the median covers 2..EPOCHS
CUDA_FULL_EPOCHS = 30  # a full-length GPU run, timed whole (target: under 15 s)
SEGMENTS = 10_000  # GTZAN: 1,000 tracks x 10 segments
TRACKS = 300  # synthetic 30-s audio tracks for the extraction comparison ("a few hundred")
PREDICT_TRACKS = 100  # synthetic 30-s clips that predict.py and extract.py both process
DATA_DIR = Path(tempfile.gettempdir()) / "genre-benchmark"  # generated input, kept between runs
EPOCH_TIME = re.compile(r"Epoch time: ([\d.]+)s")  # printed by train.py and by the baseline

# (name, ratio limit, goal or None); a ratio is project / baseline, lower is better.
TARGETS = {
    "train": ("training s/epoch", 0.8, 0.7),
    "prep_time": ("preprocessing wall time", 0.5, None),
    "prep_mem": ("preprocessing peak memory", 1.0, None),
    "extract": ("extraction wall time", 0.4, None),
    "predict": ("prediction / extraction", 1.2, None),  # the baseline here is extract.py
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
# Input data


def ensure_input(segments):
    """Path of the generated data.json, written once (atomically, so a partial file is never reused)."""
    path = DATA_DIR / f"gtzan_sized_{segments}.json"
    if path.is_file():
        return path
    print(f"Generating {path} ({segments} segments); this takes a few minutes ...", flush=True)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # The project's one generator, at full precision and without the optional "tracks" key, so
    # that both sides read the tutorial's format.
    doc = preprocess.make_demo_data(tracks_per_genre=segments // 100, decimals=None)
    del doc["tracks"]
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w") as handle:
        json.dump(doc, handle, indent=4)  # full float64 repr, like librosa's output dumped as-is
    os.replace(temp, path)
    return path


def ensure_audio(tracks):
    """Folder of `tracks` synthetic 30-s wav files in 10 genre folders, written once."""
    import soundfile

    root = DATA_DIR / f"audio_{tracks}"
    done = DATA_DIR / f"audio_{tracks}.complete"  # outside: the tutorial loop takes any entry
    if done.is_file():
        return root
    print(f"Generating {tracks} synthetic tracks in {root} ...", flush=True)
    genres = extract.DEMO_GENRES
    for index in range(tracks):
        genre, track = index % len(genres), index // len(genres)
        path = root / genres[genre] / f"{genres[genre]}.{track:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, extract.synthesize_track(genre, track), extract.SAMPLE_RATE,
                        subtype="PCM_16")
    done.touch()
    return root


# ---------------------------------------------------------------------------------------------
# Child processes


def run_child(args, log_path, cwd=REPO):
    """Run python with args; return (wall seconds, peak RSS in MiB, output). Raise if it fails."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT)
        # The child's rusage; its ru_maxrss is the largest of the child and its reaped children.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; tell Popen
    output = Path(log_path).read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise RuntimeError(f"{' '.join(map(str, args))} exited with {proc.returncode}:\n{tail}")
    return wall, usage.ru_maxrss / 1024, output  # Linux reports ru_maxrss in KiB


def epoch_seconds(output):
    """Per-epoch times printed by a training run."""
    return [float(value) for value in EPOCH_TIME.findall(output)]


def median_after_warmup(times):
    """Median epoch time, leaving out the first (warm-up) epoch."""
    return statistics.median(times[1:])


def write_baselines(workdir):
    """Write the two plain scripts; return their paths."""
    paths = {"prep": workdir / "baseline_preprocess.py", "train": workdir / "baseline_train.py",
             "extract": workdir / "baseline_extract.py"}
    paths["prep"].write_text(BASELINE_PREPROCESS)
    paths["train"].write_text(BASELINE_TRAIN)
    paths["extract"].write_text(BASELINE_EXTRACT)
    return paths


# ---------------------------------------------------------------------------------------------
# The two comparisons


def bench_preprocessing(data, baseline, workdir, rounds):
    """Alternate project and baseline preprocessing; return per-round (seconds, MiB) of each."""
    results = {"project": [], "baseline": []}
    print("\nPreprocessing: wall s, peak RSS MiB")
    print(f"  {'round':<6} {'project':>18} {'baseline':>18}")
    for index in range(1, rounds + 1):
        commands = {
            "project": ["preprocess.py", "--data", data, "--cache", workdir / "project.npz"],
            "baseline": [baseline, data, workdir / "baseline.npz"],
        }
        for name, args in commands.items():
            (workdir / f"{name}.npz").unlink(missing_ok=True)  # each run writes from scratch
            wall, peak, _ = run_child(args, workdir / f"prep_{name}.log")
            results[name].append((wall, peak))
        (pw, pm), (bw, bm) = results["project"][-1], results["baseline"][-1]
        print(f"  {index:<6} {pw:>7.2f} s {pm:>6.0f} MiB {bw:>7.2f} s {bm:>6.0f} MiB"
              f"  ratios {pw / bw:.3f} {pm / bm:.3f}", flush=True)
    return results


def largest_difference(project_json, baseline_json):
    """Largest absolute difference of the two outputs' features; raise if they differ in kind."""
    import numpy as np

    ours, theirs = (json.loads(Path(p).read_text()) for p in (project_json, baseline_json))
    for key in ("mapping", "labels", "tracks"):
        if ours[key] != theirs[key]:
            raise RuntimeError(f"extract.py and the tutorial loop disagree on '{key}'")
    return float(np.abs(np.array(ours["mfcc"], dtype=np.float32)
                        - np.array(theirs["mfcc"], dtype=np.float32)).max())


def bench_extraction(audio, baseline, workdir, rounds):
    """Alternate extract.py and the tutorial loop; return per-round (seconds, MiB) of each."""
    results = {"project": [], "baseline": []}
    print(f"\nExtraction of {audio}: wall s, peak RSS MiB (of the largest process)")
    print(f"  {'round':<6} {'project':>18} {'baseline':>18}")
    outputs = {name: workdir / f"extract_{name}.json" for name in results}
    for index in range(1, rounds + 1):
        commands = {"project": ["extract.py", audio, "--data", outputs["project"]],
                    "baseline": [baseline, audio, outputs["baseline"]]}
        for name, args in commands.items():
            outputs[name].unlink(missing_ok=True)
            wall, peak, _ = run_child(args, workdir / f"extract_{name}.log")
            results[name].append((wall, peak))
        (pw, pm), (bw, bm) = results["project"][-1], results["baseline"][-1]
        print(f"  {index:<6} {pw:>7.2f} s {pm:>6.0f} MiB {bw:>7.2f} s {bm:>6.0f} MiB"
              f"  ratio {pw / bw:.3f}", flush=True)
    print(f"  largest |difference| of the features: "
          f"{largest_difference(outputs['project'], outputs['baseline']):.3g}")
    return results


def train_audio_model(audio, workdir):
    """A model trained for two epochs on extract.py's features of the audio; return its path."""
    data, models = workdir / "predict_data.json", workdir / "predict_models"
    print("\nTraining a model on the clips for the prediction comparison ...", flush=True)
    run_child(["extract.py", audio, "--data", data], workdir / "predict_prepare.log")
    run_child(["train.py", "--data", data, "--cache", workdir / "predict.npz", "--model-dir",
               models, "--epochs", 2, "--no-plots", "--device", "cpu"],
              workdir / "predict_prepare.log")
    return models / "final_model_pytorch.pt"


def bench_prediction(audio, workdir, rounds):
    """Alternate predict.py and extract.py on the same clips; per-round (seconds, MiB) of each."""
    model = train_audio_model(audio, workdir)
    results = {"project": [], "baseline": []}
    print(f"\nPrediction of {audio}: wall s, peak RSS MiB (of the largest process); "
          f"predict.py vs extract.py")
    print(f"  {'round':<6} {'predict.py':>18} {'extract.py':>18}")
    output = workdir / "predict_extract.json"
    count = sum(1 for path in Path(audio).rglob("*.wav"))
    for index in range(1, rounds + 1):
        commands = {"project": ["predict.py", "--model", model, "--device", "cpu", audio],
                    "baseline": ["extract.py", audio, "--data", output]}
        for name, args in commands.items():
            output.unlink(missing_ok=True)
            wall, peak, log = run_child(args, workdir / f"predict_{name}.log")
            results[name].append((wall, peak))
            if name == "project" and f"Predicted {count} file(s)" not in log:
                raise RuntimeError(f"predict.py did not predict all {count} clips:\n{log[-500:]}")
        (pw, pm), (bw, bm) = results["project"][-1], results["baseline"][-1]
        print(f"  {index:<6} {pw:>7.2f} s {pm:>6.0f} MiB {bw:>7.2f} s {bm:>6.0f} MiB"
              f"  ratio {pw / bw:.3f}", flush=True)
    return results


def ensure_cache(data, cache, workdir):
    """Build the project's cache once, so that training runs exclude preprocessing."""
    if not cache.is_file():
        print("\nBuilding the training cache with preprocess.py ...", flush=True)
        run_child(["preprocess.py", "--data", data, "--cache", cache], workdir / "cache.log")


def train_commands(data, cache, baseline, workdir, epochs, device):
    """The project and baseline training command lines."""
    return {
        "project": ["train.py", "--data", data, "--cache", cache, "--model-dir",
                    workdir / "models", "--epochs", epochs, "--patience", 1000, "--device", device],
        "baseline": [baseline, cache, epochs, device],
    }


def bench_training(commands, workdir, rounds):
    """Alternate project and baseline training; return each one's epoch times, round by round."""
    results = {"project": [], "baseline": []}
    print("\nTraining: s/epoch, median of epochs 2..E (all epochs in brackets)")
    for index in range(1, rounds + 1):
        line = f"  {index:<6}"
        for name, args in commands.items():
            _, _, output = run_child(args, workdir / f"train_{name}.log")
            times = epoch_seconds(output)
            if len(times) < 2:
                raise RuntimeError(f"{name} training printed {len(times)} epoch time(s)")
            results[name].append(times)
            shown = " ".join(f"{t:.2f}" for t in times)
            line += f" {name} {median_after_warmup(times):6.3f} [{shown}]"
        ratio = median_after_warmup(results["project"][-1]) / median_after_warmup(times)
        print(f"{line}  ratio {ratio:.3f}", flush=True)
    return results


def bench_cuda_full_run(data, cache, workdir):
    """Time one full project run of CUDA_FULL_EPOCHS epochs on the GPU (preprocessing excluded)."""
    args = ["train.py", "--data", data, "--cache", cache, "--model-dir", workdir / "models",
            "--epochs", CUDA_FULL_EPOCHS, "--patience", 1000, "--device", "cuda"]
    wall, _, output = run_child(args, workdir / "train_cuda_full.log")
    times = epoch_seconds(output)
    print(f"\nFull {CUDA_FULL_EPOCHS}-epoch project run on cuda: {sum(times):.2f} s in epochs "
          f"({len(times)} epochs), {wall:.2f} s for the whole process (target: epochs < 15 s)")


# ---------------------------------------------------------------------------------------------
# Report


def ratio_line(key, project, baseline, unit):
    """One 'name: project / baseline = ratio, target, PASS/MISS' line."""
    name, limit, goal = TARGETS[key]
    ratio = project / baseline
    verdict = "PASS" if ratio <= limit else "MISS"
    wanted = f"<= {limit:.2f}" + (f" (goal {goal:.2f}: {'met' if ratio <= goal else 'not met'})"
                                  if goal else "")
    return (f"  {name:<26} {project:8.2f} / {baseline:8.2f} {unit:<5} = {ratio:.3f}  "
            f"target {wanted}  {verdict}")


def summarize(prep, train, extraction=None, prediction=None):
    """Print the medians across rounds and the project/baseline ratios against the targets."""
    print("\nMedians across rounds, ratio project / baseline:")
    for key, results in (("extract", extraction), ("predict", prediction)):
        if results:
            med = {name: statistics.median(v[0] for v in runs) for name, runs in results.items()}
            print(ratio_line(key, med["project"], med["baseline"], "s"))
    if train:
        med = {name: statistics.median(map(median_after_warmup, runs)) for name, runs in train.items()}
        print(ratio_line("train", med["project"], med["baseline"], "s"))
        # The fastest epoch is what each loop takes when nothing else competes for the CPU.
        best = {name: min(t for times in runs for t in times[1:]) for name, runs in train.items()}
        print(f"  {'(fastest epoch, for noise)':<26} {best['project']:8.2f} / "
              f"{best['baseline']:8.2f} s     = {best['project'] / best['baseline']:.3f}")
    if prep:
        for index, (key, unit) in enumerate((("prep_time", "s"), ("prep_mem", "MiB"))):
            med = {name: statistics.median(v[index] for v in runs) for name, runs in prep.items()}
            print(ratio_line(key, med["project"], med["baseline"], unit))


def load_average():
    """The 1-minute load average, or "n/a" where the system does not report one."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def describe_machine():
    """CPU model, core count and library versions, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = ", ".join(f"{pkg} {metadata.version(pkg)}"
                         for pkg in ("torch", "numpy", "msgspec", "librosa"))
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {versions}"


# ---------------------------------------------------------------------------------------------
# Command line


def positive_int(text):
    """argparse type: an integer of at least 1."""
    return at_least(int, 1)(text)


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Compare preprocess.py and train.py with plain baselines and their targets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, help="input data.json (default: generated, GTZAN-sized)")
    parser.add_argument("--segments", type=positive_int, default=SEGMENTS,
                        help="segments of the generated input, a multiple of 100 (ignored with --data)")
    parser.add_argument("--rounds", type=positive_int, default=ROUNDS, help="alternating rounds")
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS,
                        help="epochs per training run (at least 2; epoch 1 is warm-up)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="training device; cuda also times a full 30-epoch project run")
    parser.add_argument("--part", choices=("all", "extract", "predict", "preprocess", "train"),
                        default="all", help="which comparison to run")
    parser.add_argument("--tracks", type=positive_int, default=TRACKS,
                        help="synthetic 30-s tracks for the extraction comparison")
    parser.add_argument("--predict-tracks", type=positive_int, default=PREDICT_TRACKS,
                        help="synthetic 30-s clips for the prediction comparison")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is excluded as warm-up")
    if args.segments % 100:
        parser.error("--segments must be a multiple of 100 (10 genres x 10 segments per track)")
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    return args


def run(args, workdir):
    """Run the selected comparisons in workdir and print the report."""
    print(f"Machine: {describe_machine()}")
    print(f"Load average: {load_average()} (other work on this machine skews the timings)")
    baselines = write_baselines(workdir)
    prep = train = extraction = prediction = None
    if args.part in ("all", "extract"):
        extraction = bench_extraction(ensure_audio(args.tracks), baselines["extract"], workdir,
                                      args.rounds)
    if args.part in ("all", "predict"):
        prediction = bench_prediction(ensure_audio(args.predict_tracks), workdir, args.rounds)
    if args.part in ("extract", "predict"):
        summarize(prep, train, extraction, prediction)
        return
    data = (args.data or ensure_input(args.segments)).resolve()
    print(f"Input: {data} ({data.stat().st_size / 1e6:.1f} MB)")
    cache = workdir / "project.npz"  # preprocessing's last project output doubles as the cache
    if args.part in ("all", "preprocess"):
        prep = bench_preprocessing(data, baselines["prep"], workdir, args.rounds)
    if args.part in ("all", "train"):
        ensure_cache(data, cache, workdir)
        commands = train_commands(data, cache, baselines["train"], workdir, args.epochs,
                                  args.device)
        train = bench_training(commands, workdir, args.rounds)
        if args.device == "cuda":
            bench_cuda_full_run(data, cache, workdir)
    summarize(prep, train, extraction, prediction)
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
