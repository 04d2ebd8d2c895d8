"""Tests of train.py: the model, the training loop, checkpoints, metrics and the command line."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

import preprocess
import train
from conftest import ROOT, TINY, load_npz, read_json, write_json_file

# Tiny but learnable: 3 genres x 10 tracks x 4 segments of 16 x 8.
ARTIFACTS = [train.BEST_MODEL_FILE, train.FINAL_MODEL_FILE, train.MAPPING_FILE,
             train.HISTORY_FILE, train.METRICS_FILE]


@pytest.fixture
def workdir(tmp_path):
    """A folder with a tiny data.json; returns the folder."""
    write_json_file(preprocess.make_demo_data(**TINY), tmp_path / "data.json")
    return tmp_path


def run_train(folder, *args):
    """train.main on folder's data.json, cache and model folder; returns the exit status."""
    # Pictures are tested in test_plots.py; drawing them in every run here would only cost time.
    paths = ["--data", folder / "data.json", "--cache", folder / "cache.npz",
             "--model-dir", folder / "models", "--device", "cpu", "--no-plots"]
    return train.main([str(a) for a in [*paths, *args]])


def weights(path):
    """The model_state_dict of a checkpoint, loaded the safe way."""
    return torch.load(path, weights_only=True, map_location="cpu")["model_state_dict"]


def assert_same_weights(a, b):
    """Every tensor of two state dicts is equal."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------
# Model


@pytest.mark.parametrize("shape", [(1, 130, 13), (3, 20, 9)])
def test_model_output_shape(shape):
    model = train.GenreClassifier(*shape, num_classes=10).eval()
    assert model(torch.zeros(5, *shape)).shape == (5, 10)


def test_flattened_size_follows_the_design():
    model = train.GenreClassifier(1, 130, 13, 10)
    assert model.fc1.in_features == 48 * 32 * 3


@pytest.mark.parametrize("height,width", [(3, 13), (130, 2)])
def test_too_small_input_is_rejected(height, width):
    with pytest.raises(ValueError, match="too small"):
        train.GenreClassifier(1, height, width, 10)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 16, 8), torch.arange(16) % 4
    model = train.GenreClassifier(1, 16, 8, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    config = train.TrainConfig(batch_size=16)
    generator = torch.Generator().manual_seed(0)
    first, _ = train.train_one_epoch(model, optimizer, x, y, config, generator)
    for _ in range(20):
        last, _ = train.train_one_epoch(model, optimizer, x, y, config, generator)
    assert last < 0.5 * first


def test_gradients_are_clipped_to_the_configured_norm():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 16, 8), torch.arange(16) % 4
    steps = {}
    for clip in (1e-3, 1e6):
        torch.manual_seed(1)
        model = train.GenreClassifier(1, 16, 8, 4)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        # Plain SGD with lr 1 moves the weights by exactly the (clipped) gradient.
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        config = train.TrainConfig(batch_size=16, grad_clip=clip)
        train.train_one_epoch(model, optimizer, x, y, config, torch.Generator().manual_seed(0))
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        steps[clip] = torch.linalg.vector_norm(after - before).item()
    assert steps[1e-3] == pytest.approx(1e-3, rel=1e-3)
    assert steps[1e6] > 100 * steps[1e-3]


def test_evaluation_loss_is_a_per_segment_mean_whatever_the_batch_size():
    torch.manual_seed(0)
    model = train.GenreClassifier(1, 16, 8, 3).eval()
    x, y = torch.randn(50, 1, 16, 8), torch.arange(50) % 3
    expected = F.cross_entropy(model(x), y).item()
    for batch_size in (7, 50, 1024):
        loss, _, _ = train.evaluate(model, x, y, batch_size)
        assert loss == pytest.approx(expected, rel=1e-5)


def test_track_vote_majority_and_tie_break():
    probabilities = np.array([
        [0.6, 0.3, 0.1],  # track a: two votes for 0, one for 2 -> 0
        [0.5, 0.1, 0.4],
        [0.1, 0.2, 0.7],
        [0.9, 0.05, 0.05],  # track b: one vote each for 0 and 1, tie -> higher mean: 1
        [0.0, 0.99, 0.01],  # mean of class 0 = 0.45, class 1 = 0.52
        [0.2, 0.3, 0.5],  # track c: single segment -> 2
    ])
    tracks = {"a": [0, 1, 2], "b": [3, 4], "c": [5]}
    votes = {track: train.vote_segments(probabilities[rows])[0] for track, rows in tracks.items()}
    assert votes == {"a": 0, "b": 1, "c": 2}
    rows = train.rows_by_track(["a", "a", "a", "b", "b", "c"])
    assert {track: list(r) for track, r in rows.items()} == tracks


# ---------------------------------------------------------------------------------------------
# Training runs


def test_early_stopping_fires_patience_epochs_after_the_best(tmp_path, capsys):
    data = preprocess.make_demo_data(**TINY)
    data["labels"] = np.random.default_rng(0).integers(0, 3, len(data["labels"])).tolist()
    del data["tracks"]  # random labels would give a track two genres
    write_json_file(data, tmp_path / "data.json")
    assert run_train(tmp_path, "--epochs", "40", "--patience", "3", "--lr", "0.01") == 0
    history = read_json(tmp_path / "models" / train.HISTORY_FILE)
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    assert len(history["val_loss"]) == best_epoch + 3 < 40
    assert "Early stopping:" in capsys.readouterr().out
    models = tmp_path / "models"
    assert_same_weights(weights(models / train.FINAL_MODEL_FILE), weights(models / train.BEST_MODEL_FILE))
    metrics = read_json(models / train.METRICS_FILE)
    assert metrics["epoch"] == best_epoch and metrics["early_stopped"] is True


def test_best_weights_are_restored_without_early_stopping(workdir, capsys):
    assert run_train(workdir, "--epochs", "6", "--patience", "100", "--lr", "0.05") == 0
    models = workdir / "models"
    history = read_json(models / train.HISTORY_FILE)
    best = torch.load(models / train.BEST_MODEL_FILE, weights_only=True, map_location="cpu")
    assert len(history["val_loss"]) == 6
    assert best["epoch"] < 6  # otherwise the last weights would be the best ones anyway
    assert best["epoch"] == int(np.argmin(history["val_loss"])) + 1
    assert best["val_loss"] == pytest.approx(min(history["val_loss"]))
    assert_same_weights(weights(models / train.FINAL_MODEL_FILE), best["model_state_dict"])
    assert "Early stopping:" not in capsys.readouterr().out


def test_artifacts_load_safely_and_metrics_match_the_saved_model(workdir):
    assert run_train(workdir, "--epochs", "3") == 0
    models = workdir / "models"
    for name in ARTIFACTS:
        assert (models / name).is_file(), name
    best = torch.load(models / train.BEST_MODEL_FILE, weights_only=True, map_location="cpu")
    assert {"model_state_dict", "optimizer_state_dict", "epoch", "val_loss", "val_accuracy"} <= best.keys()
    final = torch.load(models / train.FINAL_MODEL_FILE, weights_only=True, map_location="cpu")
    cache = load_npz(workdir / "cache.npz")
    assert final["mapping"] == cache["mapping"].tolist() == read_json(models / train.MAPPING_FILE)
    assert (final["num_channels"], final["height"], final["width"]) == cache["X_test"].shape[1:]
    assert (final["norm_min"], final["norm_max"]) == (cache["norm_min"], cache["norm_max"])

    model = train.load_model(models / train.FINAL_MODEL_FILE, "cpu")
    with torch.no_grad():
        predicted = model(torch.from_numpy(cache["X_test"])).argmax(dim=1).numpy()
    truth = cache["y_test"]
    metrics = read_json(models / train.METRICS_FILE)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == truth))
    assert metrics["confusion_matrix"] == confusion_matrix(truth, predicted, labels=[0, 1, 2]).tolist()
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, labels=[0, 1, 2],
                                                               zero_division=0)
    for label, genre in enumerate(final["mapping"]):
        scores = metrics["per_genre"][genre]
        assert scores["total"] == np.sum(truth == label)
        assert scores["correct"] == np.sum((truth == label) & (predicted == label))
        assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx(
            (precision[label], recall[label], f1[label]))


def test_console_follows_the_design(workdir, capsys):
    assert run_train(workdir, "--epochs", "2") == 0
    out = capsys.readouterr().out
    expected_in_order = [
        "PyTorch Training Pipeline for Music Genre Classification", "GPU not available, using CPU",
        "Model configuration:", "Input shape: (C=1, H=16, W=8)", "Number of classes: 3",
        "Starting training...", "Device: cpu, Batch size: 64, Learning rate: 0.0008 (fixed)",
        "Weight decay (L2): 0.0002", "Max epochs: 2, Early stopping patience: 8",
        "Epoch 1/2", "Train Loss: ", "Val Loss: ", "✓ Saved best model (val_acc: ", "Epoch 2/2",
        "Test Results:", "Loss: ", "Accuracy: ", "Per-genre accuracy:", "Track-level accuracy",
        train.FINAL_MODEL_FILE,
    ]
    position = 0
    for text in expected_in_order:
        found = out.find(text, position)
        assert found >= 0, f"{text!r} missing or out of order"
        position = found
    assert "\r" not in out  # no progress bar in a captured (non-terminal) stream


def test_optimizer_uses_the_flags(workdir):
    assert run_train(workdir, "--epochs", "1", "--lr", "0.003", "--weight-decay", "0.01") == 0
    best = torch.load(workdir / "models" / train.BEST_MODEL_FILE, weights_only=True,
                      map_location="cpu")
    (group,) = best["optimizer_state_dict"]["param_groups"]
    assert (group["lr"], group["weight_decay"]) == (0.003, 0.01)


def test_another_seed_gives_another_run(workdir):
    histories = []
    for seed in ("1", "2"):
        assert run_train(workdir, "--epochs", "2", "--seed", seed, "--model-dir", workdir / seed) == 0
        histories.append(read_json(workdir / seed / train.HISTORY_FILE))
    assert histories[0] != histories[1]


def test_track_level_accuracy_matches_a_vote_recomputed_from_the_saved_model(workdir):
    assert run_train(workdir, "--epochs", "3") == 0
    cache = load_npz(workdir / "cache.npz")
    model = train.load_model(workdir / "models" / train.FINAL_MODEL_FILE, "cpu")
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(cache["X_test"])), dim=1).numpy()
    correct = 0
    tracks = cache["tracks_test"]
    for track in set(tracks.tolist()):
        rows = tracks == track
        votes = np.bincount(probabilities[rows].argmax(axis=1), minlength=3)
        mean = probabilities[rows].mean(axis=0)
        winner = max(np.flatnonzero(votes == votes.max()), key=lambda label: mean[label])
        correct += winner == cache["y_test"][rows][0]
    track_level = read_json(workdir / "models" / train.METRICS_FILE)["track_level"]
    assert (track_level["correct"], track_level["total"]) == (correct, len(set(tracks.tolist())))
    assert_tracks_listed_with_their_votes(track_level["tracks"], cache, probabilities)


def assert_tracks_listed_with_their_votes(listed, cache, probabilities):
    """Each test track appears once, with its true genre and the vote of its segments."""
    mapping, tracks = cache["mapping"].tolist(), cache["tracks_test"]
    assert sorted(t["track"] for t in listed) == sorted(set(tracks.tolist()))
    for entry in listed:
        rows = tracks == entry["track"]
        predicted = probabilities[rows].argmax(axis=1)
        label = mapping.index(entry["predicted_genre"])
        assert entry["true_genre"] == mapping[cache["y_test"][rows][0]]
        assert (entry["votes"], entry["segments"]) == (np.sum(predicted == label), rows.sum())
        assert entry["votes"] == np.bincount(predicted).max()  # a majority, possibly tied
        assert entry["vote_share"] == pytest.approx(entry["votes"] / entry["segments"])
        assert entry["mean_probability"] == pytest.approx(probabilities[rows, label].mean())


def plain_values(value):
    """True when a checkpoint value is made only of the types weights_only is meant for."""
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and plain_values(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain_values(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool, torch.Tensor))


def test_checkpoints_say_how_they_were_made(workdir):
    args = ["--epochs", "2", "--seed", "3", "--lr", "0.002", "--split-seed", "5",
            "--val-split", "0.25"]
    assert run_train(workdir, *args) == 0
    models = workdir / "models"
    metrics = read_json(models / train.METRICS_FILE)
    expected_config = {"epochs": 2, "batch_size": train.BATCH_SIZE, "lr": 0.002,
                       "weight_decay": train.WEIGHT_DECAY, "grad_clip": train.GRADIENT_CLIP,
                       "patience": train.EARLY_STOPPING_PATIENCE, "seed": 3,
                       "bn_stats": train.BN_STATS}
    digest = hashlib.sha256((workdir / "data.json").read_bytes()).hexdigest()
    best, final = (torch.load(models / name, weights_only=True, map_location="cpu")
                   for name in (train.BEST_MODEL_FILE, train.FINAL_MODEL_FILE))
    for checkpoint in (best, final):
        assert plain_values(checkpoint)
        assert checkpoint["train_config"] == expected_config
        assert checkpoint["split"] == {"val_split": 0.25, "test_split": preprocess.TEST_SPLIT,
                                       "seed": 5, "split_by": "auto", "split_kind": "track"}
        assert checkpoint["source_sha256"] == digest
        assert checkpoint["versions"]["torch"] == torch.__version__
        assert checkpoint["versions"]["numpy"] == np.__version__
        assert checkpoint["test_accuracy"] == metrics["accuracy"]
        assert checkpoint["test_loss"] == metrics["loss"]
        assert checkpoint["track_test_accuracy"] == metrics["track_level"]["accuracy"]
    assert "optimizer_state_dict" in best and best["epoch"] == metrics["epoch"]
    assert_same_weights(best["model_state_dict"], final["model_state_dict"])


def test_two_cpu_runs_are_identical(workdir):
    outputs = []
    for run in ("a", "b"):
        assert run_train(workdir, "--epochs", "3", "--model-dir", workdir / run) == 0
        outputs.append([(workdir / run / name).read_bytes()
                        for name in (train.HISTORY_FILE, train.METRICS_FILE)])
    assert outputs[0] == outputs[1]


def test_interrupt_restores_and_saves_the_best_weights(workdir, monkeypatch, capsys):
    real_epoch = train.train_one_epoch
    calls = []

    def interrupted_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted_on_third)
    assert run_train(workdir, "--epochs", "10") == 130
    models = workdir / "models"
    metrics = read_json(models / train.METRICS_FILE)
    assert metrics["interrupted"] is True and metrics["early_stopped"] is False
    assert len(read_json(models / train.HISTORY_FILE)["loss"]) == 2
    assert_same_weights(weights(models / train.FINAL_MODEL_FILE), weights(models / train.BEST_MODEL_FILE))
    assert "interrupted" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Command line


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--lr", "0"), ("--lr", "-1"),
                                        ("--batch-size", "0"), ("--patience", "0"),
                                        ("--grad-clip", "0"), ("--weight-decay", "-1"),
                                        ("--device", "gpu"), ("--batch-size", "1"),
                                        ("--lr", "nan"), ("--lr", "inf"), ("--grad-clip", "nan"),
                                        ("--weight-decay", "nan"), ("--seed", "-1"),
                                        ("--cache", "data.json")])
def test_impossible_values_are_argparse_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args([flag, value])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(workdir, capsys):
    assert run_train(workdir, "--device", "cuda") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]


def test_bad_data_exits_2_and_writes_no_model(tmp_path, capsys):
    data = preprocess.make_demo_data(**TINY)
    data["labels"][5] = 7
    write_json_file(data, tmp_path / "data.json")
    assert run_train(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels[5]" in err[0]
    assert not (tmp_path / "models").exists() and not (tmp_path / "cache.npz").exists()


def test_unwritable_model_folder_exits_2_before_training(workdir, capsys):
    (workdir / "models").write_text("a file, not a folder")
    assert run_train(workdir) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "--model-dir" in err[0] and "Epoch 1" not in captured.out


def test_too_small_segments_exit_2_before_training(tmp_path, capsys):
    write_json_file(preprocess.make_demo_data(**{**TINY, "frames": 3}), tmp_path / "data.json")
    assert run_train(tmp_path) == 2
    captured = capsys.readouterr()
    assert "too small" in captured.err and "Epoch 1" not in captured.out
    assert not (tmp_path / "models").exists()


def test_end_to_end_preprocesses_then_reuses_the_cache(workdir, monkeypatch, capsys):
    command = [sys.executable, str(ROOT / "train.py"), "--epochs", "1", "--device", "cpu",
               "--no-plots"]
    first = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "Preprocessing" in first.stdout and "data.json" in first.stdout
    assert (workdir / preprocess.PREPROCESSED_DATA_PATH).is_file()
    for name in ARTIFACTS:
        assert (workdir / train.MODEL_SAVE_PATH / name).is_file(), name
    # The second run only has to show that the cache is reused; in-process is enough for that.
    monkeypatch.chdir(workdir)
    assert train.main(command[2:]) == 0, capsys.readouterr().err
    second = capsys.readouterr().out
    assert "Loaded preprocessed data" in second and "Preprocessing" not in second


@pytest.mark.parametrize("n, batch_size, sizes", [
    (9, 4, [4, 5]),  # 9 % 4 == 1: the lone ninth row joins the second batch
    (10, 4, [4, 4, 2]),
    (8, 4, [4, 4]),
    (3, 2, [3]),
    (65, 64, [65]),
    (129, 64, [64, 65]),
])
def test_batches_cover_every_row_and_never_hold_one_alone(n, batch_size, sizes):
    bounds = train.batch_bounds(n, batch_size)
    assert [stop - start for start, stop in bounds] == sizes
    assert [start for start, _ in bounds] == list(np.cumsum([0] + sizes[:-1]))


def test_every_training_segment_is_used_every_epoch_when_one_is_left_over():
    torch.manual_seed(0)
    x, y = torch.randn(9, 1, 16, 8), torch.arange(9) % 3  # 9 % 4 == 1
    model = train.GenreClassifier(1, 16, 8, 3)
    seen = []
    model.conv1.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    config = train.TrainConfig(batch_size=4)
    train.train_one_epoch(model, optimizer, x, y, config, torch.Generator().manual_seed(0))
    assert [len(batch) for batch in seen] == [4, 5]
    rows = torch.cat(seen).flatten(1)
    assert sorted(rows[:, 0].tolist()) == sorted(x.flatten(1)[:, 0].tolist())  # each row once
