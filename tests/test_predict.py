"""Tests of predict.py: audio -> extract -> preprocess -> train -> predict gives train.py's votes."""
import contextlib
import io
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

import librosa
import numpy as np
import pytest
import soundfile
import torch

import extract
import predict
import train
from conftest import ROOT, end_processes, process_runs, synth_audio, write_audio

# A small recipe for speed: 2-s tracks at 8 kHz cut into four 0.5-s segments of 16 frames x 13.
RECIPE = dict(sample_rate=8000, track_duration=2, num_segments=4, n_fft=512, hop_length=256,
              n_mels=40)
GENRES = {"blues": 0, "hiphop": 4, "rock": 9}  # name -> extract's synthetic genre number
TRACKS = 10  # per genre: a track split then has one test track per genre


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Genre folders of synthetic audio, extracted, preprocessed by track and trained briefly."""
    root = tmp_path_factory.mktemp("pipeline")
    features = extract.make_features(**RECIPE)
    for name, number in GENRES.items():
        for track in range(TRACKS):
            samples = extract.synthesize_track(number, track, RECIPE["sample_rate"],
                                               RECIPE["track_duration"])
            path = root / "audio" / name / f"{name}.{track:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, samples, RECIPE["sample_rate"], subtype="PCM_16")
    # One torch thread: fastest for a model this small, and unaffected by a busy machine.
    with contextlib.redirect_stdout(io.StringIO()), predict.one_cpu_thread():
        extract.extract(root / "audio", root / "data.json", features, workers=1)
        status = train.main(["--data", str(root / "data.json"), "--cache", str(root / "c.npz"),
                             "--model-dir", str(root / "models"), "--epochs", "4", "--no-plots",
                             "--device", "cpu"])
    assert status == 0
    metrics = json.loads((root / "models" / train.METRICS_FILE).read_text())
    model = root / "models" / train.FINAL_MODEL_FILE
    return dict(root=root, features=features, model=model, metrics=metrics,
                classifier=predict.load_classifier(model, device="cpu"))


def recorded_test_tracks(pipeline):
    """(audio file, recorded vote) of every test track that train.py reported."""
    tracks = pipeline["metrics"]["track_level"]["tracks"]
    assert len(tracks) == len(GENRES)
    return [(pipeline["root"] / "audio" / t["true_genre"] / f"{t['track']}.wav", t)
            for t in tracks]


def run_main(capsys, *args):
    """predict.main in-process; returns (exit status, stdout, stderr lines)."""
    status = predict.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip().splitlines()


def parse_text(out):
    """The per-file blocks of the plain output, as the dicts --json prints."""
    results = []
    for line in out.splitlines():
        head = re.fullmatch(r"(.+): (\w+) \((\d+) segments\)", line)
        row = re.fullmatch(r"  (\w+) +([\d.]+)% of votes \((\d+)/\d+\)  mean probability "
                           r"([\d.]+)", line)
        if head:
            results.append({"file": head[1], "genre": head[2], "segments": int(head[3]),
                            "top": []})
        elif row:
            results[-1]["top"].append({"genre": row[1], "vote_share": float(row[2]) / 100,
                                       "votes": int(row[3]), "mean_probability": float(row[4])})
    return results


# ---------------------------------------------------------------------------------------------
# Consistency with training


def load_only_in_another_process(monkeypatch):
    """Make the command line load the model in its own process, and fail if it loads it here."""
    here, real = os.getpid(), predict.load_classifier

    def load_classifier(*args, **kwargs):
        assert os.getpid() != here, "the model was loaded in the main process"
        return real(*args, **kwargs)

    # The tests have imported torch, so the command line would load the model in-process; a fork
    # is safe here all the same, as torch runs one thread in the tests (see conftest).
    monkeypatch.setattr(predict, "own_model_process", lambda workers: True)
    monkeypatch.setattr(predict, "load_classifier", load_classifier)


@pytest.mark.parametrize("own_process", [False, True])
def test_test_tracks_get_exactly_the_votes_train_recorded(own_process, pipeline, capsys,
                                                          monkeypatch):
    if own_process:
        load_only_in_another_process(monkeypatch)
    files = recorded_test_tracks(pipeline)
    status, out, err = run_main(capsys, "--model", pipeline["model"], "--json", "--workers", 2,
                                *(path for path, _ in files))
    assert status == 0 and err[0].startswith("Model ")  # the header goes to stderr with --json
    document = json.loads(out)
    assert document["model"]["features"] == pipeline["features"]
    assert document["model"]["features_assumed"] is False
    for (path, recorded), result in zip(files, document["files"], strict=True):
        assert result["file"] == str(path)
        assert result["genre"] == recorded["predicted_genre"]
        assert result["segments"] == recorded["segments"] == RECIPE["num_segments"]
        winner = result["top"][0]
        assert winner["genre"] == recorded["predicted_genre"]
        assert (winner["votes"], winner["vote_share"]) == (recorded["votes"],
                                                          recorded["vote_share"])
        assert winner["mean_probability"] == pytest.approx(recorded["mean_probability"],
                                                           rel=1e-5)


def test_text_output_agrees_with_json(pipeline, capsys):
    files = [str(path) for path, _ in recorded_test_tracks(pipeline)]
    status, out, _ = run_main(capsys, "--model", pipeline["model"], "--workers", 1, *files)
    assert status == 0
    header = out.splitlines()[0]
    assert header.startswith(f"Model {pipeline['model']}: 3 genres (blues, hiphop, rock)")
    assert "8000 Hz" in header and "16 frames x 13 MFCCs" in header
    assert f"{pipeline['metrics']['accuracy']:.1%} of segments" in header
    assert "optimistic" not in header  # split by track
    text = parse_text(out)
    _, out, _ = run_main(capsys, "--model", pipeline["model"], "--json", *files)
    document = json.loads(out)["files"]
    assert [r["file"] for r in text] == files
    for plain, structured in zip(text, document, strict=True):
        assert (plain["genre"], plain["segments"]) == (structured["genre"], structured["segments"])
        for a, b in zip(plain["top"], structured["top"], strict=True):
            assert (a["genre"], a["votes"]) == (b["genre"], b["votes"])
            assert a["vote_share"] == pytest.approx(b["vote_share"], abs=5e-4)
            assert a["mean_probability"] == pytest.approx(b["mean_probability"], abs=5e-4)


def test_the_header_flags_the_optimistic_figures_of_a_segment_split():
    clf = predict.Classifier(model=None, device=None, path="m.pt", mapping=["a", "b"], norm_min=0.0,
                             norm_max=1.0, features=extract.default_features(),
                             features_assumed=False, test_accuracy=0.5, track_test_accuracy=0.75,
                             split_kind="segment")
    header = predict.describe_classifier(clf)
    assert "50.0% of segments, 75.0% of tracks (split by segment, so optimistic)" in header


# ---------------------------------------------------------------------------------------------
# Input formats and lengths


def test_stereo_44k_and_mp3_are_predicted_as_their_samples_are(pipeline, tmp_path):
    clf = pipeline["classifier"]
    stereo = write_audio(tmp_path / "stereo.wav", 2, sample_rate=44100, channels=2, seed=3)
    mp3 = write_audio(tmp_path / "song.mp3", 2, sample_rate=22050, seed=4)
    for path in (stereo, mp3):
        from_file = predict.predict_file(clf, path)
        samples, rate = soundfile.read(path, dtype="float32")  # (frames, channels)
        from_samples = predict.predict_signal(clf, samples, rate)
        assert from_file["segments"] == from_samples["segments"] == RECIPE["num_segments"]
        assert_same_votes(from_file, from_samples)
    both = predict.predict_signal(clf, synth_audio(2, 44100, channels=2, seed=3).T, 44100)
    assert both == predict.predict_signal(clf, synth_audio(2, 44100, channels=2, seed=3), 44100)


def assert_same_votes(a, b):
    """Two results rank the same genres with the same votes and (nearly) the same probabilities.

    An MP3 decodes differently by about 1e-7 depending on how it is read, hence the tolerance.
    """
    assert (a["genre"], a["segments"]) == (b["genre"], b["segments"])
    for x, y in zip(a["top"], b["top"], strict=True):
        assert (x["genre"], x["votes"], x["vote_share"]) == (y["genre"], y["votes"], y["vote_share"])
        assert x["mean_probability"] == pytest.approx(y["mean_probability"], abs=1e-5)


def test_a_long_song_uses_all_its_segments(pipeline, tmp_path):
    rate, segment = RECIPE["sample_rate"], pipeline["features"]["segment_samples"]
    path = write_audio(tmp_path / "long.flac", 11.3, sample_rate=rate)  # 22.6 segments
    result = predict.predict_file(pipeline["classifier"], path)
    assert result["segments"] == int(11.3 * rate) // segment == 22
    # Three genres, all in the top 3: their votes are every segment's.
    assert sum(entry["votes"] for entry in result["top"]) == result["segments"]


def test_folders_expand_to_their_audio_files_sorted(tmp_path):
    for name in ("b.wav", "a.flac", "sub/c.mp3", ".hidden.wav", "notes.txt", "sub/.DS_Store"):
        (tmp_path / "songs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "songs" / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    files, failed = predict.expand_inputs([str(tmp_path / "songs"), str(tmp_path / "empty"),
                                           str(tmp_path / "x.wav")])
    assert files == [str(tmp_path / "songs" / n) for n in ("a.flac", "b.wav", "sub/c.mp3")]
    assert [f["file"] for f in failed] == [str(tmp_path / "empty"), str(tmp_path / "x.wav")]


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_files_get_one_line_each_while_the_others_are_predicted(pipeline, tmp_path, capsys):
    good = recorded_test_tracks(pipeline)[0][0]
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n")
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(good.read_bytes()[:30])
    short = write_audio(tmp_path / "short.wav", 0.2, sample_rate=8000)
    (tmp_path / "empty").mkdir()
    bad = [tmp_path / "missing.mp3", text, truncated, short, tmp_path / "empty"]
    status, out, err = run_main(capsys, "--model", pipeline["model"], "--workers", 1, good, *bad)
    assert status == 2
    assert len(err) == len(bad) and all(line.startswith("error: ") for line in err)
    for path in bad:
        assert sum(str(path) in line for line in err) == 1, path
    (too_short,) = [line for line in err if str(short) in line]
    assert "too short (0.20 s)" in too_short and "at least 0.5 s" in too_short
    assert parse_text(out)[0]["file"] == str(good)
    assert "Predicted 1 file(s)" in out and "5 failed" in out


def test_a_model_with_an_unusable_recipe_is_one_line(pipeline, tmp_path, capsys):
    checkpoint = torch.load(pipeline["model"], weights_only=True)
    checkpoint["features"] = {**checkpoint["features"], "window": "foo"}
    torch.save(checkpoint, tmp_path / "model.pt")
    song = recorded_test_tracks(pipeline)[0][0]
    status, out, err = run_main(capsys, "--model", tmp_path / "model.pt", song)
    assert status == 2 and out == "" and len(err) == 1
    assert f"{tmp_path / 'model.pt'}: 'features': 'window' = \"foo\" is not a window" in err[0]


def test_an_unexpected_failure_is_reported_by_its_first_line(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("first line\n  second line")

    monkeypatch.setattr(predict, "file_segments", fail)
    assert predict.analyse("Artist: Song.wav", {}) == (
        None, "Artist: Song.wav: analysis failed (ValueError: first line)")


def test_no_model_says_how_to_train_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(capsys, "song.wav")
    assert status == 2 and out == "" and len(err) == 1
    assert f"no model at {predict.MODEL_PATH}" in err[0]
    assert "`python train.py`" in err[0] and "python train.py --demo" in err[0]
    assert "--model demo/saved_models/final_model_pytorch.pt" in err[0]


def test_a_model_process_that_dies_is_one_line_and_exit_2(pipeline, monkeypatch, capsys):
    monkeypatch.setattr(predict, "own_model_process", lambda workers: True)
    monkeypatch.setattr(predict, "load_classifier", lambda *args: os._exit(9))  # as if killed
    song, _ = recorded_test_tracks(pipeline)[0]
    status, out, err = run_main(capsys, "--model", pipeline["model"], "--workers", 2, song)
    assert status == 2 and out == ""
    assert err == ["error: a worker process died (out of memory?): try again with --workers 1"]


def test_an_unexpected_failure_in_the_model_process_is_one_line(pipeline, monkeypatch, capsys):
    def out_of_memory(clf, mfccs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr(predict, "own_model_process", lambda workers: True)
    monkeypatch.setattr(predict, "classify", out_of_memory)  # the forked process runs it
    song, _ = recorded_test_tracks(pipeline)[0]
    status, out, err = run_main(capsys, "--model", pipeline["model"], "--workers", 2, song)
    assert status == 2 and out.startswith("Model ") and err == [
        f"error: {pipeline['model']}: the model failed in its process (RuntimeError: CUDA out of "
        f"memory. Tried to allocate 2.00 GiB)"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_model_process_ends_when_the_main_process_is_killed(pipeline, tmp_path):
    code = ("import multiprocessing, os, sys, predict\n"
            "with predict.model_process(sys.argv[1], 'cpu') as load:\n"
            "    load()\n"
            "    print(*(p.pid for p in multiprocessing.active_children()), flush=True)\n"
            "    os.kill(os.getpid(), 9)\n")
    with open(tmp_path / "pids", "w") as out:  # a pipe would stay open while the process lives
        done = subprocess.run([sys.executable, "-c", code, pipeline["model"]], cwd=ROOT,
                              stdout=out)
    [pid] = map(int, (tmp_path / "pids").read_text().split())
    assert done.returncode == -9
    try:
        deadline = time.monotonic() + 10
        while process_runs(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_runs(pid)
    finally:
        end_processes([pid])


def test_the_command_line_gives_the_same_predictions_with_its_model_process(pipeline, capsys):
    files = [str(path) for path, _ in recorded_test_tracks(pipeline)][:2]
    status, expected, _ = run_main(capsys, "--model", pipeline["model"], "--workers", 1, *files)
    assert status == 0
    # A fresh interpreter, as users run it: the model gets its own process, so torch is never
    # imported in the main one.
    code = ("import sys, predict\n"
            "status = predict.main(sys.argv[1:])\n"
            "print('torch imported here:', 'torch' in sys.modules)\n"
            "sys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", code, "--model", str(pipeline["model"]),
                           "--workers", "2", *files], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
    out = done.stdout.splitlines()
    assert out[:-2] == expected.splitlines()[:-1]  # all but the timing
    assert out[-1] == "torch imported here: False"


def test_a_model_process_passes_on_the_refusal_of_a_bad_model(tmp_path, monkeypatch, capsys):
    load_only_in_another_process(monkeypatch)
    song = write_audio(tmp_path / "song.wav", 4.0)
    status, out, err = run_main(capsys, "--model", tmp_path / "nothing.pt", "--workers", 2, song)
    assert status == 2 and out == "" and len(err) == 1
    assert err[0].startswith(f"error: no model at {tmp_path / 'nothing.pt'}: train one")


class Payload:
    """Unpickling this object would create a file: a safe load must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.parametrize("content, words", [
    (lambda marker: b"\x00garbage, not a checkpoint" * 10, "not a PyTorch checkpoint"),
    (lambda marker: {"weights": torch.zeros(2)}, "no model_state_dict, num_channels"),
    (lambda marker: torch.zeros(3), "holds a Tensor, not a dict"),
    (lambda marker: {"model_state_dict": Payload(marker)}, "a safe load refuses"),
])
def test_a_file_that_is_not_our_model_is_refused_in_one_line(content, words, tmp_path, capsys):
    path, marker = tmp_path / "model.pt", tmp_path / "code-was-run"
    value = content(marker)
    if isinstance(value, bytes):
        path.write_bytes(value)
    else:
        torch.save(value, path)
    status, out, err = run_main(capsys, "--model", path, tmp_path / "song.wav")
    assert status == 2 and out == "" and len(err) == 1
    assert f"{path} is not a genre model saved by train.py" in err[0] and words in err[0]
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# A model trained on a tutorial data.json (no recipe)


def tutorial_vote(model, path, norm_min, norm_max):
    """The tutorial's way, by hand: librosa.load, one mfcc call per 3-s segment, scale, vote."""
    signal, rate = librosa.load(path, sr=22050)
    size, mfccs = 66150, []
    for start in range(0, len(signal) - size + 1, size):
        mfccs.append(librosa.feature.mfcc(y=signal[start:start + size], sr=rate, n_mfcc=13,
                                          n_fft=2048, hop_length=512).T)
    x = (np.array(mfccs, dtype=np.float32)[:, None] - norm_min) / (norm_max - norm_min)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    votes = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    return votes, probabilities.mean(axis=0)


@pytest.mark.parametrize("workers", [1, 2])  # 2: the files are analysed before the model loads
def test_a_model_without_a_recipe_uses_the_tutorial_one_and_says_so_once(workers, tmp_path,
                                                                         capsys):
    torch.manual_seed(0)
    model = train.GenreClassifier(1, 130, 13, 4).eval()
    mapping = ["blues", "jazz", "metal", "pop"]
    path = tmp_path / "old_model.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3, "num_channels": 1,
                "height": 130, "width": 13, "num_classes": 4, "mapping": mapping,
                "norm_min": -600.0, "norm_max": 250.0}, path)
    songs = [write_audio(tmp_path / f"song{i}.wav", 7, seed=i) for i in range(2)]
    status, out, err = run_main(capsys, "--model", path, "--workers", workers, *songs)
    assert status == 0
    assert (out + "\n".join(err)).count("tutorial recipe assumed") == 1
    assert "test accuracy not recorded" in out
    clf = predict.load_classifier(path)
    assert clf.features_assumed and clf.features == extract.TUTORIAL_FEATURES
    for song, result in zip(songs, parse_text(out), strict=True):
        votes, means = tutorial_vote(model, song, -600.0, 250.0)
        assert result["segments"] == 2 == votes.sum()  # 7 s: two full 3-s segments
        top = result["top"][0]
        assert votes[mapping.index(top["genre"])] == votes.max() == top["votes"]
        assert top["mean_probability"] == pytest.approx(means[mapping.index(top["genre"])],
                                                        abs=1e-3)


def test_the_default_model_is_the_one_train_writes():
    assert pathlib.Path(predict.MODEL_PATH) == pathlib.Path(train.MODEL_SAVE_PATH,
                                                           train.FINAL_MODEL_FILE)


def test_importing_predict_leaves_torch_to_the_model_process():
    # The command line's worker processes fork before torch is imported, light to start, and
    # with more than one worker the model loads in a process of its own.
    code = ("import sys, predict; print(sorted({'torch', 'train'} & set(sys.modules)), "
            "predict.own_model_process(2), predict.own_model_process(1))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["[]", "True", "False"]
    assert not predict.own_model_process(2)  # torch is imported here: a fork must not inherit it


# ---------------------------------------------------------------------------------------------
# README


def readme_section_blocks(title):
    """The fenced code blocks (language, text) of one README section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"### {title}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def test_readme_prediction_examples_run(pipeline, tmp_path, monkeypatch, capsys):
    for model in (predict.MODEL_PATH, "demo/saved_models/final_model_pytorch.pt"):
        (tmp_path / model).parent.mkdir(parents=True)
        shutil.copy(pipeline["model"], tmp_path / model)
    write_audio(tmp_path / "song.mp3", 3, sample_rate=22050, seed=5)
    write_audio(tmp_path / "other.wav", 2, sample_rate=44100, channels=2, seed=6)
    shutil.copytree(pipeline["root"] / "audio" / "rock", tmp_path / "some_folder")
    monkeypatch.chdir(tmp_path)
    blocks = readme_section_blocks("Using the trained model: `predict.py`")
    commands = [line for language, block in blocks if language == "bash"
                for line in block.splitlines() if line.startswith("python predict.py")]
    assert commands
    for command in commands:
        args = shlex.split(command.split("#")[0])[2:]
        assert predict.main(args) == 0, command
        assert "song.mp3" in capsys.readouterr().out
    (code,) = [block for language, block in blocks if language == "python"]
    exec(compile(code, "README.md", "exec"), {})
    assert "song.mp3" in capsys.readouterr().out
