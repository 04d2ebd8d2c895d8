"""Tests of plots.py and of the pictures train.py draws: PNG files, the numbers drawn, redrawing."""
import shutil
import struct
import sys

import numpy as np
import pytest

import plots
import preprocess
import train
from conftest import TINY, read_json, write_json_file

# Tiny but learnable: 3 genres x 10 tracks x 4 segments of 16 x 8.
PICTURES = [plots.CURVES_FILE, plots.CONFUSION_FILE]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train_tiny(folder, *args):
    """train.main on a tiny data set in folder; returns the exit status."""
    if not (folder / "data.json").exists():
        write_json_file(preprocess.make_demo_data(**TINY), folder / "data.json")
    paths = ["--data", folder / "data.json", "--cache", folder / "cache.npz",
             "--model-dir", folder / "models", "--device", "cpu"]
    return train.main([str(a) for a in [*paths, *args]])


def png_size(path):
    """(width, height) from the IHDR chunk of a PNG file; fails if it is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path.name} does not start with an IHDR chunk"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def no_plots_run(tmp_path_factory):
    """One tiny training run with --no-plots: (its model folder, the PNG files it wrote)."""
    folder = tmp_path_factory.mktemp("run")
    assert train_tiny(folder, "--epochs", "2", "--no-plots") == 0
    return folder / "models", sorted((folder / "models").glob("*.png"))


@pytest.fixture(scope="module")
def run_dir(no_plots_run):
    """That run's model folder with its pictures drawn afterwards by --plots-only."""
    models, _ = no_plots_run
    assert train.main(["--plots-only", "--model-dir", str(models)]) == 0
    return models


def copy_run(run_dir, target):
    """A model folder holding only the run's two JSON files (no data, no checkpoints)."""
    target.mkdir()
    for name in (plots.HISTORY_FILE, plots.METRICS_FILE):
        shutil.copy(run_dir / name, target / name)
    return target


def block_matplotlib(monkeypatch):
    """Make every `import matplotlib...` fail, as if it were not installed."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


# ---------------------------------------------------------------------------------------------
# Pictures of a run


def test_a_run_writes_both_pictures_as_pngs_of_a_screen_size(run_dir):
    for name in PICTURES:
        width, height = png_size(run_dir / name)
        assert 1000 <= width <= 1700 and 450 <= height <= 1100, (name, width, height)
        assert (run_dir / name).stat().st_size < 300_000, name
    assert not list(run_dir.glob(".*.tmp"))


def test_curve_data_equal_the_history(run_dir):
    history = read_json(run_dir / plots.HISTORY_FILE)
    metrics = read_json(run_dir / plots.METRICS_FILE)
    data = plots.curve_data(history, metrics)
    assert data["epochs"] == [1, 2]
    assert data["loss"] == {"training": history["loss"], "validation": history["val_loss"]}
    assert data["accuracy"]["training"] == pytest.approx([100 * a for a in history["accuracy"]])
    assert data["accuracy"]["validation"] == pytest.approx(
        [100 * a for a in history["val_accuracy"]])
    assert data["best_epoch"] == metrics["epoch"] == int(np.argmin(history["val_loss"])) + 1
    assert data["test_accuracy"] == pytest.approx(100 * metrics["accuracy"])
    assert metrics["early_stopped"] is False and data["stop"] == "all epochs"
    assert f"best epoch {metrics['epoch']}" in data["title"]


def test_confusion_data_equal_the_test_metrics(run_dir):
    metrics = read_json(run_dir / plots.METRICS_FILE)
    segments, tracks = plots.confusion_data(metrics)
    genres = read_json(run_dir / train.MAPPING_FILE)
    for panel, source in ((segments, metrics), (tracks, metrics["track_level"])):
        assert panel["genres"] == genres == list(metrics["per_genre"])
        assert panel["counts"].tolist() == source["confusion_matrix"]
        assert panel["accuracy"] == source["accuracy"]
        assert f"{100 * source['accuracy']:.1f} %" in panel["title"]
        totals = panel["counts"].sum(axis=1)
        np.testing.assert_allclose(panel["row_share"], panel["counts"] / totals[:, None])
    assert segments["total"] == sum(s["total"] for s in metrics["per_genre"].values())
    track_level = metrics["track_level"]
    assert (tracks["correct"], tracks["total"]) == (track_level["correct"], track_level["total"])
    per_track = [(s["correct"], s["total"]) for s in track_level["per_genre"].values()]
    counts = np.array(track_level["confusion_matrix"])
    assert per_track == list(zip(np.diag(counts).tolist(), counts.sum(axis=1).tolist()))


@pytest.mark.parametrize("recorded,expected", [
    ({"early_stopped": True, "interrupted": False}, "early stopping"),
    ({"early_stopped": False, "interrupted": True}, "interrupted"),
    ({"early_stopped": False, "interrupted": False}, "all epochs"),
    ({}, None),  # a folder written before the ending was recorded
])
def test_the_ending_of_training_is_shown(recorded, expected):
    history = {"loss": [1.0, 0.5, 0.6, 0.7], "val_loss": [1.1, 0.9, 1.0, 1.2],
               "accuracy": [0.5, 0.6, 0.7, 0.8], "val_accuracy": [0.4, 0.5, 0.5, 0.4]}
    data = plots.curve_data(history, {"epoch": 2, "accuracy": 0.5, **recorded})
    assert data["stop"] == expected
    if expected == "early stopping":
        assert "early stopping after epoch 4 (2 epochs without" in data["title"]
    if expected == "interrupted":
        assert "interrupted (Ctrl-C) after epoch 4" in data["title"]


def test_an_empty_genre_has_no_row_share():
    metrics = {"per_genre": {"a": {}, "b": {}}, "accuracy": 1.0,
               "confusion_matrix": [[3, 0], [0, 0]]}
    (panel,) = plots.confusion_data(metrics)
    assert panel["row_share"][0].tolist() == [1.0, 0.0]
    assert np.isnan(panel["row_share"][1]).all()


# ---------------------------------------------------------------------------------------------
# Redrawing, switching off, and running without matplotlib


def test_plots_only_redraws_an_older_folder_from_its_json_files(run_dir, tmp_path, capsys):
    folder = copy_run(run_dir, tmp_path / "old")
    metrics = read_json(folder / plots.METRICS_FILE)
    del metrics["early_stopped"], metrics["track_level"]["confusion_matrix"]  # older train.py
    write_json_file(metrics, folder / plots.METRICS_FILE)
    assert train.main(["--plots-only", "--model-dir", str(folder)]) == 0
    for name in PICTURES:
        png_size(folder / name)
    assert str(folder / plots.CONFUSION_FILE) in capsys.readouterr().out
    assert len(plots.confusion_data(metrics)) == 1  # no track matrix to draw


def test_plots_only_on_a_folder_without_a_run_is_one_line_exit_2(tmp_path, capsys):
    assert train.main(["--plots-only", "--model-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and plots.HISTORY_FILE in err[0] and "train.py" in err[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,damage", [
    (plots.HISTORY_FILE, lambda history: "{\"loss\": [1.0"),  # cut short
    (plots.METRICS_FILE, lambda metrics: {k: v for k, v in metrics.items() if k != "epoch"}),
    (plots.METRICS_FILE, lambda metrics: {**metrics, "confusion_matrix": [[1, 2], [3, 4]]}),
])
def test_plots_only_on_damaged_json_is_one_line_exit_2(run_dir, tmp_path, capsys, name, damage):
    folder = copy_run(run_dir, tmp_path / "damaged")
    write_json_file(damage(read_json(folder / name)), folder / name)
    assert train.main(["--plots-only", "--model-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and "train.py" in err[0]
    assert not list(folder.glob("*.png"))


def test_plots_only_cannot_be_combined_with_no_plots(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--plots-only", "--model-dir", "models", "--no-plots"])
    assert exit_info.value.code == 2 and "--plots-only" in capsys.readouterr().err


def test_no_plots_writes_no_pictures(no_plots_run):
    models, pictures = no_plots_run
    assert (models / train.METRICS_FILE).is_file() and pictures == []


def test_training_without_matplotlib_succeeds_with_one_note(run_dir, tmp_path, monkeypatch, capsys):
    block_matplotlib(monkeypatch)
    assert train_tiny(tmp_path, "--epochs", "1") == 0
    models = tmp_path / "models"
    assert (models / train.FINAL_MODEL_FILE).is_file() and not list(models.glob("*.png"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pip install matplotlib" in err[0] and f"--plots-only --model-dir {models}" in err[0]
    folder = copy_run(run_dir, tmp_path / "copy")
    assert train.main(["--plots-only", "--model-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install matplotlib" in err[0]
