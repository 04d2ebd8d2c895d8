"""predict.py: the song vote of either model file (checkpoint or ONNX), and one line for bad input.

Models are built here (random weights, a small recipe) and saved as train.py saves them; the
references are computed independently with torch, onnxruntime and common.vote's rule.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from conftest import ROOT, tone, write_audio

import features  # noqa: E402 - conftest puts the repository on sys.path
import model
import predict

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

RATE = 8000  # Hz: a small recipe keeps every analysis quick
RECIPE = features.make_features(sample_rate=RATE, track_duration=2, num_segments=2, n_mfcc=8,
                                n_fft=256, hop_length=128, n_mels=20)  # 1-s segments, 63 x 8
GENRES = ["blues", "jazz", "rock"]
TONES = (150.0, 900.0, 2500.0)  # Hz: the song of each genre, as the test's model learns them


def strict_json(text):
    """json.loads that refuses NaN and Infinity, as strict JSON readers do."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def tone_mfccs(freq, seconds=3.5, seed=0):
    """The MFCC segments of a tone."""
    return features.segment_mfccs(tone(seconds, RATE, freq, seed=seed), RECIPE)


def checkpoint(net, norm, **changes):
    """A checkpoint dict with every entry train.py writes."""
    return {"model_state_dict": net.state_dict(), "num_channels": 1, "height": RECIPE["frames"],
            "width": RECIPE["n_mfcc"], "num_classes": len(GENRES), "mapping": GENRES,
            "norm_min": norm[0], "norm_max": norm[1], "features": RECIPE,
            "features_assumed": False, "train_config": {"epochs": 1, "batch_size": 64},
            "split": {"val_split": 0.2, "test_split": 0.1, "seed": 42, "split_by": "auto",
                      "split_kind": "segment"},
            "source_sha256": "0" * 64, "versions": {**model.versions(), "librosa": None},
            "trained_at": "2025-01-01T12:00:00", "test_loss": 0.9, "test_accuracy": 0.5,
            "track_test_accuracy": 0.75, **changes}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(net, training range, checkpoint path, ONNX path) of a model that tells TONES apart."""
    x = np.concatenate([tone_mfccs(freq, seed=i) for i, freq in enumerate(TONES)])[:, None]
    norm = (float(x.min()), float(x.max()))
    inputs = torch.from_numpy((x - np.float32(norm[0])) / np.float32(norm[1] - norm[0]))
    labels = torch.arange(len(TONES)).repeat_interleave(len(x) // len(TONES))
    torch.manual_seed(0)
    net = model.GenreClassifier(1, RECIPE["frames"], RECIPE["n_mfcc"], len(GENRES))
    for layer in net.modules():  # full-batch steps: batch norm keeps the last batch's statistics
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.momentum = 1.0
        if isinstance(layer, torch.nn.modules.dropout._DropoutNd):
            layer.p = 0.0
    for _ in range(20):  # plain gradient steps: torch.optim's first step costs a second
        torch.nn.functional.cross_entropy(net(inputs), labels).backward()
        with torch.no_grad():
            for weights in net.parameters():
                weights -= 0.05 * weights.grad
                weights.grad = None
    folder, ckpt = tmp_path_factory.mktemp("models"), checkpoint(net.eval(), norm)
    model.save_checkpoint(ckpt, folder / "final_model_pytorch.pt")
    model.export_onnx(net, ckpt, folder / "final_model.onnx")
    return net, norm, folder / "final_model_pytorch.pt", folder / "final_model.onnx"


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """A song of each tone, 3.5 s (3 segments), other noise than the model learnt."""
    folder = tmp_path_factory.mktemp("songs")
    return [write_audio(folder / f"{genre}.wav", tone(3.5, RATE, freq, seed=9), RATE)
            for genre, freq in zip(GENRES, TONES)]


def reference(net, norm, segments):
    """The model's probabilities computed independently: the design's scaling, net, softmax."""
    low, scale = np.float32(norm[0]), np.float32(norm[1] - norm[0])
    x = torch.from_numpy(((segments[:, None] - low) / scale).astype(np.float32))
    with torch.no_grad():
        return torch.softmax(net(x), dim=1).numpy()


def test_both_backends_equal_the_models_probabilities_and_the_test_vote(models):
    net, norm, pt, onnx = models
    a, b, c = (tone_mfccs(freq, seconds=4.5, seed=5) for freq in TONES)
    noise = np.random.default_rng(0).normal(-50, 40, (6, *a.shape[1:])).astype(np.float32)
    songs = [a, np.concatenate([a[:2], b[:2]]), np.concatenate([a[:1], b[:2], c]), c[:1], noise]
    everything = np.concatenate(songs)
    expected = reference(net, norm, everything)
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"mfcc": everything[:, None]})[0], expected,
                               atol=1e-5)
    for path, backend in ((pt, "torch"), (onnx, "onnx")):
        clf = predict.load_classifier(path, device="cpu")
        assert (clf.backend, clf.mapping, clf.features) == (backend, GENRES, RECIPE)
        np.testing.assert_allclose(clf.run(everything[:, None]), expected, atol=1e-5)
        for song in songs:
            # The vote of train.py's track test: majority, ties to the higher mean probability.
            probabilities = reference(net, norm, song)
            votes = np.bincount(probabilities.argmax(1), minlength=len(GENRES))
            tied = np.flatnonzero(votes == votes.max())
            label = tied[np.argmax(probabilities.mean(0)[tied])]
            answer = predict.classify(clf, song)
            assert answer["genre"] == GENRES[label] and answer["segments"] == len(song)
            assert [t["votes"] for t in answer["top"]] == sorted(votes, reverse=True)[:3]
            assert answer["segment_genres"] == [GENRES[g] for g in probabilities.argmax(1)]
        assert predict.classify(clf, a)["genre"] == "blues"  # the model learnt the tones
        assert predict.classify(clf, songs[1])["top"][0]["votes"] == 2  # a tie, broken
    renamed = onnx.with_name("exported.pt")  # the backend follows the content, not the name
    renamed.write_bytes(onnx.read_bytes())
    assert predict.load_classifier(renamed).backend == "onnx"


def test_either_model_file_gives_the_same_answers(models, songs, capsys):
    *_, pt, onnx = models
    answers = []
    for path in (pt, onnx):
        assert predict.main([*map(str, songs), "--model", str(path), "--workers", "1",
                             "--json"]) == 0
        out, err = capsys.readouterr()
        answers.append(strict_json(out))
        assert err.startswith(f"Model {path}: 3 genres (blues, jazz, rock); recipe 8000 Hz")
        assert "test accuracy 50.0% of segments, 75.0% of tracks (split by segment, so " \
               "optimistic)" in err
    torch_answer, onnx_answer = answers
    assert [f["file"] for f in onnx_answer["files"]] == list(map(str, songs))
    assert [f["genre"] for f in onnx_answer["files"]] == GENRES
    for a, b in zip(torch_answer["files"], onnx_answer["files"]):
        assert (a["genre"], a["segments"]) == (b["genre"], b["segments"]) and a["segments"] == 3
        assert [(t["genre"], t["votes"]) for t in a["top"]] == \
            [(t["genre"], t["votes"]) for t in b["top"]]
        assert [t["mean_probability"] for t in a["top"]] == pytest.approx(
            [t["mean_probability"] for t in b["top"]], abs=1e-5)
    # The text report: genre and segments, then the top genres with votes and mean probability.
    assert predict.main([str(songs[0]), "--model", str(onnx), "--workers", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = onnx_answer["files"][0]
    assert lines[1] == f"{songs[0]}: {first['genre']} (3 segments)"
    assert lines[2].split()[:4] == [first["genre"], f"{first['top'][0]['vote_share']:.1%}",
                                    "of", "votes"]
    assert lines[-1].startswith("Predicted 1 file(s) in ")


def test_onnx_path_never_imports_torch(models):
    """In a fresh process where importing torch fails, an ONNX model loads and classifies."""
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\nimport numpy, predict\n"
            "clf = predict.load_classifier(sys.argv[1])\n"
            "print(predict.classify(clf, numpy.zeros((2, 63, 8), numpy.float32))['segments'])\n"
            "assert 'torch' not in sys.modules and clf.backend == 'onnx'")
    done = subprocess.run([sys.executable, "-c", code, str(models[3])], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "2\n"), done.stderr


@pytest.fixture
def deadline():
    """Fail a test that takes more than 30 s (a FIFO opened for reading would wait forever)."""
    def expired(signum, frame):
        raise TimeoutError("predict.py hung")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_onnx_cli_skips_fifos_and_nan_audio_without_torch(models, songs, tmp_path, monkeypatch,
                                                         capsys, deadline):
    """Through the whole command line with torch unimportable: a FIFO given, or in a folder, is
    skipped unopened; audio whose MFCCs are not finite fails with its reason; a file name that
    is not UTF-8 is read; the good files still get their genre, and --json stays strict JSON."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.setitem(sys.modules, "model", None)
    folder = tmp_path / "music"
    write_audio(folder / "a.wav", tone(2.5, RATE), RATE)
    os.mkfifo(folder / "b.wav")
    (folder / "notes.txt").write_text("not audio")
    os.rename(write_audio(folder / "c.wav", tone(2.5, RATE), RATE),
              folder / os.fsdecode(b"caf\xe9.wav"))  # sorts after a.wav and b.wav
    os.mkfifo(tmp_path / "given.wav")
    loud = tmp_path / "loud.wav"
    soundfile.write(loud, np.full(3 * RATE, 1e30, np.float32), RATE, subtype="FLOAT")
    (tmp_path / "empty").mkdir()
    inputs = [tmp_path / "given.wav", folder, loud, tmp_path / "gone.wav", tmp_path / "empty",
              songs[0]]
    assert predict.main([*map(str, inputs), "--model", str(models[3]), "--workers", "1",
                         "--json"]) == 2
    out, err = capsys.readouterr()
    answer = strict_json(out)
    assert answer["model"]["backend"] == "onnx"
    assert [f["file"] for f in answer["files"]] == [
        str(folder / "a.wav"), str(folder / "caf\\xe9.wav"), str(songs[0])]
    assert [f["segments"] for f in answer["files"]] == [2, 2, 3]
    failed = {f["file"]: f["error"] for f in answer["failed"]}
    assert list(failed) == [str(p) for p in (tmp_path / "given.wav", folder / "b.wav", loud,
                                              tmp_path / "gone.wav", tmp_path / "empty")]
    assert "not finite" in failed[str(loud)] and "regular file" in failed[str(folder / "b.wav")]
    assert failed[str(tmp_path / "gone.wav")].endswith("gone.wav: not found")
    assert failed[str(tmp_path / "empty")].endswith("empty: no audio files in this folder")
    assert "Ignored 1 hidden or non-audio file(s)" in err and f"error: {loud}: " in err


def test_a_song_longer_than_max_duration_is_cut_and_said(models, tmp_path, capsys):
    song = write_audio(tmp_path / "long.wav", tone(5.5, RATE), RATE)
    assert predict.main([str(song), "--model", str(models[3]), "--workers", "1",
                         "--max-duration", "2.5"]) == 0
    assert f"{song}: " in (out := capsys.readouterr().out)
    assert "(2 segments; only its first 2 s analysed)" in out
    assert predict.predict_file(predict.load_classifier(models[3]), song)["segments"] == 5


def foreign_onnx(path):
    """A valid ONNX graph that is not a genre model: Identity, no card."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), path)


class Exploit:
    """A pickle that runs a command when loaded unsafely."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def bad_models(tmp_path, models):
    """(name, make(path), words the one line must hold) of model files predict.py refuses."""
    def save(path, **changes):
        model.save_checkpoint(checkpoint(*models[:2], **changes), path)
    return [
        ("foreign.onnx", foreign_onnx, "(it has no genre card)"),
        ("truncated.onnx", lambda p: p.write_bytes(models[3].read_bytes()[:3000]),
         "not an ONNX model exported by train.py"),
        ("evil.pt", lambda p: torch.save({"x": Exploit(tmp_path / "ran")}, p), "not loaded"),
        ("ninety.pt", lambda p: save(p, test_accuracy="ninety"), "$.test_accuracy"),
        ("genres.pt", lambda p: save(p, mapping=["a", "b"]), "2 genres for 3 outputs"),
        ("recipe.pt", lambda p: save(p, features={**RECIPE, "n_mfcc": 13}), "recipe makes 1x63x13"),
        ("missing.pt", lambda p: None, "python train.py"),
        ("folder", lambda p: p.mkdir(), "python train.py"),
        ("fifo.pt", os.mkfifo, "python train.py"),
    ]


def test_unusable_models_are_refused_in_one_line(models, songs, tmp_path, capsys):
    for name, make, words in bad_models(tmp_path, models):
        make(tmp_path / name)
        status = predict.main([str(songs[0]), "--model", str(tmp_path / name), "--workers", "1"])
        out, err = capsys.readouterr()
        assert status == 2 and out == "", name
        assert err.count("\n") == 1 and err.startswith("error: ") and words in err, (name, err)
    assert not (tmp_path / "ran").exists()
    assert predict.ONNX_CARD_KEY == model.ONNX_CARD_KEY
