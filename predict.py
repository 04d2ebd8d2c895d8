"""Name the genre of songs with a trained model, featurizing them exactly as its training data was.

Usage:
    python predict.py song.mp3 other.wav some_folder/     # folders: their audio files, sorted
    python predict.py --model demo/saved_models/final_model_pytorch.pt --device cpu song.wav
    python predict.py --json songs/ > genres.json

Each file is decoded and cut into segments with the MFCC recipe stored in the model (through
extract.py's own code), scaled with the model's training range, and every full segment of the whole
song is classified. The song's genre is the majority vote of its segments, ties going to the higher
mean probability: the rule of train.py's track-level test. In a notebook:

    import predict
    clf = predict.load_classifier("saved_models/final_model_pytorch.pt", device="cpu")
    predict.predict_file(clf, "song.mp3")["genre"]
    predict.predict_signal(clf, samples, sample_rate)     # a NumPy array of audio
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import extract
import preprocess
from common import (DataError, HelpFormatter, UsageError, at_least, device_name, file_path,
                    fork_context, interrupts_deferred, run_command)

# torch (and train.py, which imports it) is imported only where a model is loaded or used: the
# command line loads the model in a process of its own, so that the audio analysis starts while
# torch is imported, and its worker processes do not inherit torch.

MODEL_PATH = "saved_models/final_model_pytorch.pt"  # model used by default: train.py's output
TOP_GENRES = 3  # genres listed per file, by votes then mean probability
WORKERS = extract.WORKERS  # processes that decode and analyse files in parallel: the usable cores

# What every checkpoint written by train.py holds, with the type of each entry.
REQUIRED_KEYS = {"model_state_dict": dict, "num_channels": int, "height": int, "width": int,
                 "num_classes": int, "mapping": list, "norm_min": float, "norm_max": float}
TRAIN_HINT = ("train one with `python train.py`, or try `python train.py --demo` and then "
              "`--model demo/saved_models/final_model_pytorch.pt`")


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A trained model with what it takes to featurize and scale new audio as its training data."""

    model: "torch.nn.Module"
    device: "torch.device"
    path: str
    mapping: list
    norm_min: float
    norm_max: float
    features: dict  # the MFCC recipe
    features_assumed: bool  # True when the model stores no recipe and the tutorial's is used
    test_accuracy: float = None  # segment-level, when the checkpoint records it
    track_test_accuracy: float = None
    split_kind: str = None  # "segment" or "track", when the checkpoint records it


# ---------------------------------------------------------------------------------------------
# The model


def read_checkpoint(path, device):
    """The checkpoint's dict, loaded safely; DataError for a missing or foreign file."""
    import torch
    import train

    path = Path(path)
    if not path.exists():
        raise DataError(f"no model at {path}: {TRAIN_HINT}")
    if path.is_dir():
        raise DataError(f"--model {path} is a folder: pass the model file, e.g. "
                        f"{path / train.FINAL_MODEL_FILE}")
    try:
        checkpoint = torch.load(path, weights_only=True, map_location=device)
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc}): check its permissions") \
            from None
    except Exception as exc:  # a foreign file fails in zipfile, pickle or torch's safe unpickler
        # torch's safe unpickler names the class or function it refused to load.
        refused = "Unsupported global" in str(exc)
        why = ("it holds Python objects that a safe load refuses, so it was not loaded"
               if refused else "not a PyTorch checkpoint")
        raise DataError(f"{path} is not a genre model saved by train.py ({why}): "
                        f"pass one with --model") from None
    return check_checkpoint(checkpoint, path)


def check_checkpoint(checkpoint, path):
    """Return the checkpoint if it has every entry train.py writes, of the right type."""
    if not isinstance(checkpoint, dict):
        raise DataError(f"{path} is not a genre model saved by train.py (it holds a "
                        f"{type(checkpoint).__name__}, not a dict): pass one with --model")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise DataError(f"{path} is not a genre model saved by train.py (no "
                        f"{', '.join(missing)}): pass one with --model")
    for key, kind in REQUIRED_KEYS.items():
        value = checkpoint[key]
        if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise DataError(f"{path}: '{key}' is a {type(value).__name__}, not a "
                            f"{kind.__name__}: the model file is damaged; train it again")
    mapping = checkpoint["mapping"]
    if len(mapping) != checkpoint["num_classes"] or not all(isinstance(g, str) for g in mapping):
        raise DataError(f"{path}: 'mapping' does not name its {checkpoint['num_classes']} "
                        f"genres: the model file is damaged; train it again")
    return checkpoint


def build_network(checkpoint, path, device):
    """The GenreClassifier of a checkpoint, with its weights, in evaluation mode on device."""
    import train

    try:
        return train.model_from_checkpoint(checkpoint, device)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise DataError(f"{path}: its weights do not fit the model it describes "
                        f"({extract.first_line(exc)}): train it again") from None


def stored_recipe(checkpoint, path):
    """(features, assumed): the model's MFCC recipe, or the tutorial's when it stores none."""
    features = checkpoint.get("features")
    if features is None:
        return dict(extract.TUTORIAL_FEATURES), True
    features = extract.validate_features(features, f"{path}: 'features'")
    # train.py stores the tutorial recipe, flagged as assumed, for data.json files without one.
    return features, bool(checkpoint.get("features_assumed", False))


def check_input_shape(checkpoint, features, path):
    """Refuse a recipe whose segments are not the shape the model was trained on."""
    expected = (checkpoint["num_channels"], checkpoint["height"], checkpoint["width"])
    produced = (1, features["frames"], features["n_mfcc"])
    if expected != produced:
        raise DataError(
            f"{path}: the model takes segments of {'x'.join(map(str, expected))} (C x frames x "
            f"MFCCs) but its recipe makes {'x'.join(map(str, produced))}: it was not trained on "
            f"audio features of this recipe, so it cannot classify audio")


def load_classifier(path=MODEL_PATH, device="cpu"):
    """Load a model saved by train.py once, with its recipe and training range; DataError if unfit.

    device: a torch.device or a --device name (auto, cpu, cuda, cuda:N).
    """
    import torch
    import train

    device = device if isinstance(device, torch.device) else train.resolve_device(device)
    checkpoint = read_checkpoint(path, device)
    features, assumed = stored_recipe(checkpoint, path)
    check_input_shape(checkpoint, features, path)
    return Classifier(
        model=build_network(checkpoint, path, device), device=device, path=str(path),
        mapping=list(checkpoint["mapping"]), norm_min=float(checkpoint["norm_min"]),
        norm_max=float(checkpoint["norm_max"]), features=features, features_assumed=assumed,
        test_accuracy=checkpoint.get("test_accuracy"),
        track_test_accuracy=checkpoint.get("track_test_accuracy"),
        split_kind=(checkpoint.get("split") or {}).get("split_kind"),
    )


def describe_recipe(features):
    """The recipe in a few words."""
    f = features
    return (f"{f['sample_rate']} Hz mono, segments of {f['segment_samples'] / f['sample_rate']:g} s "
            f"= {f['frames']} frames x {f['n_mfcc']} MFCCs (n_fft {f['n_fft']}, "
            f"hop {f['hop_length']})")


def describe_classifier(clf):
    """One line: model file, genres, recipe, test accuracy."""
    recipe = describe_recipe(clf.features)
    if clf.features_assumed:
        recipe += " [tutorial recipe assumed: the model stores none]"
    if clf.test_accuracy is None:
        accuracy = "not recorded"
    else:
        accuracy = f"{clf.test_accuracy:.1%} of segments"
        if clf.track_test_accuracy is not None:
            accuracy += f", {clf.track_test_accuracy:.1%} of tracks"
        if clf.split_kind == "segment":  # a test track's other segments were trained on
            accuracy += " (split by segment, so optimistic)"
    return (f"Model {clf.path}: {len(clf.mapping)} genres ({', '.join(clf.mapping)}); "
            f"recipe {recipe}; test accuracy {accuracy}")


# ---------------------------------------------------------------------------------------------
# Prediction


def minimum_seconds(features):
    """The shortest audio that gives one segment."""
    return features["segment_samples"] / features["sample_rate"]


def file_segments(path, features):
    """The MFCCs (n, frames, n_mfcc) of every full segment of an audio file; DataError if unfit."""
    signal = extract.load_signal(path, features)
    return signal_segments(signal, features, path)


def signal_segments(signal, features, name):
    """The MFCCs of every full segment of a mono signal at the recipe's rate; DataError if short."""
    mfccs = extract.signal_mfccs(signal, features)
    if len(mfccs) == 0:
        raise DataError(f"{name}: too short ({len(signal) / features['sample_rate']:.2f} s): a song "
                        f"needs at least {minimum_seconds(features):g} s, one segment")
    return mfccs


@contextlib.contextmanager
def one_cpu_thread():
    """Run torch on one CPU thread inside the block, restoring the thread count after it.

    A song's segments are a small batch, which one thread classifies in a few milliseconds,
    while torch's idle worker threads keep spinning for a while after each call and measured
    nearly halving the speed of the audio analysis that runs next to them.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def classify(clf, mfccs):
    """The vote of a song's segments: genre, segment count and the top genres."""
    import torch
    import train

    x = preprocess.normalize(mfccs[:, None], clf.norm_min, clf.norm_max)
    x = torch.from_numpy(x).to(clf.device).contiguous(memory_format=torch.channels_last)
    with one_cpu_thread():
        probabilities = torch.softmax(train.predict(clf.model, x), dim=1).cpu().numpy()
    label, votes, means = train.vote_segments(probabilities)
    # Ranked as the vote decides: votes first, then mean probability, so the winner comes first.
    ranked = sorted(range(len(clf.mapping)), key=lambda g: (votes[g], means[g]), reverse=True)
    top = [{"genre": clf.mapping[g], "votes": int(votes[g]), "vote_share": int(votes[g]) / len(x),
            "mean_probability": float(means[g])} for g in ranked[:TOP_GENRES]]
    return {"genre": clf.mapping[label], "segments": len(x), "top": top}


def predict_file(clf, path):
    """Classify an audio file; returns {"file", "genre", "segments", "top"}; DataError if unfit."""
    return {"file": str(path), **classify(clf, file_segments(path, clf.features))}


def predict_signal(clf, samples, sample_rate):
    """Classify audio samples at sample_rate as a file would be: 1-D mono, or 2-D with channels on
    either axis (soundfile's frames x channels or librosa's channels x frames), mixed down.

    Returns {"genre", "segments", "top"}; DataError when shorter than one segment.
    """
    librosa, _ = extract.import_librosa()
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2):
        raise DataError(f"samples of shape {samples.shape}: pass a 1-D or 2-D array of audio")
    if samples.ndim == 2 and samples.shape[0] > samples.shape[1]:
        samples = samples.T  # a song has more frames than channels; librosa wants channels first
    signal = librosa.to_mono(samples)
    if sample_rate != clf.features["sample_rate"]:
        signal = librosa.resample(signal, orig_sr=sample_rate,
                                  target_sr=clf.features["sample_rate"],
                                  res_type=clf.features["res_type"])
    return classify(clf, signal_segments(signal, clf.features, "the signal"))


# ---------------------------------------------------------------------------------------------
# Files and folders


def audio_files(folder):
    """The audio files in a folder and its subfolders, sorted; hidden ones left out."""
    return extract.scan_folder(Path(folder), Path(folder))[0]


def expand_inputs(names):
    """(files to predict, failures): each folder becomes its audio files; a missing path fails."""
    files, errors = [], []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = audio_files(path)
            files.extend(str(p) for p in found)
            if not found:
                extensions = ", ".join(e[1:] for e in extract.AUDIO_EXTENSIONS)
                errors.append({"file": name, "error": f"{name}: no audio files in this folder "
                                                      f"(looked for {extensions})"})
        elif path.exists():
            files.append(name)
        else:
            errors.append({"file": name, "error": f"{name}: not found"})
    return files, errors


def analyse(path, features):
    """(MFCCs, None) for a usable file, (None, error line) for another; runs in a worker."""
    try:
        return file_segments(path, features), None
    except DataError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the others; it is reported
        reason = f"{type(exc).__name__}: {extract.first_line(exc)}"
        return None, f"{path}: analysis failed ({reason})"


def start_analyses(pool, paths, features):
    """Futures of analyse() for every path, in input order; None without a pool."""
    if pool is None:
        return None
    return [pool.submit(analyse, path, features) for path in paths]


def analyses(futures, paths, features):
    """(MFCCs, error) of every path in input order: the futures' results, or analysed here."""
    if futures is None:
        return (analyse(path, features) for path in paths)
    return (future.result() for future in futures)


def same_recipe(a, b):
    """Whether two recipes give the same numbers: equal values of the same types (2 == 2.0, but
    NumPy need not compute the same with an int as with a float)."""
    return a.keys() == b.keys() and all(type(a[k]) is type(b[k]) and a[k] == b[k] for k in a)


def load_while_analysing(pool, files, load):
    """(classifier, classify(mfccs), analyses of files). The workers start on the files with the
    tutorial's recipe (extract.py's default, which nearly every model has) while the model loads
    (about a second: load() waits for it), and start again with the model's recipe in the rare
    case that it is another one."""
    futures = start_analyses(pool, files, extract.TUTORIAL_FEATURES)
    clf, classify_mfccs = load()
    if not same_recipe(clf.features, extract.TUTORIAL_FEATURES):
        for future in futures or ():
            future.cancel()
        futures = start_analyses(pool, files, clf.features)
    return clf, classify_mfccs, analyses(futures, files, clf.features)


def serve_classifier(connection, our_end, model, device, parent):
    """The model's own process: load the model, send its description, then send classify() of
    each MFCC array received, until None. What refuses the model is sent as the one-line error
    to print; so is an unexpected failure (such as CUDA running out of memory), named."""
    our_end.close()  # the main process's end of the pipe, inherited by the fork
    extract.start_worker(parent)
    try:
        try:
            clf = load_classifier(model, device)
            # The description without torch objects: unpickling those would import torch there.
            connection.send(dataclasses.replace(clf, model=None, device=str(clf.device)))
            while (mfccs := connection.recv()) is not None:
                connection.send(classify(clf, mfccs))
        except (DataError, UsageError) as exc:
            connection.send(exc)
        except Exception as exc:  # noqa: BLE001 - said in one line by the main process
            connection.send(DataError(f"{model}: the model failed in its process "
                                      f"({type(exc).__name__}: {extract.first_line(exc)})"))
    except (EOFError, OSError):  # the main process stopped early: Ctrl-C or an error
        pass


def receive(connection):
    """The model process's next reply; the error it sent is raised, its death a BrokenExecutor."""
    try:
        reply = connection.recv()
    except EOFError:
        raise concurrent.futures.BrokenExecutor("the model's process died") from None
    if isinstance(reply, Exception):
        raise reply
    return reply


def classify_there(connection, mfccs):
    """classify() in the model's process."""
    try:
        connection.send(mfccs)
    except OSError:  # a broken pipe: the process has died
        raise concurrent.futures.BrokenExecutor("the model's process died") from None
    return receive(connection)


@contextlib.contextmanager
def model_process(model, device):
    """Yield load(): (description, classify(mfccs)) of the model, loaded in a process of its own.

    Importing torch and loading the model take about a second of one core, which here overlaps
    with librosa's start-up instead of slowing the analysis; this process never imports torch.
    """
    context = fork_context()
    connection, their_end = context.Pipe()
    process = context.Process(target=serve_classifier, daemon=True,  # ended at exit if need be
                              args=(their_end, connection, model, device, os.getpid()))
    try:
        with interrupts_deferred():
            extract.start_processes(process.start)
        their_end.close()
        yield lambda: (receive(connection), functools.partial(classify_there, connection))
        with contextlib.suppress(BrokenPipeError):  # ended already: it has done its work
            connection.send(None)
    except BaseException:
        if process.pid is not None:
            process.terminate()  # stopped by an error or Ctrl-C, maybe while the model loads
        raise
    finally:
        connection.close()
        their_end.close()
        if process.pid is not None:
            process.join()


def own_model_process(workers):
    """Whether the model should load in a process of its own (see model_process): with workers to
    run beside it, and before this process has imported torch, which a fork must not inherit
    (its threads do not survive one) and which would leave nothing to overlap. Only where fork is
    the platform's way of starting processes: a fresh interpreter would start too slowly."""
    return workers > 1 and "torch" not in sys.modules and fork_context() is not None


def model_here(model, device):
    """load() for a model loaded in this process."""
    def load():
        clf = load_classifier(model, device)
        return clf, functools.partial(classify, clf)
    return load


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Name the genre of audio files with a model trained by train.py: each file is "
                    "featurized with the model's own MFCC recipe and its segments vote.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", type=file_path, metavar="AUDIO",
                        help="audio files, or folders whose audio files are all predicted")
    parser.add_argument("--model", type=file_path, default=MODEL_PATH,
                        help="checkpoint written by train.py")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=at_least(int, 1), default=WORKERS,
                        help="processes analysing files in parallel; above 1, the model also "
                             "runs in a process of its own")
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON object instead of text")
    return parser.parse_args(argv)


def format_result(result, width):
    """The text report of one file: its genre, then the top genres with votes and probability."""
    lines = [f"{result['file']}: {result['genre']} ({result['segments']} segments)"]
    for entry in result["top"]:
        lines.append(f"  {entry['genre']:<{width}}  {entry['vote_share']:6.1%} of votes "
                     f"({entry['votes']}/{result['segments']})  mean probability "
                     f"{entry['mean_probability']:.3f}")
    return "\n".join(lines)


def model_summary(clf):
    """The model's description for --json."""
    return {"path": clf.path, "genres": clf.mapping, "features": clf.features,
            "features_assumed": clf.features_assumed, "test_accuracy": clf.test_accuracy,
            "track_test_accuracy": clf.track_test_accuracy}


def report_error(message):
    """One line on stderr for a file that could not be predicted."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def predict_all(clf, classify_mfccs, files, analysed, args):
    """Classify every file's analysis, reporting each as it comes; return results and failures."""
    results, failures = [], []
    for index, (mfccs, error) in enumerate(analysed):
        name = files[index]
        if error is not None:
            report_error(error)
            failures.append({"file": name, "error": error})
            continue
        results.append({"file": name, **classify_mfccs(mfccs)})
        if not args.json:
            print(format_result(results[-1], max(map(len, clf.mapping))), flush=True)
    return results, failures


def run(args):
    """Load the model, predict every input; return the exit status (2 when any file failed).

    With more than one worker the model usually loads and runs in a process of its own, started
    first (see own_model_process).
    """
    started = time.perf_counter()
    files, missing = expand_inputs(args.inputs)
    with (model_process(args.model, args.device) if own_model_process(args.workers)
          else contextlib.nullcontext(model_here(args.model, args.device))) as load:
        with extract.analysis_pool(args.workers, len(files), extract.TUTORIAL_FEATURES) as pool:
            clf, classify_mfccs, analysed = load_while_analysing(pool, files, load)
            print(describe_classifier(clf), file=sys.stderr if args.json else sys.stdout,
                  flush=True)
            for failure in missing:
                report_error(failure["error"])
            results, failures = predict_all(clf, classify_mfccs, files, analysed, args)
    failures = missing + failures
    if args.json:
        print(json.dumps({"model": model_summary(clf), "files": results, "failed": failures},
                         indent=2))
    else:
        print(f"Predicted {len(results)} file(s) in {time.perf_counter() - started:.1f} s"
              + (f"; {len(failures)} failed (see the errors above)" if failures else ""))
    return 2 if failures else 0


def main(argv=None) -> int:
    """Predict the genre of each input; exit status 2 on a bad model or any failed file."""
    args = parse_args(argv)
    extract.reuse_freed_memory()
    try:
        return run(args)
    except (DataError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except concurrent.futures.BrokenExecutor:
        print("error: a worker process died (out of memory?): try again with --workers 1",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_command(main))
