"""Train the two-block CNN music-genre classifier on MFCC segments and test it per genre.

Usage:
    python train.py                  # data.json -> preprocessed_data.npz -> saved_models/
    python train.py --demo           # generated demo data; everything goes to demo/
    python train.py --epochs 50 --batch-size 32 --device cuda --seed 1
    python train.py --folds 10       # 10-fold cross-validation by track -> cv_metrics.json
    python train.py --plots-only     # redraw the pictures of saved_models/ (--export-only: ONNX)
"""
import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

import model
import plots
import preprocess
from common import (LOCK_FILE, DataError, HelpFormatter, at_least, atomic_write, check_replaceable,
                    folder_lock, input_file, interrupt_name, interrupt_status, run_main, vote)

MODEL_SAVE_PATH = "saved_models"  # folder for checkpoints, genre mapping, history and metrics
EPOCHS = 30  # maximum training epochs
BATCH_SIZE = 64  # mini-batch size for training
LEARNING_RATE = 0.0008  # fixed Adam learning rate
WEIGHT_DECAY = 2e-4  # L2 regularization, Adam's weight_decay
GRADIENT_CLIP = 1.0  # max global gradient norm, clipped at every step
EARLY_STOPPING_PATIENCE = 8  # stop after this many epochs without a better validation loss
SEED = 42  # seeds the weights, dropout and shuffling (the split has its own, --split-seed)
BN_STATS = "auto"  # batch-norm statistics for validation: auto, precise (recomputed) or running
# auto recomputes them below this many batches an epoch: at momentum 0.1 the running averages still
# hold 0.9**k of older weights' statistics after k batches, 0.5 % at 50, half at 7.
BN_STATS_MIN_BATCHES = 50
FOLDS = None  # K of K-fold cross-validation (--folds); None trains and saves one model
EVAL_BATCH_CPU = 64  # evaluation batch on CPU: small batches stay in cache (4x faster than 1024)
EVAL_BATCH_CUDA = 4096  # evaluation batch on GPU: few, large kernel launches
MAKE_PLOTS = True  # draw the run's pictures (--no-plots)

BEST_MODEL_FILE = "best_model_pytorch.pt"
FINAL_MODEL_FILE = "final_model_pytorch.pt"
MAPPING_FILE = "genre_mapping.json"
ONNX_FILE = "final_model.onnx"
RUN_FILES = (BEST_MODEL_FILE, FINAL_MODEL_FILE, MAPPING_FILE, plots.HISTORY_FILE,
             plots.METRICS_FILE, ONNX_FILE, plots.CURVES_FILE, plots.CONFUSION_FILE)
CV_FILES = (plots.CV_METRICS_FILE, plots.CV_CONFUSION_FILE)  # a cross-validation writes only these
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
JSON_KEYS = {MAPPING_FILE: None, plots.HISTORY_FILE: HISTORY_KEYS, plots.METRICS_FILE: (
    "accuracy", "per_genre"), plots.CV_METRICS_FILE: ("folds", "runs")}  # what marks our JSON
CV_CONFLICTS = ("test_split", "split_by", "cache", "reprocess")  # what --folds makes meaningless
RULE = "-" * 60


class NotFinite(DataError):
    """A loss or accuracy that is not a finite number: training cannot go on."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization settings, mirrored one to one by the command-line flags."""
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    weight_decay: float = WEIGHT_DECAY
    grad_clip: float = GRADIENT_CLIP
    patience: int = EARLY_STOPPING_PATIENCE
    seed: int = SEED
    bn_stats: str = BN_STATS


def is_ours(path):
    """Whether a file of the model folder was written by train.py, judged by its content."""
    path = Path(path)
    if path.suffix == ".json":
        obj, keys = json.loads(path.read_text(encoding="utf-8")), JSON_KEYS[path.name]
        if keys is None:  # the genre list: ours only beside a model of ours with those genres
            final = path.with_name(FINAL_MODEL_FILE)
            return final.is_file() and obj == model.read_checkpoint(final)["mapping"]
        return isinstance(obj, dict) and set(keys) <= obj.keys()
    if path.suffix == ".onnx" and not importlib.util.find_spec("onnx"):
        return True  # without onnx nothing is exported, so the file is not replaced
    recognise = {".pt": model.is_checkpoint, ".onnx": model.is_onnx_model, ".png": plots.is_picture}
    return recognise[path.suffix](path)


def setup(data, config, device):
    """Seed, build the model for the data, and move the splits onto the device once."""
    torch.manual_seed(config.seed)  # also seeds every CUDA device
    net = model.GenreClassifier(*data.x_train.shape[1:], len(data.mapping))
    # Channels-last lets the CPU and GPU convolution kernels skip layout conversions.
    layout = torch.channels_last
    return net.to(device, memory_format=layout), {name: (
        torch.from_numpy(getattr(data, f"x_{name}")).to(device).contiguous(memory_format=layout),
        torch.from_numpy(getattr(data, f"y_{name}")).to(device)) for name in preprocess.SPLIT_NAMES}


def train_one_epoch(net, optimizer, x, y, config, generator):
    """One pass over shuffled mini-batches; returns the mean loss and accuracy per segment."""
    net.train()
    order = torch.randperm(len(y), generator=generator).to(y.device)
    loss_sum = torch.zeros((), device=y.device)
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    batches = order.split(config.batch_size)
    if len(batches) > 1 and len(batches[-1]) == 1:
        # A lone last row joins the batch before: batch norm cannot train on one row.
        batches = batches[:-2] + (torch.cat(batches[-2:]),)
    for rows in batches:
        logits = net(x[rows])
        loss = F.cross_entropy(logits, y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()
        # Summed on the device: one host synchronisation per epoch, not one per step.
        loss_sum += loss.detach() * len(rows)
        correct += (logits.argmax(dim=1) == y[rows]).sum()
    return loss_sum.item() / len(y), correct.item() / len(y)


@torch.no_grad()
def evaluate(net, x, y):
    """Mean loss per segment, accuracy and logits of the model on (x, y), in evaluation mode."""
    net.eval()
    size = EVAL_BATCH_CUDA if x.device.type == "cuda" else EVAL_BATCH_CPU
    logits = torch.cat([net(x[start:start + size]) for start in range(0, len(x), size)])
    loss = F.cross_entropy(logits, y, reduction="sum").item() / len(y)
    return loss, (logits.argmax(dim=1) == y).sum().item() / len(y), logits


def run_epoch(net, optimizer, splits, config, generator, epoch):
    """Train one epoch, then validate: (loss, accuracy, val_loss, val_accuracy), all finite."""
    figures = train_one_epoch(net, optimizer, *splits["train"], config, generator)
    x = splits["train"][0]
    if config.bn_stats == "precise" or (config.bn_stats == "auto"
                                        and len(x) < BN_STATS_MIN_BATCHES * config.batch_size):
        # The running averages lag behind the weights: recompute them (update_bn), with dropout
        # drawing from a forked generator so that the weights' trajectory stays the same.
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            update_bn(x.tensor_split(max(1, len(x) // config.batch_size)), net)
    figures += evaluate(net, *splits["val"])[:2]
    if not np.isfinite(figures).all():
        raise NotFinite(f"the loss became {figures[0]} in epoch {epoch}, so training stopped "
                        f"there: --lr {config.lr:g} is likely too high, or the features too large "
                        f"(check the MFCCs of --data)")
    return figures


def fit(net, splits, config, on_best=None, log=print):
    """Train with early stopping on the validation loss; return (history, best, stop): Ctrl-C,
    SIGTERM or a loss that is not finite after the first epoch ends training, keeping the best
    weights. on_best saves them."""
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history, best = {key: [] for key in HISTORY_KEYS}, None
    try:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            log(f"Epoch {epoch}/{config.epochs}")
            figures = run_epoch(net, optimizer, splits, config, generator, epoch)
            for key, value in zip(HISTORY_KEYS, figures):
                history[key].append(value)
            log("  Train Loss: {:.4f}, Train Acc: {:.2%}\n  Val Loss: {:.4f}, Val Acc: {:.2%}"
                .format(*figures))
            if best is None or figures[2] < best["val_loss"]:
                # A deep copy: state_dict() alone shares its tensors with the live model.
                record = {"epoch": epoch, "val_loss": figures[2], "val_accuracy": figures[3],
                          "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}
                if on_best:  # saved first: an interrupt in the save keeps the previous best
                    on_best(net, optimizer, record)
                best = record
                if on_best:
                    log(f"  ✓ Saved best model (val_acc: {figures[3]:.2%})")
            log(f"  Epoch time: {time.perf_counter() - started:.2f}s\n{RULE}")
            if epoch - best["epoch"] >= config.patience:
                log(f"Early stopping: no better validation loss for {config.patience} epochs "
                    f"(best epoch {best['epoch']}, val_loss {best['val_loss']:.4f})")
                break
    except (KeyboardInterrupt, NotFinite) as exc:
        if best is None:
            raise
        return history, best, exc
    return history, best, None


def scores(y_true, y_pred, mapping, matrix=None):
    """Accuracy, per genre too, of labels or their confusion matrix (rows: true genre)."""
    if matrix is None:  # numpy counts it: importing scikit-learn would add a second to every run
        k = len(mapping)
        matrix = np.bincount(np.asarray(y_true) * k + y_pred, minlength=k * k).reshape(k, k)
    correct, total = np.diag(matrix), matrix.sum(axis=1)
    return {"accuracy": float(correct.sum() / max(total.sum(), 1)), "correct": int(correct.sum()),
            "total": int(total.sum()), "confusion_matrix": matrix.tolist(), "per_genre": {
                genre: {"accuracy": float(right / n) if n else None, "correct": int(right),
                        "total": int(n)} for genre, right, n in zip(mapping, correct, total)}}


def test(net, splits, data):
    """Test loss and scores per segment, and per track (the vote of its segments) if known."""
    loss, _, logits = evaluate(net, *splits["test"])
    probabilities = torch.softmax(logits, dim=1).cpu().numpy()
    y_true = splits["test"][1].cpu().numpy()
    metrics = {"loss": loss, **scores(y_true, probabilities.argmax(axis=1), data.mapping),
               "split_kind": data.split_kind}
    rows = {}  # track id -> its segments' rows
    for row, track in enumerate(data.tracks_test):
        rows.setdefault(track, []).append(row)
    if rows:
        voted = [vote(probabilities[members])[0] for members in rows.values()]
        truth = [y_true[members[0]] for members in rows.values()]
        metrics["track_level"] = {**scores(truth, voted, data.mapping), "votes": {
            track: data.mapping[label] for track, label in zip(rows, voted)}}
    return metrics


def print_genres(per_genre):
    """One `genre: XX.XX% (k/n correct)` line per genre."""
    for genre, score in per_genre.items():
        accuracy = "n/a" if score["accuracy"] is None else f"{score['accuracy']:.2%}"
        print(f"  {genre}: {accuracy} ({score['correct']}/{score['total']} correct)")


def print_test_results(metrics):
    """Test loss and accuracy, per genre, and the track-level vote when tracks are known."""
    print(f"\nTest Results:\n  Loss: {metrics['loss']:.4f}\n  Accuracy: {metrics['accuracy']:.2%}")
    print(f"  Split: by {metrics['split_kind']}" + (" (a test track's other segments may be in "
          "training: optimistic)" if metrics["split_kind"] == "segment" else ""))
    print("\nPer-genre accuracy:")
    print_genres(metrics["per_genre"])
    tracks = metrics.get("track_level")
    if tracks:
        print(f"\nTrack-level accuracy (majority vote of each track's segments): "
              f"{tracks['accuracy']:.2%} ({tracks['correct']}/{tracks['total']} tracks)")
        print_genres(tracks["per_genre"])


def write_json(obj, path):
    """Write one of the run's JSON files atomically; never NaN, which is not JSON."""
    check_replaceable(path, "--model-dir", "a file", is_ours)
    with atomic_write(path, "w", "--model-dir") as handle:
        json.dump(obj, handle, indent=2, allow_nan=False)
    return path


def card(data, config):
    """What the run's checkpoints hold besides the weights (see model.py)."""
    librosa = None if data.features_assumed else next(  # extract.py used it, if installed here
        (dist.version for dist in importlib.metadata.distributions(name="librosa")), None)
    channels, height, width = map(int, data.x_train.shape[1:])
    return {"num_channels": channels, "height": height, "width": width,
            "num_classes": len(data.mapping), "mapping": list(data.mapping),
            "norm_min": float(data.norm_min), "norm_max": float(data.norm_max),
            "features": data.features, "features_assumed": data.features_assumed,
            "train_config": dataclasses.asdict(config), "source_sha256": data.source_sha256,
            "split": {**dataclasses.asdict(data.split), "split_kind": data.split_kind},
            "versions": {**model.versions(), "librosa": librosa},
            "trained_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def describe_replaced(path):
    """Say which model this run replaces: its test accuracy and when it was trained."""
    with contextlib.suppress(DataError):  # none there (or an empty file): nothing to say
        old = model.read_checkpoint(path)
        when = old.get("trained_at") or datetime.datetime.fromtimestamp(
            path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
        accuracy = old.get("test_accuracy")
        figure = f"test accuracy {accuracy:.2%}" if isinstance(accuracy, float) else "untested"
        print(f"Replacing the model in {path.parent} ({figure}, trained {when}) when it saves")


def save_run(net, data, info, history, metrics, folder):
    """Write the final checkpoint (test figures into the best one too), JSON files and ONNX."""
    tested = {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"],
              "track_test_accuracy": metrics.get("track_level", {}).get("accuracy")}
    best = torch.load(folder / BEST_MODEL_FILE, weights_only=True, map_location="cpu")
    model.save_checkpoint({**best, **tested}, folder / BEST_MODEL_FILE)
    final = {"model_state_dict": net.state_dict(), "epoch": metrics["epoch"], **info, **tested}
    model.save_checkpoint(final, folder / FINAL_MODEL_FILE)
    paths = [folder / BEST_MODEL_FILE, folder / FINAL_MODEL_FILE,
             write_json(list(data.mapping), folder / MAPPING_FILE),
             write_json(history, folder / plots.HISTORY_FILE),
             write_json(metrics, folder / plots.METRICS_FILE)]
    try:
        model.export_onnx(net, final, folder / ONNX_FILE)
        paths.append(folder / ONNX_FILE)
    except ImportError:
        print(f"note: onnx is not installed, so no {ONNX_FILE}: pip install -r requirements-export"
              f".txt, then python train.py --export-only --model-dir {folder}", file=sys.stderr)
    return paths


def draw(args, folder):
    """Draw the run's pictures, unless --no-plots; without matplotlib, one line says how."""
    try:
        return (plots.draw_cv if args.folds else plots.draw_run)(folder) if args.plots else []
    except ImportError:
        print(f"note: matplotlib is not installed, so no pictures: pip install matplotlib, then "
              f"python train.py --plots-only --model-dir {folder}", file=sys.stderr)
        return []


@contextlib.contextmanager
def locked(folder, names):
    """Refuse foreign files of names now and lock the folder; remove it if created and unused."""
    for name in names:
        check_replaceable(folder / name, "--model-dir", "a file", is_ours)
    created = not folder.exists()
    try:
        with folder_lock(folder, "--model-dir"):
            yield
    finally:
        with contextlib.suppress(OSError):
            if created and [entry.name for entry in folder.iterdir()] == [LOCK_FILE]:
                (folder / LOCK_FILE).unlink()
                folder.rmdir()


def finish(saved, stop=None, kept=""):
    """List the files written; after Ctrl-C, SIGTERM or a loss that is not finite, say why the run
    stopped and what was kept. The exit status: 0, 130 or 143, or 2 for the loss."""
    if saved:
        print("\nSaved:\n" + "\n".join(f"  {path}" for path in saved))
    if isinstance(stop, NotFinite):
        print(f"error: {stop}; {kept}", file=sys.stderr)
        return 2
    if stop:
        print(f"{interrupt_name(stop)} {kept}", file=sys.stderr)
    return interrupt_status(stop) if stop else 0


def print_configuration(data, net, device, config):
    """The input shape, classes, model, parameter count and optimization settings."""
    channels, height, width = data.x_train.shape[1:]
    print(f"\nModel configuration:\n  Input shape: (C={channels}, H={height}, W={width})")
    print(f"  Number of classes: {len(data.mapping)}\n  Classes: {list(data.mapping)}")
    print(f"\n{net}\nTotal parameters: {sum(p.numel() for p in net.parameters()):,}")
    print(f"\nStarting training...\nDevice: {device}, Batch size: {config.batch_size}, "
          f"Learning rate: {config.lr} (fixed)")
    print(f"Weight decay (L2): {config.weight_decay} (helps prevent overfitting)")
    print(f"Max epochs: {config.epochs}, Early stopping patience: {config.patience}\n{RULE}")


def train_once(args, config, device, folder):
    """Train, restore the best weights, test and save; return the exit status."""
    # The split flags given on the command line, by their SplitSettings names.
    explicit = [f.name for f in dataclasses.fields(preprocess.SplitSettings)
                if {"seed": "split_seed"}.get(f.name, f.name) in args.given]

    def save_best(net, optimizer, best):
        model.save_checkpoint({"model_state_dict": net.state_dict(), **info, "epoch": best["epoch"],
                               "optimizer_state_dict": optimizer.state_dict(),
                               "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"]},
                              folder / BEST_MODEL_FILE)

    try:
        data = preprocess.load_data(args.data, args.cache, preprocess.split_settings(args),
                                    args.reprocess, explicit)
        net, splits = setup(data, config, device)
        describe_replaced(folder / FINAL_MODEL_FILE)
        print_configuration(data, net, device, config)
        info = card(data, config)
        history, best, stop = fit(net, splits, config, on_best=save_best)
    except KeyboardInterrupt as exc:
        return finish([], exc, "before the first epoch ended: nothing was saved.")
    net.load_state_dict(best["state"])
    print(f"Restored the best weights (epoch {best['epoch']}, val_loss {best['val_loss']:.4f}, "
          f"val_acc {best['val_accuracy']:.2%})")
    metrics = {**test(net, splits, data), "epoch": best["epoch"],
               "interrupted": isinstance(stop, KeyboardInterrupt),
               "loss_not_finite": isinstance(stop, NotFinite),
               "early_stopped": not stop and len(history["loss"]) < config.epochs}
    print_test_results(metrics)
    try:
        saved = save_run(net, data, info, history, metrics, folder) + draw(args, folder)
    except KeyboardInterrupt as exc:  # each file is whole, but the set may mix two runs
        return finish([], exc, f"while saving: {folder} may hold files of two runs; train again")
    kept = f"the best model (epoch {best['epoch']}) was tested and saved."
    if not isinstance(stop, NotFinite):  # which epoch Ctrl-C or SIGTERM stopped
        kept = f"in epoch {len(history['loss']) + 1}: {kept}"
    return finish(saved, stop, kept)


def fold_tests(dataset, folds, seed):
    """The test rows of each fold: whole tracks (StratifiedGroupKFold) when tracks are known,
    else segments (StratifiedKFold); stratified by genre and shuffled with seed."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold  # here: see scores

    y, units = dataset.y, np.arange(len(dataset.y)) if dataset.tracks is None else dataset.tracks
    sizes = [len(np.unique(units[y == label])) for label in range(len(dataset.mapping))]
    if folds > min(sizes):
        raise DataError(f"--folds {folds}: {dataset.mapping[int(np.argmin(sizes))]!r} has only "
                        f"{min(sizes)} {'segments' if dataset.tracks is None else 'tracks'}: pass "
                        f"--folds {min(sizes)} or fewer")
    splitter = StratifiedKFold if dataset.tracks is None else StratifiedGroupKFold
    kfold = splitter(folds, shuffle=True, random_state=seed)
    return [test_rows for _, test_rows in kfold.split(y, y, groups=dataset.tracks)]


def run_fold(dataset, kind, test_rows, settings, config, device):
    """Train on the other folds (less --val-split of all data), test on this one."""
    rest = np.setdiff1d(np.arange(len(dataset.y)), test_rows)
    train_rows, val_rows = preprocess.split_train_val(dataset, kind, rest, settings.val_split,
                                                      settings.seed)
    data = preprocess.prepare(dataset, kind, (train_rows, val_rows, test_rows), settings)
    net, splits = setup(data, config, device)
    _, best, stop = fit(net, splits, config, log=lambda text: None)
    if stop:
        raise stop
    net.load_state_dict(best["state"])
    metrics = test(net, splits, data)
    tracks = metrics.get("track_level", {})
    return metrics, {"test_tracks": sorted(tracks.get("votes", {})) or None, "test_segments":
                     len(test_rows), "accuracy": metrics["accuracy"], "track_accuracy":
                     tracks.get("accuracy"), "best_epoch": best["epoch"]}


def summarize_cv(args, settings, kind, runs, tested, mapping):
    """Print and return cv_metrics.json: the folds, mean ± sample std, and the scores pooled over
    the folds (their test confusion matrices summed: every segment and track counted once)."""
    def spread(key):
        values = [run[key] for run in runs]
        return {"mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}

    def pooled(matrices):
        return scores(None, None, mapping, sum(np.array(matrix) for matrix in matrices))

    segments, by_track = pooled(m["confusion_matrix"] for m in tested), kind == "track"
    summary = {"folds": args.folds, "split_by": kind, "seed": args.seed,
               "split_seed": settings.seed, "incomplete": len(runs) < args.folds, "runs": runs,
               "accuracy": spread("accuracy"),
               "track_accuracy": spread("track_accuracy") if by_track else None,
               "per_genre": segments["per_genre"], "confusion_matrix": segments["confusion_matrix"],
               "track_level": pooled(m["track_level"]["confusion_matrix"] for m in tested)
               if by_track else None}
    print(f"\nCross-validation, {len(runs)} of {args.folds} folds by {kind} (mean ± sample "
          f"standard deviation over the folds):")
    for unit, figure in (("segment", summary["accuracy"]), ("track", summary["track_accuracy"])):
        if figure:
            std = "n/a" if figure["std"] is None else f"{figure['std']:.2%}"
            print(f"  Accuracy by {unit}: {figure['mean']:.2%} ± {std}")
    print("\nPer-genre accuracy (all folds; each segment tested once):")
    print_genres(summary["per_genre"])
    print("\nConfusion matrix pooled over the folds (rows: true genre, columns: predicted):")
    for genre, row in zip(mapping, summary["confusion_matrix"]):
        print(f"  {genre:>{max(map(len, mapping))}} " + " ".join(f"{n:4d}" for n in row))
    return summary


def cross_validate(args, config, device, folder):
    """Train and test one model per fold; write cv_metrics.json; return the exit status."""
    settings, runs, tested, stop = preprocess.split_settings(args), [], [], None
    try:
        dataset = preprocess.load_dataset(args.data)
        kind = "segment" if dataset.tracks is None else "track"
        tests = fold_tests(dataset, args.folds, settings.seed)
        print(f"\nCross-validation: {args.folds} folds by {kind} (--split-seed {settings.seed}), "
              f"each model trained with --seed {config.seed}" + ("\nNote: data.json has no "
              "tracks, so the figures are optimistic." if kind == "segment" else ""))
        for fold, test_rows in enumerate(tests, 1):
            started = time.perf_counter()
            metrics, run = run_fold(dataset, kind, test_rows, settings, config, device)
            runs.append({"fold": fold, **run})
            tested.append(metrics)
            print(f"Fold {fold}/{args.folds}: accuracy {run['accuracy']:.2%} by segment" + (
                f", {run['track_accuracy']:.2%} by track ({len(run['test_tracks'])} tracks)"
                if run["test_tracks"] else "") + f", best epoch {run['best_epoch']}, "
                f"{time.perf_counter() - started:.1f} s")
    except KeyboardInterrupt as exc:
        if not runs:
            return finish([], exc, "before the first fold ended: nothing was saved.")
        stop = exc
    summary = summarize_cv(args, settings, kind, runs, tested, dataset.mapping)
    saved = [write_json(summary, folder / plots.CV_METRICS_FILE)] + draw(args, folder)
    return finish(saved, stop, f"after {len(runs)} of {args.folds} folds: those were saved, "
                               f"marked incomplete.")


def build_parser():
    """The command-line parser: the constants above as flags."""
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, description=(
        "Train the CNN music-genre classifier on MFCC segments and test it per genre."))
    add = parser.add_argument
    add("--data", default=preprocess.JSON_PATH, help="input: the segments extract.py wrote")
    add("--cache", default=preprocess.PREPROCESSED_DATA_PATH, help="preprocessed cache of --data")
    add("--reprocess", action="store_true", help="rebuild the cache first")
    add("--model-dir", default=MODEL_SAVE_PATH, help="where models, metrics and pictures go")
    add("--epochs", type=at_least(int, 1), default=EPOCHS, help="maximum epochs")
    add("--batch-size", type=at_least(int, 2), default=BATCH_SIZE, help="training batch size")
    add("--lr", type=at_least(float, 0, strict=True), default=LEARNING_RATE, help="learning rate")
    add("--weight-decay", type=at_least(float, 0, maximum=1), default=WEIGHT_DECAY,
        help="L2 weight decay")
    add("--grad-clip", type=at_least(float, 0, True), default=GRADIENT_CLIP, help="max grad norm")
    add("--patience", type=at_least(int, 1), default=EARLY_STOPPING_PATIENCE,
        help="epochs without a better validation loss before stopping")
    add("--seed", type=at_least(int, 0, maximum=2**32 - 1), default=SEED,
        help="seed of weights, dropout, shuffling")
    add("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    add("--bn-stats", choices=("auto", "precise", "running"), default=BN_STATS,
        help=f"batch-norm statistics to validate with: recomputed over the training split "
             f"(precise), running averages, or auto: precise below {BN_STATS_MIN_BATCHES} "
             f"batches an epoch")
    preprocess.add_split_arguments(parser)
    add("--folds", type=at_least(int, 2), default=FOLDS, metavar="K",
        help=f"K-fold cross-validation instead: K models, each tested on one fold (by track, "
             f"stratified by genre), reported as mean ± std in {plots.CV_METRICS_FILE}; reads "
             f"--data itself, so it writes no checkpoints and leaves the --cache file alone")
    add("--demo", action="store_true", help="train on generated demo data, all in demo/")
    add("--no-plots", dest="plots", action="store_false", default=MAKE_PLOTS, help="no pictures")
    add("--plots-only", action="store_true", help="only redraw the pictures of --model-dir")
    add("--export-only", action="store_true", help=f"only write {ONNX_FILE} to --model-dir")
    return parser


def parse_args(argv=None):
    """The command line, args.given naming the options set; DataError for clashing options."""
    parser = build_parser()
    args = parser.parse_args(argv)
    parser.set_defaults(**dict.fromkeys(vars(args)))  # parsed again: what is not None was given
    args.given = {key for key, value in vars(parser.parse_args(argv)).items() if value is not None}
    jobs = [flag for flag in ("--plots-only", "--export-only", "--folds")
            if getattr(args, flag[2:].replace("-", "_"))]
    clash = [f"--{key.replace('_', '-')}" for key in CV_CONFLICTS if key in args.given]
    if len(jobs) > 1 or (args.folds and clash):
        why = " (--folds splits --data itself, without the cache)" if args.folds else ""
        raise DataError(f"{' and '.join(jobs[:1] + (jobs[1:] or clash))} do not go together: "
                        f"drop one{why}")
    if args.demo:
        if args.given & {"data", "cache", "model_dir"}:
            raise DataError("--demo uses its own files in demo/: drop --data, --cache and "
                            "--model-dir")
        args.data, args.cache = preprocess.DEMO_JSON_PATH, preprocess.DEMO_CACHE_PATH
        args.model_dir = os.path.join(preprocess.DEMO_DIR, MODEL_SAVE_PATH)
    return args


def only(args, folder):
    """--plots-only and --export-only: redo one job for an existing model folder."""
    if not folder.is_dir():
        raise DataError(f"--model-dir {folder} is not a folder: pass one written by train.py")
    with folder_lock(folder, "--model-dir"):
        try:
            if args.export_only:
                net, checkpoint = model.load_model(input_file(
                    folder / FINAL_MODEL_FILE, "--model-dir", "train a model there first"))
                model.export_onnx(net, checkpoint, folder / ONNX_FILE)
                return finish([folder / ONNX_FILE])
            saved, cv = [], (folder / plots.CV_METRICS_FILE).exists()
            if cv:
                saved += plots.draw_cv(folder)
            if not cv or (folder / plots.METRICS_FILE).exists():  # a folder may hold both
                saved += plots.draw_run(folder)
            return finish(saved)
        except ImportError as exc:
            raise DataError(f"{exc.name} is not installed: pip install " + (
                "-r requirements-export.txt" if args.export_only else "matplotlib")) from None


def pick_device(name):
    """The torch device that --device names; DataError when this machine has no such device."""
    device = name.replace("auto", "cuda" if torch.cuda.is_available() else "cpu")
    cuda = re.fullmatch(r"cuda(:\d+)?", device)
    if device != "cpu" and not (cuda and int(device[5:] or 0) < torch.cuda.device_count()):
        raise DataError(f"--device {name}: not cpu, nor one of the {torch.cuda.device_count()} "
                        f"CUDA devices here: use cpu or auto")
    return torch.device(device)


def main(argv=None) -> int:
    """Train (or cross-validate, redraw, export); exit status 2 on bad input, 130/143 if stopped."""
    try:
        args = parse_args(argv)
        folder = Path(args.model_dir)
        if args.plots_only or args.export_only:
            return only(args, folder)
        device = pick_device(args.device)
        print("=" * 60 + "\nPyTorch Training Pipeline for Music Genre Classification\n" + "=" * 60)
        print(f"✓ GPU detected: {torch.cuda.get_device_name(device)}" if device.type == "cuda"
              else "⚠ GPU not available, using CPU")
        if args.demo:
            preprocess.ensure_demo_data(args.data)
        config = TrainConfig(**{key: getattr(args, key) for key in TrainConfig.__annotations__})
        with locked(folder, CV_FILES if args.folds else RUN_FILES):
            if args.folds:
                return cross_validate(args, config, device, folder)
            return train_once(args, config, device, folder)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_main(main))
