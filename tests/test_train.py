"""Tests of train.py: the model, the best weights, the files it writes or refuses to write, signals,
NaN, the ONNX export and k-fold cross-validation, against independent references."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import zipfile

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

import model
import plots
import preprocess
import train
from common import TEMP_SUFFIX
from conftest import ROOT, tiny_data, write_json

RUN_ARGS = ["--epochs", "12", "--patience", "3", "--lr", "0.01", "--device", "cpu", "--no-plots"]


def noisy_data():
    """tiny_data with each track's genre drawn at random: nothing to learn, so the validation loss
    bottoms out early and early stopping fires (genres stay balanced, tracks whole)."""
    data = tiny_data()
    genre_of_track = np.random.default_rng(1).permutation(np.repeat(np.arange(3), 10))
    data["labels"] = [int(genre_of_track[row // 4]) for row in range(len(data["labels"]))]
    return data


def start(*args, cwd, **kwargs):
    """train.py in a subprocess, its output unbuffered so that lines arrive as printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd,
                            env=env, text=True, **kwargs)


def terminate_after_first_save(process):
    """Send SIGTERM once the process says it saved a best model; keep reading its output."""
    for line in process.stdout:
        if line.startswith("  ✓ Saved best model"):
            process.send_signal(signal.SIGTERM)
            break
    process.stdout.read()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with two data sets. The two subprocess runs start here at once, on a cache built
    beforehand, so that they run while the in-process tests do."""
    folder = tmp_path_factory.mktemp("train")
    write_json(noisy_data(), folder / "data.json")
    write_json(tiny_data(), folder / "clean.json")
    preprocess.load_data(folder / "clean.json", folder / "clean.npz")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line, as `| head` has later
    common = ["--data", "clean.json", "--cache", "clean.npz", "--device", "cpu", "--no-plots"]
    closed = start(*common, "--model-dir", "closed", "--epochs", "3", cwd=folder,
                   stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    term = start(*common, "--model-dir", "term", "--epochs", "2000", "--patience", "2000",
                 cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watcher = threading.Thread(target=terminate_after_first_save, args=(term,))
    watcher.start()
    yield folder, closed, (term, watcher)
    for process in (closed, term):
        process.kill()
        process.communicate()
    watcher.join()


@pytest.fixture(scope="module")
def run(workdir):
    """One in-process training run with early stopping: its folder and model folder."""
    folder = workdir[0]
    args = ["--data", folder / "data.json", "--cache", folder / "cache.npz", "--model-dir",
            folder / "models", *RUN_ARGS]
    assert train.main(list(map(str, args))) == 0
    return folder, folder / "models"


def paths(folder, models):
    return ["--data", str(folder / "data.json"), "--cache", str(folder / "cache.npz"),
            "--model-dir", str(models)]


def load(path):
    return torch.load(path, weights_only=True, map_location="cpu")


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_architecture_by_hand():
    net = model.GenreClassifier(1, 130, 13, 10)
    # conv 1x32x3x3+32, bn 2x32, conv 32x48x3x3+48, bn 2x48, fc (48 x 32 x 3) x 64 + 64, bn 2x64,
    # fc 64x10+10: the pools halve 130x13 to 65x6, then 32x3.
    expected = 320 + 64 + 13_872 + 96 + (4608 * 64 + 64) + 128 + 650
    assert sum(p.numel() for p in net.parameters()) == expected == 310_106
    assert net.fc1.in_features == 48 * 32 * 3
    assert net.eval()(torch.zeros(5, 1, 130, 13)).shape == (5, 10)


def test_the_best_weights_are_restored_and_saved(run):
    folder, models = run
    history = read(models / plots.HISTORY_FILE)
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    assert best_epoch < len(history["val_loss"]) < 12  # early stopping ended it after the best
    best, final = load(models / train.BEST_MODEL_FILE), load(models / train.FINAL_MODEL_FILE)
    assert best["epoch"] == final["epoch"] == best_epoch
    assert read(models / plots.METRICS_FILE)["epoch"] == best_epoch
    for key, value in best["model_state_dict"].items():
        assert torch.equal(value, final["model_state_dict"][key]), key
    # Independently: the saved weights give the best epoch's validation loss on the cache's data.
    net, _ = model.load_model(models / train.FINAL_MODEL_FILE)
    with np.load(folder / "cache.npz") as cache:
        x, y = torch.from_numpy(cache["X_val"]), torch.from_numpy(cache["y_val"])
    with torch.no_grad():
        loss = F.cross_entropy(net(x), y).item()
    assert loss == pytest.approx(min(history["val_loss"]), rel=1e-5)


def test_checkpoint_round_trip(run):
    folder, models = run
    checkpoint = load(models / train.FINAL_MODEL_FILE)
    assert checkpoint["mapping"] == read(models / train.MAPPING_FILE) == tiny_data()["mapping"]
    assert (checkpoint["num_channels"], checkpoint["height"], checkpoint["width"]) == (1, 16, 8)
    assert checkpoint["train_config"]["lr"] == 0.01 and checkpoint["split"]["split_kind"] == "track"
    net, _ = model.load_model(models / train.FINAL_MODEL_FILE)
    with np.load(folder / "cache.npz") as cache:
        x, y = torch.from_numpy(cache["X_test"]), cache["y_test"]
        assert (checkpoint["norm_min"], checkpoint["norm_max"]) == (cache["norm_min"],
                                                                    cache["norm_max"])
    with torch.no_grad():
        accuracy = float((net(x).argmax(dim=1).numpy() == y).mean())
    metrics = read(models / plots.METRICS_FILE)
    assert checkpoint["test_accuracy"] == pytest.approx(accuracy) == metrics["accuracy"]
    assert load(models / train.BEST_MODEL_FILE)["test_accuracy"] == checkpoint["test_accuracy"]


def test_onnx_gives_the_torch_probabilities(run):
    _, models = run
    net, checkpoint = model.load_model(models / train.FINAL_MODEL_FILE)
    raw = np.array(noisy_data()["mfcc"], dtype=np.float32)[:, None]
    with torch.no_grad():
        expected = model.Deployed(net, checkpoint["norm_min"], checkpoint["norm_max"]).eval()(
            torch.from_numpy(raw)).numpy()
    session = onnxruntime.InferenceSession(str(models / train.ONNX_FILE))
    (got,) = session.run(None, {session.get_inputs()[0].name: raw})
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    # The card read back from the file's metadata is the checkpoint's.
    card = json.loads(session.get_modelmeta().custom_metadata_map[model.ONNX_CARD_KEY])
    for key in ("mapping", "features", "norm_min", "norm_max", "num_channels", "height", "width",
                "test_accuracy", "versions", "trained_at"):
        assert card[key] == checkpoint[key], key


def test_export_only_writes_what_training_wrote(run, tmp_path, capsys):
    _, models = run
    shutil.copy(models / train.FINAL_MODEL_FILE, tmp_path / train.FINAL_MODEL_FILE)
    assert train.main(["--export-only", "--model-dir", str(tmp_path)]) == 0
    trained, exported = (onnx.load(str(folder / train.ONNX_FILE)) for folder in (models, tmp_path))
    assert trained.graph == exported.graph
    assert trained.metadata_props == exported.metadata_props
    assert str(tmp_path / train.ONNX_FILE) in capsys.readouterr().out


def word_document(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")


FOREIGN = {  # a file of the user's under each kind of name train.py writes
    "docx": (train.BEST_MODEL_FILE, word_document),
    "checkpoint": (train.FINAL_MODEL_FILE, lambda path: torch.save({"w": torch.zeros(3)}, path)),
    "png": (plots.CURVES_FILE, lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))),
    "json": (plots.METRICS_FILE, lambda path: path.write_text('{"accuracy": 0.9}')),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_foreign_file_is_never_replaced(run, tmp_path, capsys, kind):
    folder, _ = run
    name, make = FOREIGN[kind]
    make(tmp_path / name)
    before = (tmp_path / name).read_bytes()
    assert train.main(paths(folder, tmp_path) + RUN_ARGS) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and name in err
    assert (tmp_path / name).read_bytes() == before
    assert os.listdir(tmp_path) == [name]


def test_a_full_disk_is_one_line_and_keeps_the_old_files(run, tmp_path, capsys, monkeypatch):
    folder, models = run
    shutil.copytree(models, tmp_path / "models")
    before = {p.name: p.read_bytes() for p in (tmp_path / "models").iterdir()}
    old = load(models / train.FINAL_MODEL_FILE)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every atomic write syncs before it replaces
    assert train.main(paths(folder, tmp_path / "models") + RUN_ARGS) == 2
    out, err = capsys.readouterr()
    # Retraining first said what it would replace.
    assert f"(test accuracy {old['test_accuracy']:.2%}, trained {old['trained_at']})" in out
    assert err.count("\n") == 1 and "disk is full" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "models").iterdir()} == before


def test_a_nan_loss_stops_the_run_and_saves_nothing(run, tmp_path, capsys):
    folder, _ = run
    args = paths(folder, tmp_path / "nan") + RUN_ARGS + ["--lr", "1e30"]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr" in err and "nan" in err
    assert not (tmp_path / "nan").exists()  # created by the run, left empty, removed


def test_a_loss_that_turns_nan_keeps_the_best_model_before_it(run, tmp_path, capsys,
                                                               monkeypatch):
    folder, _ = run
    real_epoch, calls = train.train_one_epoch, []

    def nan_in_epoch_3(*args):
        calls.append(1)
        loss, accuracy = real_epoch(*args)
        return (float("nan") if len(calls) == 3 else loss), accuracy

    monkeypatch.setattr(train, "train_one_epoch", nan_in_epoch_3)
    assert train.main(paths(folder, tmp_path / "m") + RUN_ARGS) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epoch 3" in err and "tested and saved" in err
    history = read(tmp_path / "m" / plots.HISTORY_FILE)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    final = load(tmp_path / "m" / train.FINAL_MODEL_FILE)
    assert final["epoch"] == int(np.argmin(history["val_loss"])) + 1
    assert np.isfinite(final["test_loss"])


def test_an_interrupt_before_the_first_epoch_saves_nothing(run, tmp_path, capsys, monkeypatch):
    folder, _ = run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocess, "load_data", interrupted)
    assert train.main(paths(folder, tmp_path / "models") + RUN_ARGS) == 130
    assert "nothing was saved" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------------------------------------
# Cross-validation


@pytest.fixture(scope="module")
def cv_run(workdir, tmp_path_factory):
    """--folds 3 on the clean tiny data, twice; the rows each fold trained, validated and
    tested on, as preprocess.prepare received them."""
    folder, runs, seen = workdir[0], [], []
    real_prepare = preprocess.prepare

    def spy(dataset, kind, rows, settings):
        seen.append([dataset.tracks[part] for part in rows])
        return real_prepare(dataset, kind, rows, settings)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocess, "prepare", spy)
        for name in ("cv1", "cv2"):
            args = ["--data", str(folder / "clean.json"), "--model-dir", str(folder / name),
                    "--folds", "3", "--epochs", "2", "--device", "cpu", "--no-plots"]
            assert train.main(args) == 0
            runs.append(folder / name / plots.CV_METRICS_FILE)
    return runs, seen[:3]


def test_folds_partition_the_tracks_as_stratified_group_k_fold_does(cv_run):
    (first, _), seen = cv_run
    data = tiny_data()
    tracks, y = np.array(data["tracks"]), np.array(data["labels"])
    splitter = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=42)
    expected = [sorted(set(tracks[test])) for _, test in splitter.split(y, y, tracks)]
    summary = read(first)
    assert [run["test_tracks"] for run in summary["runs"]] == expected
    assert sorted(sum(expected, [])) == sorted(set(tracks))  # every track tested exactly once
    for (train_part, val_part, test_part), test_tracks in zip(seen, expected):
        assert set(test_part) == set(test_tracks)
        assert not set(train_part) & set(test_part) and not set(val_part) & set(test_part)
        assert not set(train_part) & set(val_part)
        assert len(set(train_part) | set(val_part) | set(test_part)) == 30


def test_the_cv_summary_is_the_folds_mean_and_sample_std(cv_run):
    (first, _), _ = cv_run
    summary = read(first)
    assert (summary["folds"], summary["split_by"], summary["incomplete"]) == (3, "track", False)
    for key in ("accuracy", "track_accuracy"):
        figures = [run[key] for run in summary["runs"]]
        assert summary[key]["mean"] == pytest.approx(np.mean(figures))
        assert summary[key]["std"] == pytest.approx(np.std(figures, ddof=1))
    assert np.sum(summary["confusion_matrix"]) == 120  # every segment counted once
    assert np.sum(summary["track_level"]["confusion_matrix"]) == 30  # every track once
    assert sum(run["test_segments"] for run in summary["runs"]) == 120
    assert [g["total"] for g in summary["per_genre"].values()] == [40, 40, 40]


def test_two_cv_runs_write_identical_metrics(cv_run):
    (first, second), _ = cv_run
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("extra", [["--folds", "11"], ["--folds", "3", "--test-split", "0.2"],
                                   ["--folds", "3", "--plots-only"]])
def test_impossible_cross_validations_are_refused_in_one_line(workdir, capsys, extra):
    folder = workdir[0]
    args = ["--data", str(folder / "clean.json"), "--model-dir", str(folder / "refused"), *extra]
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--folds" in err
    assert not (folder / "refused").exists()


def test_cross_validation_without_tracks_folds_segments(workdir, capsys):
    folder, data = workdir[0], tiny_data()
    del data["tracks"]
    write_json(data, folder / "untracked.json")
    args = ["--data", str(folder / "untracked.json"), "--model-dir", str(folder / "untracked"),
            "--folds", "2", "--epochs", "1", "--device", "cpu", "--no-plots"]
    assert train.main(args) == 0
    assert "optimistic" in capsys.readouterr().out
    summary = read(folder / "untracked" / plots.CV_METRICS_FILE)
    assert (summary["split_by"], summary["track_accuracy"], summary["track_level"]) == (
        "segment", None, None)
    y = np.array(data["labels"])
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=42).split(y, y)
    assert [run["test_segments"] for run in summary["runs"]] == [len(test) for _, test in folds]
    assert np.sum(summary["confusion_matrix"]) == 120


def test_plots_only_draws_the_run_and_the_pooled_cv_pictures(run, cv_run, tmp_path, capsys):
    (cv_metrics, _), _ = cv_run
    for source in (run[1] / plots.HISTORY_FILE, run[1] / plots.METRICS_FILE, cv_metrics):
        shutil.copy(source, tmp_path)
    assert train.main(["--plots-only", "--model-dir", str(tmp_path)]) == 0
    sizes = {plots.CURVES_FILE: (1440, 600), plots.CONFUSION_FILE: (1584, 756),
             plots.CV_CONFUSION_FILE: (1584, 756)}  # inches x DPI; two panels: segment, track
    for name, size in sizes.items():
        head = (tmp_path / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and plots.is_picture(tmp_path / name)
        assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == size
    assert capsys.readouterr().out.count(str(tmp_path)) == 3


# Checked last: the two subprocess runs have been running beside all the tests above.


def test_sigterm_during_training_tests_and_saves_the_best_model(workdir):
    folder, _, (term, watcher) = workdir
    watcher.join(timeout=60)
    assert term.wait(timeout=60) == 143
    err = term.stderr.read()
    assert err.strip().count("\n") == 0 and err.startswith("Terminated in epoch")
    models = folder / "term"
    assert isinstance(load(models / train.FINAL_MODEL_FILE)["test_accuracy"], float)
    assert read(models / plots.METRICS_FILE)["interrupted"] is True
    assert (models / train.ONNX_FILE).exists()
    assert not [name for name in os.listdir(models) if name.endswith(TEMP_SUFFIX)]


def test_a_closed_stdout_does_not_stop_training(workdir):
    folder, closed, _ = workdir
    _, err = closed.communicate(timeout=60)
    assert (closed.returncode, err) == (0, "")
    for name in (train.FINAL_MODEL_FILE, train.ONNX_FILE, plots.METRICS_FILE):
        assert (folder / "closed" / name).stat().st_size > 0
