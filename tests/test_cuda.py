"""The GPU path: training on CUDA gives a model that loads and answers the same on a CPU-only
machine. Skipped where PyTorch sees no CUDA device."""
import json

import numpy as np
import pytest
import torch

import model
import preprocess
import train
from conftest import tiny_data, write_json

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_training_on_cuda_gives_a_model_the_cpu_can_use(tmp_path, capsys):
    write_json(tiny_data(), tmp_path / "data.json")
    status = train.main(["--data", str(tmp_path / "data.json"), "--cache", str(tmp_path / "c.npz"),
                         "--model-dir", str(tmp_path / "models"), "--device", "cuda",
                         "--epochs", "8", "--lr", "0.01", "--no-plots"])
    out = capsys.readouterr().out
    assert status == 0
    assert "✓ GPU detected:" in out and "Device: cuda" in out
    checkpoint = torch.load(tmp_path / "models" / "final_model_pytorch.pt", weights_only=True,
                            map_location="cpu")
    assert all(t.device.type == "cpu" for t in checkpoint["model_state_dict"].values())
    # The recorded test accuracy is what the saved weights give on the test split, on the CPU.
    data = preprocess.load_data(tmp_path / "data.json", tmp_path / "c.npz")
    net, _ = model.load_model(tmp_path / "models" / "final_model_pytorch.pt", "cpu")
    with torch.no_grad():
        logits = net(torch.from_numpy(data.x_test))
    accuracy = float((logits.argmax(1).numpy() == data.y_test).mean())
    assert accuracy == pytest.approx(checkpoint["test_accuracy"], abs=1.5 / len(data.y_test))
    metrics = json.loads((tmp_path / "models" / "test_metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(checkpoint["test_accuracy"])


def test_cuda_and_cpu_give_the_same_probabilities(tmp_path):
    net = model.GenreClassifier(1, 16, 8, 3).eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(20, 1, 16, 8)).astype(np.float32))
    deployed = model.Deployed(net, -3.0, 4.0)
    with torch.no_grad():
        on_cpu = deployed(x).numpy()
        on_gpu = deployed.to("cuda")(x.to("cuda")).cpu().numpy()
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-5)
