"""Train the two-block CNN music-genre classifier on preprocessed MFCC segments.

Usage:
    python train.py                       # data.json -> preprocessed_data.npz -> saved_models/
    python train.py --demo                # the same on generated demo data, everything in demo/
    python train.py --epochs 50 --batch-size 32 --device cuda --seed 1
    python train.py --plots-only                  # redraw the pictures of saved_models/

The cache is built (or rebuilt, when data.json or the split settings changed) by preprocess.py.
After training, the best weights by validation loss are restored, tested per genre, and saved with
everything inference needs; `load_model` rebuilds the classifier from `final_model_pytorch.pt`.
Pictures of the run (training curves, confusion matrices) are drawn by plots.py when matplotlib is
installed.
"""
import argparse
import contextlib
import dataclasses
import functools
import importlib.metadata
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

import plots
import preprocess
from common import (DataError, HelpFormatter, UsageError, at_least, atomic_write,
                    check_output_folder, describe_write_error, device_name, file_path, folder_lock,
                    run_command, seed_value, write_json)

MODEL_SAVE_PATH = "saved_models"  # folder for checkpoints, genre mapping, history and metrics
EPOCHS = 30  # maximum training epochs
BATCH_SIZE = 64  # mini-batch size for training
LEARNING_RATE = 0.0008  # fixed Adam learning rate
WEIGHT_DECAY = 2e-4  # L2 regularization, Adam's weight_decay
GRADIENT_CLIP = 1.0  # max global gradient norm, clipped at every step
EARLY_STOPPING_PATIENCE = 8  # stop after this many epochs without a better validation loss
SEED = 42  # seeds Python, NumPy and torch (the split has its own, preprocess.RANDOM_STATE)
CONV_DROPOUT = 0.35  # Dropout2d after each convolutional block
FC_DROPOUT = 0.7  # Dropout before the output layer
EVAL_BATCH_CPU = 64  # evaluation batch on CPU: small batches stay in cache (4x faster than 1024)
EVAL_BATCH_CUDA = 4096  # evaluation batch on GPU: few, large kernel launches
MAKE_PLOTS = True  # draw training_curves.png and confusion_matrix.png after testing
BN_STATS = "auto"  # batch-norm statistics for validation: auto, precise (recomputed) or running
# auto recomputes them below this many batches an epoch: at momentum 0.1 the running averages still
# hold 0.9**k of older weights' statistics after k batches, 0.5 % at 50, half at 7.
BN_STATS_MIN_BATCHES = 50
SINGLE_GENRE_SHARE = 0.9  # warn when the tested model calls at least this share of segments one genre

BEST_MODEL_FILE = "best_model_pytorch.pt"
FINAL_MODEL_FILE = "final_model_pytorch.pt"
MAPPING_FILE = "genre_mapping.json"
HISTORY_FILE = plots.HISTORY_FILE  # plots.py draws the run from these two files
METRICS_FILE = plots.METRICS_FILE
LOCK_FILE = ".train.lock"  # exists while a run writes to the folder; names its pid, host, start
PICTURE_FILES = (plots.CURVES_FILE, plots.CONFUSION_FILE)  # drawn after testing (or --plots-only)
MODEL_DIR_FILES = (BEST_MODEL_FILE, FINAL_MODEL_FILE, MAPPING_FILE, HISTORY_FILE, METRICS_FILE,
                   LOCK_FILE, *PICTURE_FILES)  # the only names train.py ever writes in --model-dir
RULE = "-" * 60
BN_STATS_CHOICES = ("auto", "precise", "running")


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


class GenreClassifier(nn.Module):
    """Two conv blocks (conv, max-pool, ReLU, batch norm, spatial dropout) and a dense head."""

    def __init__(self, num_channels, height, width, num_classes):
        super().__init__()
        if height < 4 or width < 4:
            raise ValueError(
                f"input of {height}x{width} is too small for two 2x2 poolings: "
                f"segments need at least 4 frames and 4 coefficients"
            )
        self.conv1 = nn.Conv2d(num_channels, 32, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(32)
        self.drop1 = nn.Dropout2d(CONV_DROPOUT)
        self.conv2 = nn.Conv2d(32, 48, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.bn2 = nn.BatchNorm2d(48)
        self.drop2 = nn.Dropout2d(CONV_DROPOUT)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(48 * (height // 4) * (width // 4), 64)
        self.bn3 = nn.BatchNorm1d(64)
        self.drop3 = nn.Dropout(FC_DROPOUT)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        """Logits of shape (N, num_classes) for input of shape (N, C, H, W)."""
        # Max-pooling commutes with ReLU (both are monotone), so pooling first gives exactly
        # conv -> ReLU -> pool while applying ReLU to a quarter of the values.
        x = self.drop1(self.bn1(torch.relu(self.pool1(self.conv1(x)))))
        x = self.drop2(self.bn2(torch.relu(self.pool2(self.conv2(x)))))
        x = self.drop3(self.bn3(torch.relu(self.fc1(self.flatten(x)))))
        return self.fc2(x)


# ---------------------------------------------------------------------------------------------
# Setup


def set_seed(seed):
    """Seed every random number generator a run uses."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name):
    """Turn --device (auto, cpu, cuda, cuda:N) into a torch.device that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
        if (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def describe_device(device, requested):
    """One line saying whether training runs on a GPU, and which."""
    if device.type == "cuda":
        return f"✓ GPU detected: {torch.cuda.get_device_name(device)}"
    if torch.cuda.is_available():
        return f"Using CPU (--device {requested}) although a GPU is available"
    return "⚠ GPU not available, using CPU"


def build_model(data, device):
    """A GenreClassifier shaped for the data, on device, in the channels-last layout."""
    if len(data.y_train) < 2:
        raise DataError(f"the training split has {len(data.y_train)} segment(s): add data")
    channels, height, width = data.x_train.shape[1:]
    try:
        model = GenreClassifier(channels, height, width, len(data.mapping))
    except ValueError as exc:
        raise DataError(f"cannot build the model: {exc}") from None
    # Channels-last lets the CPU and GPU convolution kernels skip layout conversions.
    return model.to(device, memory_format=torch.channels_last)


def to_device(data, device):
    """Move the splits onto the device once, so no batch is copied from the host."""
    return {
        name: (getattr(data, f"x_{name}").to(device).contiguous(memory_format=torch.channels_last),
               getattr(data, f"y_{name}").to(device))
        for name in preprocess.SPLIT_NAMES
    }


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def train_one_epoch(model, optimizer, x, y, config, generator, show_progress=False):
    """One pass over shuffled mini-batches; returns the mean loss and accuracy per segment."""
    model.train()
    order = torch.randperm(len(y), generator=generator).to(y.device)
    loss_sum = torch.zeros((), device=y.device)
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    batches, seen = batch_bounds(len(y), config.batch_size), 0
    for step, (start, stop) in enumerate(batches, 1):
        rows = order[start:stop]
        logits = model(x[rows])
        loss = F.cross_entropy(logits, y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        # Accumulating on the device avoids a host synchronisation at every step.
        loss_sum += loss.detach() * len(rows)
        seen += len(rows)
        correct += (logits.argmax(dim=1) == y[rows]).sum()
        if show_progress:
            print(f"\r  batch {step}/{len(batches)}", end="", flush=True)
    if show_progress:
        print("\r" + " " * 30 + "\r", end="", flush=True)
    return loss_sum.item() / seen, correct.item() / seen


def batch_bounds(n, batch_size):
    """(start, stop) of each training batch of n rows; a lone last row joins the batch before.

    Batch norm cannot normalize a batch of one sample in training mode, and dropping that sample
    would leave one segment out of every epoch.
    """
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


@torch.no_grad()
def predict(model, x, batch_size=None):
    """Logits for every row of x, in evaluation mode."""
    model.eval()
    batch_size = batch_size or (EVAL_BATCH_CUDA if x.device.type == "cuda" else EVAL_BATCH_CPU)
    return torch.cat([model(x[start : start + batch_size]) for start in range(0, len(x), batch_size)])


def evaluate(model, x, y, batch_size=None):
    """Mean loss per segment, accuracy and logits of the model on (x, y)."""
    logits = predict(model, x, batch_size)
    loss = F.cross_entropy(logits, y, reduction="sum").item() / len(y)
    accuracy = (logits.argmax(dim=1) == y).sum().item() / len(y)
    return loss, accuracy, logits


def batches_per_epoch(num_samples, batch_size):
    """How many training steps an epoch of num_samples takes."""
    return len(batch_bounds(num_samples, batch_size))


def recomputes_bn_stats(config, num_batches):
    """Whether validation needs batch-norm statistics recomputed with the current weights."""
    if config.bn_stats == "auto":
        return num_batches < BN_STATS_MIN_BATCHES
    return config.bn_stats == "precise"


def describe_bn_stats(config, num_batches):
    """The one line that says why the batch-norm statistics are recomputed."""
    why = (f"{num_batches} batches per epoch < {BN_STATS_MIN_BATCHES}, too few for the running "
           f"averages to settle" if config.bn_stats == "auto" else "--bn-stats precise")
    return f"Batch-norm statistics: recomputed over the training split before each validation ({why})"


def recompute_bn_stats(model, x, batch_size):
    """Replace the running batch-norm statistics by the training split's under the current weights.

    update_bn resets them and averages every batch equally (momentum None) in one forward pass in
    train mode. Dropout stays on, with the training batch size, because that is how the running
    averages are collected: the result estimates the same statistics without their lag, so it
    agrees with them wherever they have settled and `auto` changes nothing on large data sets.
    """
    # n // batch_size nearly equal chunks: none has a single sample, which batch norm refuses.
    chunks = x.tensor_split(max(1, len(x) // batch_size))
    # Dropout's draws come from a forked generator, so the weights follow exactly the trajectory
    # they would without this pass: only what validation sees changes.
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        update_bn(chunks, model)


def validate(model, splits, batch_size, recompute):
    """Validation loss and accuracy, after recomputing the batch-norm statistics if asked."""
    if recompute:
        recompute_bn_stats(model, splits["train"][0], batch_size)
    val_loss, val_acc, _ = evaluate(model, *splits["val"])
    return val_loss, val_acc


def clone_state(model):
    """A deep copy of the weights: state_dict().copy() would share tensors with the live model."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def model_metadata(data, config):
    """What it takes to rebuild the model and prepare new inputs the same way, and how it was made."""
    channels, height, width = data.x_train.shape[1:]
    return {
        "num_channels": int(channels), "height": int(height), "width": int(width),
        "num_classes": len(data.mapping), "mapping": list(data.mapping),
        "norm_min": data.norm_min, "norm_max": data.norm_max,
        "train_config": dataclasses.asdict(config),
        "split": {**dataclasses.asdict(data.split), "split_kind": data.split_kind},
        "source_sha256": data.source_sha256,
        "versions": library_versions(data),
        "features": data.features, "features_assumed": data.features_assumed,
    }


def library_versions(data):
    """Versions of the libraries the run depended on; librosa's when the data has a recipe."""
    versions = {"python": platform.python_version(), "torch": str(torch.__version__),
                "numpy": str(np.__version__), "librosa": None}
    if not data.features_assumed:  # made by extract.py, the only step that uses librosa
        versions["librosa"] = installed_version("librosa")
    return versions


@functools.cache  # read once a run, not at every better epoch's checkpoint
def installed_version(package):
    """The installed version of package, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def summarize_test(metrics):
    """The test figures a checkpoint carries, so that a model file says how good it is."""
    track_level = metrics.get("track_level")
    return {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"],
            "track_test_accuracy": track_level["accuracy"] if track_level else None}


def save_checkpoint(payload, path):
    """torch.save a plain dict atomically."""
    with atomic_write(path, flag="--model-dir") as handle:
        torch.save(payload, handle)


def save_best(model, optimizer, record, data, config, path):
    """Write the best-so-far checkpoint: weights, optimizer state, epoch, metrics, metadata."""
    save_checkpoint({
        "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
        "epoch": record["epoch"], "val_loss": record["val_loss"],
        "val_accuracy": record["val_accuracy"], **model_metadata(data, config),
    }, path)


def add_test_results(path, metrics):
    """Rewrite the best checkpoint with the test figures, which exist only once it was tested."""
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    save_checkpoint({**checkpoint, **summarize_test(metrics)}, path)


def keep_if_best(best, record, model, optimizer, data, config, model_dir):
    """Return the new best record, checkpointed, if this epoch beat the validation loss of best."""
    if best is not None and not record["val_loss"] < best["val_loss"]:
        return best
    best = {**record, "state": clone_state(model)}
    save_best(model, optimizer, best, data, config, Path(model_dir) / BEST_MODEL_FILE)
    print(f"  ✓ Saved best model (val_acc: {record['val_accuracy']:.2%})")
    return best


def fit(model, splits, data, config, model_dir, show_progress=False):
    """Train with early stopping; return (history, best record, interrupted?)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best = None
    num_batches = batches_per_epoch(len(splits["train"][1]), config.batch_size)
    recompute = recomputes_bn_stats(config, num_batches)
    if recompute:
        print(describe_bn_stats(config, num_batches))
    try:
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            print(f"Epoch {epoch}/{config.epochs}")
            loss, acc = train_one_epoch(model, optimizer, *splits["train"], config, generator,
                                        show_progress)
            val_loss, val_acc = validate(model, splits, config.batch_size, recompute)
            for key, value in zip(history, (loss, acc, val_loss, val_acc)):
                history[key].append(value)
            print(f"  Train Loss: {loss:.4f}, Train Acc: {acc:.2%}")
            print(f"  Val Loss: {val_loss:.4f}, Val Acc: {val_acc:.2%}")
            record = {"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc}
            best = keep_if_best(best, record, model, optimizer, data, config, model_dir)
            print(f"  Epoch time: {time.perf_counter() - started:.2f}s")
            print(RULE)
            if epoch - best["epoch"] >= config.patience:
                print(f"Early stopping: no better validation loss for {config.patience} epochs "
                      f"(best epoch {best['epoch']}, val_loss {best['val_loss']:.4f})")
                break
    except KeyboardInterrupt:
        print(f"\nTraining interrupted during epoch {len(history['loss']) + 1}.")
        return history, best, True
    return history, best, False


# ---------------------------------------------------------------------------------------------
# Test metrics


def vote_segments(probabilities):
    """Majority vote of segment probabilities (n, classes): (label, vote counts, mean probabilities).

    A tie goes to the tied genre with the higher mean probability.
    """
    counts = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    means = probabilities.mean(axis=0)
    tied = np.flatnonzero(counts == counts.max())
    return int(tied[np.argmax(means[tied])]), counts, means


def rows_by_track(tracks):
    """The row indices of each track, in order of first appearance."""
    tracks = np.asarray(tracks)
    return {track: np.flatnonzero(tracks == track) for track in dict.fromkeys(tracks.tolist())}


def describe_track_votes(probabilities, y_true, tracks, mapping):
    """Per test track: true genre, voted genre, its votes and share of them, its mean probability."""
    described = []
    for track, rows in rows_by_track(tracks).items():
        label, counts, means = vote_segments(probabilities[rows])
        described.append({
            "track": track, "true_genre": mapping[int(y_true[rows[0]])],
            "predicted_genre": mapping[label], "votes": int(counts[label]),
            "segments": len(rows), "vote_share": int(counts[label]) / len(rows),
            "mean_probability": float(means[label]),
        })
    return described


def per_genre_scores(y_true, y_pred, mapping):
    """Accuracy (recall), counts, precision and F1 of every genre, from sklearn.metrics."""
    # Imported here, not at the top: predict.py imports this module for the model alone, and
    # scikit-learn would add a large share of its start-up time.
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(mapping)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    scores = {}
    for label, genre in enumerate(mapping):
        total, correct = int(matrix[label].sum()), int(matrix[label, label])
        scores[genre] = {
            "accuracy": correct / total if total else None, "correct": correct, "total": total,
            "precision": float(precision[label]), "recall": float(recall[label]),
            "f1": float(f1[label]),
        }
    return scores, matrix.tolist()


def track_scores(probabilities, y_true, tracks, mapping):
    """Track-level accuracy, overall and per genre, and every test track's vote."""
    from sklearn.metrics import accuracy_score  # imported here: see per_genre_scores
    described = describe_track_votes(probabilities, y_true, tracks, mapping)
    label_of = {genre: label for label, genre in enumerate(mapping)}
    y_track = np.array([label_of[t["true_genre"]] for t in described])
    y_vote = np.array([label_of[t["predicted_genre"]] for t in described])
    genres, matrix = per_genre_scores(y_track, y_vote, mapping)
    return {
        "accuracy": float(accuracy_score(y_track, y_vote)),
        "correct": int((y_track == y_vote).sum()), "total": len(described),
        "per_genre": {g: {k: s[k] for k in ("accuracy", "correct", "total")} for g, s in genres.items()},
        "confusion_matrix": matrix,
        "tracks": described,
    }


def compute_test_metrics(model, splits, data, best_epoch):
    """Loss, accuracy and per-genre scores of the model on the test split (and per track)."""
    x_test, y_test = splits["test"]
    loss, accuracy, logits = evaluate(model, x_test, y_test)
    probabilities = torch.softmax(logits, dim=1).cpu().numpy()
    y_true, y_pred = y_test.cpu().numpy(), probabilities.argmax(axis=1)
    per_genre, matrix = per_genre_scores(y_true, y_pred, data.mapping)
    metrics = {"loss": loss, "accuracy": accuracy, "epoch": best_epoch,
               "split_kind": data.split_kind, "per_genre": per_genre, "confusion_matrix": matrix}
    if data.tracks_test:
        metrics["track_level"] = track_scores(probabilities, y_true, data.tracks_test, data.mapping)
    return metrics


def print_test_results(metrics):
    """Test loss, accuracy and per-genre accuracy, plus the track-level vote when tracks are known."""
    print("\nTest Results:")
    print(f"  Loss: {metrics['loss']:.4f}")
    print(f"  Accuracy: {metrics['accuracy']:.2%}")
    print("\nPer-genre accuracy:")
    print_genre_lines(metrics["per_genre"])
    tracks = metrics.get("track_level")
    if tracks:
        print(f"\nTrack-level accuracy (majority vote of each track's segments): "
              f"{tracks['accuracy']:.2%} ({tracks['correct']}/{tracks['total']} tracks)")
        print_genre_lines(tracks["per_genre"])
    if metrics["split_kind"] == "segment":
        print("\nNote: split by segment, so segments of one test track may also be in training; "
              "test accuracy is optimistic.")


def single_genre_warning(confusion, mapping):
    """A warning when one genre gets (nearly) every test prediction without being most of the truth."""
    confusion = np.asarray(confusion)
    predicted, actual, total = confusion.sum(axis=0), confusion.sum(axis=1), confusion.sum()
    top = int(predicted.argmax())
    if predicted[top] < SINGLE_GENRE_SHARE * total or actual[top] >= SINGLE_GENRE_SHARE * total:
        return None
    return (f"warning: the tested model predicts {mapping[top]!r} for {predicted[top]} of {total} "
            f"test segments: it has not learned to tell the genres apart; try more data, a "
            f"smaller --batch-size or more --epochs")


def print_genre_lines(per_genre):
    """One `genre: XX.XX% (k/n correct)` line per genre."""
    for genre, score in per_genre.items():
        accuracy = "n/a" if score["accuracy"] is None else f"{score['accuracy']:.2%}"
        print(f"  {genre}: {accuracy} ({score['correct']}/{score['total']} correct)")


# ---------------------------------------------------------------------------------------------
# Artifacts


def save_artifacts(model, data, config, history, metrics, model_dir):
    """Write the final checkpoint, genre mapping, history and test metrics; return their paths.

    The best checkpoint, written during training, gets the test figures too.
    """
    model_dir = Path(model_dir)
    paths = {name: model_dir / name for name in (FINAL_MODEL_FILE, MAPPING_FILE, HISTORY_FILE,
                                                 METRICS_FILE)}
    add_test_results(model_dir / BEST_MODEL_FILE, metrics)
    save_checkpoint({"model_state_dict": model.state_dict(), "epoch": metrics["epoch"],
                     **model_metadata(data, config), **summarize_test(metrics)},
                    paths[FINAL_MODEL_FILE])
    write_json(list(data.mapping), paths[MAPPING_FILE], indent=2, flag="--model-dir")
    write_json(history, paths[HISTORY_FILE], indent=2, flag="--model-dir")
    write_json(metrics, paths[METRICS_FILE], indent=2, flag="--model-dir")
    return [model_dir / BEST_MODEL_FILE] + list(paths.values())


def model_from_checkpoint(checkpoint, device="cpu"):
    """The GenreClassifier a checkpoint dict describes, with its weights, in evaluation mode."""
    model = GenreClassifier(checkpoint["num_channels"], checkpoint["height"], checkpoint["width"],
                            checkpoint["num_classes"])
    model.load_state_dict(checkpoint["model_state_dict"])
    # The layout of training, so that the convolutions compute the same numbers as tested.
    return model.to(device, memory_format=torch.channels_last).eval()


def load_model(path, device="cpu"):
    """Rebuild a GenreClassifier, in evaluation mode, from a saved checkpoint."""
    return model_from_checkpoint(torch.load(path, weights_only=True, map_location=device), device)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser(split_defaults=True):
    """The command-line parser; split_defaults=False leaves absent split flags unset."""
    parser = argparse.ArgumentParser(
        description="Train the CNN music-genre classifier on MFCC segments and test it per genre.",
        formatter_class=HelpFormatter,
    )
    path = file_path
    parser.add_argument("--data", type=path, default=preprocess.JSON_PATH, help="input JSON file")
    parser.add_argument("--cache", type=path, default=preprocess.PREPROCESSED_DATA_PATH,
                        help="preprocessed cache, built from --data when missing or stale")
    parser.add_argument("--reprocess", action="store_true", help="rebuild the cache first")
    parser.add_argument("--model-dir", type=path, default=MODEL_SAVE_PATH,
                        help="where models and metrics go")
    parser.add_argument("--epochs", type=at_least(int, 1), default=EPOCHS, help="maximum epochs")
    # Batch norm cannot train on a batch of one sample.
    parser.add_argument("--batch-size", type=at_least(int, 2), default=BATCH_SIZE,
                        help="training batch size")
    parser.add_argument("--lr", type=at_least(float, 0, strict=True), default=LEARNING_RATE,
                        help="learning rate")
    parser.add_argument("--weight-decay", type=at_least(float, 0), default=WEIGHT_DECAY,
                        help="L2 weight decay")
    parser.add_argument("--grad-clip", type=at_least(float, 0, strict=True), default=GRADIENT_CLIP,
                        help="max gradient norm")
    parser.add_argument("--patience", type=at_least(int, 1), default=EARLY_STOPPING_PATIENCE,
                        help="epochs without a better validation loss before stopping")
    parser.add_argument("--seed", type=seed_value, default=SEED,
                        help="seed of weights, dropout, shuffling")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--bn-stats", choices=BN_STATS_CHOICES, default=BN_STATS,
                        help="batch-norm statistics used to validate: recomputed over the training "
                             f"split (precise), the running averages (running), or auto: precise "
                             f"when an epoch has fewer than {BN_STATS_MIN_BATCHES} batches")
    preprocess.add_split_arguments(parser, split_defaults)
    parser.add_argument("--demo", action="store_true",
                        help=f"train on generated demo data; everything goes to {preprocess.DEMO_DIR}/")
    parser.add_argument("--no-plots", dest="plots", action="store_false", default=MAKE_PLOTS,
                        help=f"skip {plots.CURVES_FILE} and {plots.CONFUSION_FILE}")
    parser.add_argument("--plots-only", action="store_true",
                        help="only redraw the pictures of --model-dir from its JSON files")
    return parser


def parse_args(argv=None):
    """Parse the command line; args.explicit_split names the split settings given in it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit_split = preprocess.given_split_settings(build_parser(split_defaults=False), argv)
    if args.plots_only and not args.plots:
        parser.error("--plots-only draws pictures and --no-plots skips them: drop one")
    preprocess.check_split_arguments(parser, args)
    preprocess.check_distinct(parser, args.data, args.cache, "--cache")
    defaults = (preprocess.JSON_PATH, preprocess.PREPROCESSED_DATA_PATH, MODEL_SAVE_PATH)
    if args.demo and (args.data, args.cache, args.model_dir) != defaults:
        parser.error("--demo uses its own files in demo/; drop --data, --cache and --model-dir")
    return args


def train_config(args):
    """The TrainConfig named on the command line."""
    return TrainConfig(args.epochs, args.batch_size, args.lr, args.weight_decay, args.grad_clip,
                       args.patience, args.seed, bn_stats=args.bn_stats)


def resolve_model_dir(args):
    """The model folder: --model-dir, or the demo's own."""
    return str(Path(preprocess.DEMO_DIR) / MODEL_SAVE_PATH) if args.demo else args.model_dir


def resolve_paths(args):
    """(data.json, cache, model folder) for this run; --demo writes its data set first."""
    if not args.demo:
        return args.data, args.cache, args.model_dir
    json_path, cache_path = preprocess.demo_paths()
    preprocess.ensure_demo_data(json_path)
    return json_path, cache_path, resolve_model_dir(args)


def prepare_model_dir(model_dir):
    """Create the model folder now, so that an unwritable one fails before training, not after."""
    try:
        Path(model_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(describe_write_error(model_dir, exc, "--model-dir")) from None


def print_configuration(data, model, device, config):
    """The input shape, classes, model, parameter count and optimization settings."""
    channels, height, width = data.x_train.shape[1:]
    print("\nModel configuration:")
    print(f"  Input shape: (C={channels}, H={height}, W={width})")
    print(f"  Number of classes: {len(data.mapping)}")
    print(f"  Classes: {data.mapping}")
    print(f"\n{model}")
    print(f"Total parameters: {sum(p.numel() for p in model.parameters()):,}")
    print("\nStarting training...")
    print(f"Device: {device}, Batch size: {config.batch_size}, Learning rate: {config.lr} (fixed)")
    print(f"Weight decay (L2): {config.weight_decay} (helps prevent overfitting)")
    print(f"Max epochs: {config.epochs}, Early stopping patience: {config.patience}")
    print(f"Gradient clipping: max norm {config.grad_clip}")
    print(RULE)


def finish(model, best, splits, data, config, history, model_dir, interrupted):
    """Restore the best weights, test them, save everything and report; return the exit status."""
    if best is None:  # only an interrupt during the first epoch gets here
        print("No epoch finished, so there is no model to test or save.")
        return 130
    model.load_state_dict(best["state"])
    print(f"Restored the best weights (epoch {best['epoch']}, val_loss {best['val_loss']:.4f}, "
          f"val_acc {best['val_accuracy']:.2%})")
    metrics = compute_test_metrics(model, splits, data, best["epoch"])
    metrics["interrupted"] = interrupted
    # Only early stopping ends an uninterrupted run before its last epoch.
    metrics["early_stopped"] = not interrupted and len(history["loss"]) < config.epochs
    print_test_results(metrics)
    warning = single_genre_warning(metrics["confusion_matrix"], data.mapping)
    if warning:
        print(f"\n{warning}", file=sys.stderr)
    print("\nSaved:")
    for path in save_artifacts(model, data, config, history, metrics, model_dir):
        print(f"  {path}")
    return 130 if interrupted else 0


def run(args):
    """Wire the steps together; raises DataError or UsageError on bad input."""
    device = resolve_device(args.device)
    print("=" * 60 + "\nPyTorch Training Pipeline for Music Genre Classification\n" + "=" * 60)
    print(describe_device(device, args.device))
    json_path, cache_path, model_dir = resolve_paths(args)
    # Checked before preprocessing, which can take minutes, so that a wrong or busy folder fails
    # at once; a folder that does not exist yet is created and locked once the data has loaded.
    check_output_folder(model_dir, "--model-dir", MODEL_DIR_FILES)
    with contextlib.ExitStack() as held:
        locked = Path(model_dir).is_dir()
        if locked:
            held.enter_context(folder_lock(model_dir, LOCK_FILE, "--model-dir"))
        data = preprocess.load_data(json_path, cache_path, preprocess.split_settings(args),
                                    reprocess=args.reprocess, explicit=args.explicit_split)
        config = train_config(args)
        set_seed(config.seed)
        model = build_model(data, device)
        prepare_model_dir(model_dir)
        if not locked:
            held.enter_context(folder_lock(model_dir, LOCK_FILE, "--model-dir"))
        return train_and_report(model, data, config, device, model_dir, args.plots)


def train_and_report(model, data, config, device, model_dir, make_plots):
    """Train, test, save and draw; return the exit status."""
    print_configuration(data, model, device, config)
    splits = to_device(data, device)
    history, best, interrupted = fit(model, splits, data, config, model_dir, sys.stdout.isatty())
    status = finish(model, best, splits, data, config, history, model_dir, interrupted)
    if make_plots and best is not None:
        draw_plots(model_dir)
    return status


def draw_plots(model_dir):
    """Draw the run's pictures and list them; without matplotlib, one line says how to get them."""
    try:
        paths = plots.draw_run(model_dir)
    except ImportError:
        print(f"warning: matplotlib is not installed, so no pictures were drawn: pip install "
              f"matplotlib, then python train.py --plots-only --model-dir "
              f"{shlex.quote(str(model_dir))}",
              file=sys.stderr)
        return
    for path in paths:
        print(f"  {path}")


def redraw(model_dir):
    """--plots-only: draw the pictures of an existing model folder, without training."""
    if not Path(model_dir).is_dir():
        raise DataError(f"--model-dir {Path(model_dir).absolute()} is not a folder: pass a model "
                        f"folder written by train.py")
    check_output_folder(model_dir, "--model-dir", PICTURE_FILES)
    with folder_lock(model_dir, LOCK_FILE, "--model-dir"):
        try:
            paths = plots.draw_run(model_dir, "--model-dir")
        except ImportError:
            raise UsageError("--plots-only needs matplotlib: pip install matplotlib") from None
    print("Saved:")
    for path in paths:
        print(f"  {path}")
    return 0


def main(argv=None) -> int:
    """Run training; exit status 2 on bad input, 130 when interrupted."""
    args = parse_args(argv)
    try:
        if args.plots_only:
            return redraw(resolve_model_dir(args))
        return run(args)
    except (DataError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_command(main))
