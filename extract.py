"""Turn genre folders of audio into data.json: the MFCCs of each track's segments, and the recipe.

Usage:
    python extract.py AUDIO_DIR                   # AUDIO_DIR/<genre>/<track>.wav ... -> data.json
    python extract.py genres --data songs.json --workers 2 --num-mfcc 20
    python extract.py --demo                      # synthesize demo/audio/, extract demo/audio.json

Each subfolder of AUDIO_DIR is a genre (sorted names = "mapping"). The first --track-duration s of
each track are read and analysed by features.py, whose full recipe data.json's "features" records.
"""
import argparse
import collections
import concurrent.futures
import contextlib
import functools
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import threadpoolctl

import features as recipes
from common import (DataError, HelpFormatter, at_least, atomic_write, check_replaceable, read_head,
                    run_main)

JSON_PATH = "data.json"  # the output: preprocess.py's input
# Processes analysing files at once: the cores this process may run on.
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
MARGIN_SECONDS = 1.0  # read past the track's end: the resampler's edge effect falls outside it
# A data.json as extract.py (or the tutorial) writes it: "mapping", a list of names, then our key.
OUR_JSON = re.compile(rb'\s*\{\s*"mapping"\s*:\s*\[[^\]]*\]\s*,\s*"(labels|mfcc|features|tracks)"')
SHOWN_IGNORED = 5  # ignored files the summary names
DEMO_DIR = Path("demo")  # every --demo's files: here audio/ (genre folders) and audio.json
DEMO_TRACKS = 10  # --demo tracks per genre: the fewest that give every genre a test track
DEMO_GENRES = "blues classical country disco hiphop jazz metal pop reggae rock".split()
# The recipe's flags: features.py's constants of the same names, in make_features' order.
RECIPE_FLAGS = "SAMPLE_RATE TRACK_DURATION NUM_SEGMENTS NUM_MFCC N_FFT HOP_LENGTH N_MELS".split()


def start_worker():
    """Ctrl-C and SIGTERM are for the main process, which stops the pool. One BLAS thread, as in
    the main process: no threads spinning against the other workers, and the same rounding."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threadpoolctl.threadpool_limits(1, user_api="blas")


@contextlib.contextmanager
def analysis_pool(workers, features):
    """A process pool, or None to analyse here; after the warm-up, which checks the recipe."""
    recipes.warm_up(features)  # and forked workers start with librosa loaded
    if workers <= 1:
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            yield None
        return
    with concurrent.futures.ProcessPoolExecutor(workers, initializer=start_worker) as pool:
        try:
            yield pool
        except concurrent.futures.BrokenExecutor:
            raise DataError("a worker process died (out of memory?): try --workers 1") from None
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the files not started yet never start
            raise


def analyse_path(features, max_seconds, max_segments, path):
    """analyse_file for regular files; others are never opened (a FIFO would block forever)."""
    if os.path.isfile(path):
        return recipes.analyse_file(path, features, max_seconds, max_segments)
    dangling = os.path.islink(path) and not os.path.exists(path)
    return None, "a broken symbolic link" if dangling else "not a regular file"


def analyse_all(paths, features, workers, max_seconds=None, max_segments=None):
    """Yield (mfccs, None) or (None, reason) for each path, in input order for any workers."""
    paths, analyse = list(paths), functools.partial(analyse_path, features, max_seconds,
                                                    max_segments)
    with analysis_pool(max(1, min(workers, len(paths))), features) as pool:
        yield from (map if pool is None else pool.map)(analyse, paths)


def readable(name):
    """name with bytes that are not UTF-8 as \\x escapes: printable, and JSON every reader takes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def scan_folder(folder):
    """(audio files, ignored: hidden or other extensions) below folder, sorted."""
    files = [path for path in sorted(Path(folder).rglob("*")) if not path.is_dir()]
    audio = {path for path in files if path.suffix.lower() in recipes.AUDIO_EXTENSIONS
             and not any(part.startswith(".") for part in path.relative_to(folder).parts)}
    return [path for path in files if path in audio], [path for path in files if path not in audio]


def find_genres(root):
    """The sorted genre subfolders of root; DataError when they cannot make a data set."""
    hint = "pass the folder that holds one subfolder of audio files per genre (as GTZAN's genres/)"
    try:
        genres = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{root} cannot be read ({exc.strerror}): {hint}") from None
    if len(genres) < 2:
        inside = f" (if the genres are in {genres[0]}, pass that)" if genres else ""
        raise DataError(f"{root} has {len(genres) or 'no'} genre subfolder(s), but a classifier "
                        f"needs two or more{inside}: {hint}")
    for genre in genres:
        if re.search(r"[\x00-\x1f\x7f-\x9f]", genre.name):
            raise DataError(f"{root}: the genre folder {genre.name!r} has control characters in "
                            f"its name, which would be the genre's name: rename the folder")
    return genres


def extract(root, output, features, workers):
    """Analyse root's genre folders into output; return (mapping, kept, skipped, ignored)."""
    genres = find_genres(root)
    scans = [scan_folder(genre) for genre in genres]
    files = [(label, path) for label, (audio, _) in enumerate(scans) for path in audio]
    paths, ignored = [path for _, path in files], [path for _, other in scans for path in other]
    mapping, kept = [readable(genre.name) for genre in genres], [[] for _ in genres]
    skipped, labels, tracks, stems = [], [], [], collections.Counter(p.stem for p in paths)
    results = analyse_all(paths, features, workers, features["track_duration"] + MARGIN_SECONDS,
                          features["num_segments"])
    with atomic_write(output, "wb", "--data") as out, contextlib.closing(results):
        out.write(f'{{"mapping": {json.dumps(mapping)}, "features": '
                  f'{json.dumps(features, allow_nan=False)}, "mfcc": ['.encode())
        for (label, path), (mfccs, reason) in zip(files, results):
            name = readable(path.relative_to(root).as_posix())
            if mfccs is None:  # analyse_file lets only finite MFCCs through
                print(f"warning: skipped {name}: {reason}", file=sys.stderr)
                skipped.append((name, reason))
                continue
            # msgspec writes the same shortest round-trip digits as json, several times faster.
            out.write((b", " if labels else b"") + msgspec.json.encode(mfccs.tolist())[1:-1])
            track = name if stems[path.stem] > 1 else readable(path.stem)  # a file name if unique
            labels.extend([label] * len(mfccs))
            tracks.extend([track] * len(mfccs))
            kept[label].append(len(mfccs))
        empty = [genre for genre, counts in zip(mapping, kept) if not counts]
        if empty:  # raised before the file is complete: output stays as it was
            raise DataError(f"{root}: no usable audio in genre(s) {', '.join(empty)}: add audio "
                            f"({', '.join(recipes.AUDIO_EXTENSIONS)}) or remove the folder")
        out.write(f'], "labels": {json.dumps(labels)}, "tracks": {json.dumps(tracks)}}}\n'.encode())
    return mapping, kept, skipped, ignored


def synthesize_track(genre, track, sample_rate=recipes.SAMPLE_RATE, seconds=recipes.TRACK_DURATION):
    """A deterministic float32 track: each genre its own pitch, timbre, tempo and percussion."""
    rng = np.random.default_rng([0, genre, track])  # the same audio on every machine
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    beat = (t * (70 + 11 * genre + rng.uniform(-2, 2)) / 60) % 1.0  # position in the beat, 0..1
    f0 = 65.0 * 2 ** (genre * 0.4 + rng.uniform(0, 0.15))  # fundamental, Hz
    tone = sum((0.25 + 0.07 * genre) ** k  # harmonics: brighter genre by genre
               * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 2 * np.pi)) for k in range(6))
    hit = rng.standard_normal(t.size) * np.exp(-beat * (8 + 4 * (genre % 3)))  # percussion
    y = tone / np.abs(tone).max() * np.exp(-beat * (1.5 + genre)) + (0.1 + 0.08 * (genre % 4)) * hit
    return (0.8 * y / np.abs(y).max()).astype(np.float32)


def ensure_demo_audio(audio_dir):
    """Write the demo's genre folders of FLAC files that are not there yet."""
    import soundfile as sf
    if not audio_dir.is_dir():
        print(f"Synthesizing {len(DEMO_GENRES)} x {DEMO_TRACKS} demo tracks into {audio_dir}/")
    for genre, track in np.ndindex(len(DEMO_GENRES), DEMO_TRACKS):
        path = audio_dir / DEMO_GENRES[genre] / f"{DEMO_GENRES[genre]}.{track:05d}.flac"
        if not path.exists():
            with atomic_write(path, flag="--demo") as handle:  # no stub if interrupted
                sf.write(handle, synthesize_track(genre, track), recipes.SAMPLE_RATE, format="FLAC")


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("audio_dir", nargs="?", metavar="AUDIO_DIR", help="one folder per genre")
    parser.add_argument("--data", default=JSON_PATH, help="data.json to write")
    parser.add_argument("--workers", type=at_least(int, 1), default=WORKERS, help="processes")
    parser.add_argument("--demo", action="store_true", help="synthesize demo/audio/ and extract it")
    recipe = parser.add_argument_group("the MFCC recipe (the constants of features.py)")
    for name in RECIPE_FLAGS:
        kind = at_least(float, 0, strict=True) if name == "TRACK_DURATION" else at_least(int, 1)
        recipe.add_argument(f"--{name.lower().replace('_', '-')}", type=kind, metavar=name,
                            default=getattr(recipes, name), help="default: %(default)s")
    args = parser.parse_args(argv)
    if (args.audio_dir is None) != args.demo or (args.demo and args.data != JSON_PATH):
        parser.error("give AUDIO_DIR, the folder with one subfolder per genre, or --demo alone")
    return args


def main(argv=None) -> int:
    """Extract the audio, write data.json and print a summary; exit status 2 on bad input."""
    args = parse_args(argv)
    root, output = (DEMO_DIR / "audio", DEMO_DIR / "audio.json") if args.demo else (
        Path(args.audio_dir), Path(args.data))
    try:
        recipe = recipes.make_features(*(getattr(args, name.lower()) for name in RECIPE_FLAGS))
        features = recipes.check_features(recipe, "the recipe flags")
        check_replaceable(output, "--data", "a data.json", lambda p: OUR_JSON.match(read_head(p)))
        if args.demo:
            ensure_demo_audio(root)
        start = time.perf_counter()  # the extraction's own time, without writing demo audio
        mapping, kept, skipped, ignored = extract(root, output, features, args.workers)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Extracted {sum(map(sum, kept))} segments from {sum(map(len, kept))} tracks of "
          f"{len(mapping)} genres in {time.perf_counter() - start:.1f} s")
    width = max(len(name) for name in mapping + ["genre"])
    print(f"  {'genre':<{width}}  {'tracks':>6}  {'segments':>8}")
    for genre, counts in zip(mapping, kept):
        print(f"  {genre:<{width}}  {len(counts):>6}  {sum(counts):>8}")
    if skipped:
        print(f"Skipped {len(skipped)} file(s):", *(f"  {name}: {why}" for name, why in skipped),
              sep="\n")
    if ignored:
        names = [readable(path.relative_to(root).as_posix()) for path in ignored[:SHOWN_IGNORED]]
        more = [f"... ({len(ignored) - SHOWN_IGNORED} more)"] * (len(ignored) > SHOWN_IGNORED)
        print(f"Ignored {len(ignored)} hidden or non-audio file(s): {', '.join(names + more)}")
    print(f"Wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
