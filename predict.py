"""Name the genre of songs with a trained model, featurizing them exactly as its training data was.

Usage:
    python predict.py song.mp3 other.wav some_folder/     # folders: their audio files, sorted
    python predict.py --model saved_models/final_model.onnx --json songs/ > genres.json

The model file picks the backend: a checkpoint runs with PyTorch, an ONNX export with onnxruntime
alone (requirements-predict.txt: no PyTorch). Every full segment of a song's first --max-duration
seconds is featurized with the model's MFCC recipe; the segments vote, as in train.py's track test.
In Python: predict.predict_file(predict.load_classifier("final_model.onnx"), "song.mp3")["genre"]
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Annotated, Callable, Optional

import msgspec
import numpy as np

import extract
import features
from common import DataError, HelpFormatter, at_least, input_file, read_head, run_main, vote

MODEL_PATH = "saved_models/final_model_pytorch.pt"  # model used by default: train.py's output
DEVICE = "auto"  # where a checkpoint runs: auto (CUDA when available), cpu, cuda or cuda:N
TOP_GENRES = 3  # genres listed per file, by votes then mean probability
MAX_DURATION = 600  # seconds analysed per song: memory stays bounded whatever its length
WORKERS = extract.WORKERS  # processes that decode and analyse files in parallel
ONNX_CARD_KEY = "genre_classifier"  # model.ONNX_CARD_KEY, repeated: model.py imports torch
TRAIN_HINT = ("train one with `python train.py` (no music at hand? the README's demo makes "
              "some with `python extract.py --demo`)")
PROTOCOLS = {"segment": " (split by segment, so optimistic)", "track": " (split by track)",
             "filtered": " (fault-filtered track split)"}  # how the test accuracy was measured
FIGURES = {"test_accuracy": "segments", "track_test_accuracy": "tracks"}  # the card's test results


class Card(msgspec.Struct):
    """The entries of a model's card that predict.py reads, with their types."""
    mapping: list[str]
    num_classes: int
    norm_min: float
    norm_max: float
    features: Optional[dict] = None  # None in models older than stored recipes: the tutorial's
    features_assumed: bool = False
    test_accuracy: Optional[Annotated[float, msgspec.Meta(ge=0, le=1)]] = None
    track_test_accuracy: Optional[Annotated[float, msgspec.Meta(ge=0, le=1)]] = None
    split: dict = {}


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A trained model, its card, and what it takes to featurize new audio as its training data."""
    path: str
    card: dict
    mapping: list
    features: dict
    backend: str  # "torch" or "onnx"
    run: Callable  # raw segments (N, C, H, W) float32 -> probabilities (N, genres) numpy


def open_onnx(path):
    """(card, input shape, run) of an ONNX model exported by train.py, run by onnxruntime."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # a song is a small batch; the analysis needs the cores
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        card = json.loads(session.get_modelmeta().custom_metadata_map[ONNX_CARD_KEY])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no public base class
        why = "it has no genre card" if isinstance(exc, KeyError) else features.first_line(exc)
        raise DataError(f"{path} is not an ONNX model exported by train.py ({why}): pass one "
                        f"with --model") from None
    source = session.get_inputs()[0]
    return card, source.shape[1:], lambda x: session.run(None, {source.name: x})[0]


def open_checkpoint(path, device):
    """(card, input shape, run) of a checkpoint saved by train.py, run by PyTorch."""
    import torch  # here only: an ONNX model runs without it
    import model
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:  # an unknown device, or one absent here
        raise DataError(f"--device {device}: {features.first_line(exc)}: use auto or cpu") from None
    net, checkpoint = model.load_model(path, device)
    deployed = model.Deployed(net, checkpoint["norm_min"], checkpoint["norm_max"]).to(device)
    run = torch.no_grad()(lambda x: deployed(torch.from_numpy(x).to(device)).cpu().numpy())
    return model.card(checkpoint), [checkpoint[k] for k in ("num_channels", "height", "width")], run


def load_classifier(path=MODEL_PATH, device=DEVICE):
    """Load a model file: .onnx (or ONNX content) runs with onnxruntime, anything else in torch."""
    path = str(input_file(path, "--model", TRAIN_HINT))
    onnx = path.lower().endswith(".onnx") or read_head(path)[:1] == b"\x08"  # protobuf field 1
    card, shape, run = open_onnx(path) if onnx else open_checkpoint(path, device)
    try:  # the card, checked in one place for both backends
        typed = msgspec.convert(card, Card)
        if len(typed.mapping) != typed.num_classes:
            raise msgspec.ValidationError(f"{len(typed.mapping)} genres for "
                                          f"{typed.num_classes} outputs")
    except msgspec.ValidationError as exc:
        raise DataError(f"{path} is not a genre model written by train.py, or a damaged one "
                        f"(its card: {exc}): pass one with --model") from None
    recipe = features.TUTORIAL_FEATURES if typed.features is None else typed.features
    features.check_shape(tuple(shape), features.check_features(recipe, f"{path}: 'features'"), path)
    return Classifier(path, card, typed.mapping, recipe, "onnx" if onnx else "torch", run)


def describe_classifier(clf):
    """One line: model file, genres, recipe, test accuracy."""
    card, recipe = clf.card, features.describe(clf.features)
    if card.get("features") is None or card.get("features_assumed"):
        recipe += " [the tutorial's, assumed: its training data recorded none]"
    figures = [f"{card[k]:.1%} of {unit}" for k, unit in FIGURES.items() if card.get(k) is not None]
    split = str(card.get("split", {}).get("split_kind"))
    accuracy = ", ".join(figures) + PROTOCOLS.get(split, "") if figures else "not recorded"
    return (f"Model {clf.path}: {len(clf.mapping)} genres ({', '.join(clf.mapping)}); recipe "
            f"{recipe}; test accuracy {accuracy}")


def classify(clf, mfccs):
    """The vote of a song's MFCC segments (n, frames, n_mfcc): genre, segments, top genres."""
    probabilities = np.asarray(clf.run(np.ascontiguousarray(mfccs[:, None], np.float32)))
    if len(probabilities) == 0 or not np.isfinite(probabilities).all():
        raise DataError("no segments, or probabilities that are not finite numbers")
    label, votes, means = vote(probabilities)
    # Ranked as the vote decides: votes first, then mean probability, so the winner comes first.
    ranked = sorted(range(len(clf.mapping)), key=lambda g: (votes[g], means[g]), reverse=True)
    top = [{"genre": clf.mapping[g], "votes": int(votes[g]),
            "vote_share": float(votes[g] / len(mfccs)),
            "mean_probability": float(means[g])} for g in ranked[:TOP_GENRES]]
    return {"genre": clf.mapping[label], "segments": len(mfccs), "top": top,
            "segment_genres": [clf.mapping[g] for g in probabilities.argmax(axis=1)]}


def predict_files(clf, paths, workers=1, max_duration=MAX_DURATION):
    """Yield {"file", "genre", "segments", "top", "segment_genres", "truncated"}, or {"file",
    "error"}, per path in order. One segment more is analysed: it shows that a song is longer."""
    f = clf.features
    limit = max(1, int(max_duration * f["sample_rate"]) // f["segment_samples"])
    seconds = (limit + 1) * f["segment_samples"] / f["sample_rate"]
    analysed = extract.analyse_all(paths, f, workers, seconds, limit + 1)
    for path, (mfccs, reason) in zip(paths, analysed, strict=True):
        name = extract.readable(path)
        if not os.path.lexists(path) or os.path.isdir(path):  # an input as the user named it
            reason = "no audio files in this folder" if os.path.isdir(path) else "not found"
        try:
            if reason is not None:
                raise DataError(reason)
            yield {"file": name, **classify(clf, mfccs[:limit]), "truncated": len(mfccs) > limit}
        except DataError as exc:
            yield {"file": name, "error": f"{name}: {exc}"}


def predict_file(clf, path, max_duration=MAX_DURATION):
    """predict_files' result of one file; DataError naming it when it cannot be classified."""
    (result,) = predict_files(clf, [path], 1, max_duration)
    if "error" in result:
        raise DataError(result["error"])
    return result


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="AUDIO", help="audio files or folders")
    parser.add_argument("--model", default=MODEL_PATH, help="a .pt or .onnx from train.py")
    parser.add_argument("--device", default=DEVICE, help="auto, cpu, cuda or cuda:N (.pt only)")
    parser.add_argument("--workers", type=at_least(int, 1), default=WORKERS,
                        help="processes analysing files in parallel")
    parser.add_argument("--max-duration", type=at_least(float, 0, True, maximum=24 * 3600),
                        default=MAX_DURATION, help="seconds analysed from the start of each song")
    parser.add_argument("--json", action="store_true", help="print one JSON object, not text")
    return parser.parse_args(argv)


def format_result(result, width, seconds):
    """The text report of one file (segments of seconds): its genre, then the top genres."""
    n = result["segments"]
    longer = f"; only its first {n * seconds:g} s analysed" if result["truncated"] else ""
    return "\n".join([f"{result['file']}: {result['genre']} ({n} segments{longer})"] + [
        f"  {e['genre']:<{width}}  {e['vote_share']:6.1%} of votes ({e['votes']}/{n})  mean "
        f"probability {e['mean_probability']:.3f}" for e in result["top"]])


def run(args):
    """Load the model, predict every input; return the exit status (2 when any file failed)."""
    started = time.perf_counter()
    clf = load_classifier(args.model, args.device)
    if clf.backend == "torch":  # as with ONNX: idle OpenMP threads would spin against the analysis
        import torch  # loaded already, by the checkpoint's backend

        torch.set_num_threads(1)  # here, not in load_classifier: a notebook keeps its threads
    print(describe_classifier(clf), file=sys.stderr if args.json else sys.stdout, flush=True)
    seconds = clf.features["segment_samples"] / clf.features["sample_rate"]  # of a segment
    files, ignored, results, failed = [], 0, [], []
    for name in args.inputs:  # a folder gives its audio files; an empty one fails
        found, skipped = extract.scan_folder(name) if os.path.isdir(name) else ([name], [])
        files, ignored = files + [str(path) for path in found or [name]], ignored + len(skipped)
    if ignored:
        print(f"Ignored {ignored} hidden or non-audio file(s)", file=sys.stderr)
    for item in predict_files(clf, files, args.workers, args.max_duration):
        (failed if "error" in item else results).append(item)
        if "error" in item:
            print(f"error: {item['error']}", file=sys.stderr, flush=True)
        elif not args.json:
            print(format_result(item, max(map(len, clf.mapping)), seconds), flush=True)
    if args.json:
        model = dict(path=clf.path, backend=clf.backend, genres=clf.mapping, features=clf.features)
        model.update({key: clf.card.get(key) for key in [*FIGURES, "features_assumed"]})
        print(json.dumps({"model": model, "files": results, "failed": failed}, allow_nan=False,
                         indent=2))
    else:
        print(f"Predicted {len(results)} file(s) in {time.perf_counter() - started:.1f} s"
              + (f"; {len(failed)} failed (see the errors above)" if failed else ""))
    return 2 if failed else 0


def main(argv=None) -> int:
    """Predict the genre of each input; exit status 2 on an unusable model or any failed file."""
    try:
        return run(parse_args(argv))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_main(main))
