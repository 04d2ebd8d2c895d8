"""Tests of the batch-norm statistics that validation uses when an epoch has only a few batches."""
import contextlib
import copy
import io

import numpy as np
import pytest
import torch

import preprocess
import train
from conftest import TINY, load_npz, read_json, write_json_file

# 84 training segments: two batches of 64 an epoch, far too few for the running averages (momentum
# 0.1) to forget their initial values, so in eval mode they mislead.
SEED = 0  # a model seed for which the running averages make early stopping keep epoch 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with the tiny data.json and its cache."""
    path = tmp_path_factory.mktemp("bn")
    write_json_file(preprocess.make_demo_data(**TINY), path / "data.json")
    return path


@pytest.fixture(scope="module")
def data(folder):
    """The tiny data set, preprocessed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return preprocess.load_data(folder / "data.json", folder / "cache.npz")


def run_train(folder, name, *args):
    """train.main on the tiny data set, models in folder/name; returns (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    args = ["--data", folder / "data.json", "--cache", folder / "cache.npz",
            "--model-dir", folder / name, "--device", "cpu", "--seed", SEED, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = train.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def one_epoch(data, folder, bn_stats):
    """The model after one epoch of fit, and what fit printed."""
    train.set_seed(SEED)
    model = train.build_model(data, torch.device("cpu"))
    config = train.TrainConfig(epochs=1, bn_stats=bn_stats, seed=SEED)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.fit(model, train.to_device(data, torch.device("cpu")), data, config, folder / bn_stats)
    return model, out.getvalue()


# ---------------------------------------------------------------------------------------------
# What validation sees


def test_running_averages_call_everything_one_genre_and_recomputed_ones_do_not(data, folder):
    models, genres = {}, {}
    for mode in ("running", "auto"):
        models[mode], out = one_epoch(data, folder, mode)
        genres[mode] = len(torch.unique(train.predict(models[mode], data.x_val).argmax(dim=1)))
        assert ("recomputed over the training split" in out) == (mode == "auto"), out
    assert genres["running"] == 1  # the symptom the old behaviour shows
    assert genres["auto"] > 1
    # The recompute changes what validation sees, never the training: the weights are identical.
    for (name, a), b in zip(models["running"].named_parameters(), models["auto"].parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mode,batches,expected", [
    ("auto", train.BN_STATS_MIN_BATCHES - 1, True), ("auto", train.BN_STATS_MIN_BATCHES, False),
    ("precise", 1000, True), ("running", 1, False)])
def test_when_statistics_are_recomputed(mode, batches, expected):
    assert train.recomputes_bn_stats(train.TrainConfig(bn_stats=mode), batches) is expected


def test_gtzan_sized_epochs_keep_the_running_averages():
    # 70 % of 10,000 segments in batches of 64: about 110 batches an epoch.
    assert train.batches_per_epoch(7000, train.BATCH_SIZE) == 110
    assert not train.recomputes_bn_stats(train.TrainConfig(), 110)


def test_bn_stats_flag_mirrors_the_constant(capsys):
    assert train.parse_args([]).bn_stats == train.BN_STATS
    assert train.train_config(train.parse_args(["--bn-stats", "running"])).bn_stats == "running"
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--bn-stats", "always"])
    assert exit_info.value.code == 2 and "--bn-stats" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The recomputed statistics


def channel_stats(h):
    """Per-channel mean and unbiased variance over every other dimension."""
    dims = [d for d in range(h.dim()) if d != 1]
    return h.mean(dim=dims), h.var(dim=dims, correction=1)


@torch.no_grad()
def reference_stats(model, x):
    """Each batch-norm layer's input statistics over x as one batch, running the layers by hand.

    The layers run in train mode, dropout included and drawing in the same order as a forward
    pass, so with the same seed the masks are those of the recompute pass.
    """
    m = copy.deepcopy(model).train()
    h1 = torch.relu(m.pool1(m.conv1(x)))
    h2 = torch.relu(m.pool2(m.conv2(m.drop1(m.bn1(h1)))))
    h3 = torch.relu(m.fc1(m.flatten(m.drop2(m.bn2(h2)))))
    m.drop3(m.bn3(h3))  # draws its mask too, as the forward pass does
    return [channel_stats(h) for h in (h1, h2, h3)]


def test_recomputed_statistics_are_those_of_the_training_split():
    torch.manual_seed(0)
    model = train.GenreClassifier(1, 16, 8, 3)
    x = torch.rand(40, 1, 16, 8)
    model.train()
    model(torch.rand(40, 1, 16, 8) + 3)  # running averages of other data, to be replaced
    torch.manual_seed(7)
    train.recompute_bn_stats(model, x, batch_size=64)
    after_pass = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_pass, torch.rand(3))  # the pass left the random stream alone
    torch.manual_seed(7)
    expected = reference_stats(model, x)
    for bn, (mean, var) in zip((model.bn1, model.bn2, model.bn3), expected):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
        assert bn.momentum == 0.1  # restored for training


def test_statistics_over_several_batches_average_them_equally():
    torch.manual_seed(0)
    model = train.GenreClassifier(1, 16, 8, 3)
    x = torch.rand(41, 1, 16, 8)
    train.recompute_bn_stats(model, x, batch_size=20)  # 20 + 21 rows: no lone sample
    with torch.no_grad():
        h1 = torch.relu(model.pool1(model.conv1(x)))  # upstream of any dropout
    halves = [channel_stats(h) for h in (h1[:21], h1[21:])]
    torch.testing.assert_close(model.bn1.running_mean, (halves[0][0] + halves[1][0]) / 2)
    torch.testing.assert_close(model.bn1.running_var, (halves[0][1] + halves[1][1]) / 2)


# ---------------------------------------------------------------------------------------------
# Whole runs: the kept model, its checkpoints, the warning


@pytest.fixture(scope="module")
def runs(folder):
    """Whole runs with each --bn-stats setting: {mode: (test metrics, stdout, stderr)}."""
    results = {}
    for mode in ("running", "auto"):
        status, out, err = run_train(folder, mode, "--epochs", "8", "--patience", "3",
                                     "--bn-stats", mode)
        assert status == 0
        results[mode] = read_json(folder / mode / train.METRICS_FILE), out, err
    return results


def test_the_reason_is_printed_once_at_the_start(runs):
    line = ("Batch-norm statistics: recomputed over the training split before each validation "
            f"(2 batches per epoch < {train.BN_STATS_MIN_BATCHES}")
    out = runs["auto"][1]
    assert out.count(line) == 1 and out.index(line) < out.index("Epoch 1/8")
    assert "Batch-norm statistics" not in runs["running"][1]


def test_auto_keeps_a_better_model_than_the_degenerate_one(runs):
    (old, _, old_err), (new, _, new_err) = runs["running"], runs["auto"]
    # The old behaviour: stopped on meaningless validation losses, kept epoch 1, one genre for all.
    assert old["epoch"] == 1 and old["accuracy"] == pytest.approx(1 / 3)
    assert "warning: the tested model predicts" in old_err and "--batch-size" in old_err
    assert new["epoch"] > 1 and new["accuracy"] > old["accuracy"] + 0.15
    assert "warning" not in new_err


def test_checkpoints_hold_the_statistics_that_were_tested(runs, folder):
    models = folder / "auto"
    cache = load_npz(folder / "cache.npz")
    best = torch.load(models / train.BEST_MODEL_FILE, weights_only=True, map_location="cpu")
    with torch.no_grad():
        val = train.load_model(models / train.BEST_MODEL_FILE)(torch.from_numpy(cache["X_val"]))
        test = train.load_model(models / train.FINAL_MODEL_FILE)(torch.from_numpy(cache["X_test"]))
    assert np.mean(val.argmax(dim=1).numpy() == cache["y_val"]) == pytest.approx(best["val_accuracy"])
    assert np.mean(test.argmax(dim=1).numpy() == cache["y_test"]) == pytest.approx(
        runs["auto"][0]["accuracy"])


def degenerate_model(genre):
    """A hand-made model whose output layer ignores its input and always picks genre."""
    model = train.GenreClassifier(1, 16, 8, 3).eval()
    with torch.no_grad():
        model.fc2.weight.zero_()
        model.fc2.bias.copy_(torch.nn.functional.one_hot(torch.tensor(genre), 3) * 5.0)
    return model


def test_single_genre_warning_fires_on_a_degenerate_model_only(runs, data, folder):
    splits = train.to_device(data, torch.device("cpu"))
    metrics = train.compute_test_metrics(degenerate_model(2), splits, data, best_epoch=1)
    warning = train.single_genre_warning(metrics["confusion_matrix"], data.mapping)
    assert warning and repr(data.mapping[2]) in warning
    assert all(hint in warning for hint in ("more data", "--batch-size", "--epochs"))
    good = train.load_model(folder / "auto" / train.FINAL_MODEL_FILE)
    metrics = train.compute_test_metrics(good, splits, data, best_epoch=runs["auto"][0]["epoch"])
    assert metrics["accuracy"] >= 0.5
    assert train.single_genre_warning(metrics["confusion_matrix"], data.mapping) is None


def test_no_warning_when_the_test_set_is_itself_nearly_one_genre():
    confusion = [[19, 0], [1, 0]]  # 95 % of the test segments are genre a, and all are called a
    assert train.single_genre_warning(confusion, ["a", "b"]) is None
    assert "'b' for 20 of 20" in train.single_genre_warning([[0, 10], [0, 10]], ["a", "b"])
