"""app.py in a real browser: the page names predict.py's genre, and survives bad input.

The browser test needs gradio, Playwright's Python package and a Chromium from the system (Debian's
`chromium` package): Playwright's own browser download is not used. Without them it is skipped.
"""
import datetime
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request

import numpy as np
import pytest

from conftest import ROOT, tone, write_audio

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
ENABLE = ("pip install -r requirements-app.txt playwright, and install Chromium "
          "(apt install chromium)")
START_SECONDS = 60  # the longest app.py may take to serve its page


def make_model(path):
    """A hand-made model of 1-s segments, saved as train.py saves one: a silent segment is blues,
    one with sound is metal, and rock never wins.

    Its one feature is the segment's silence: minus its lowest MFCC, c0, which is exactly
    -100 dB * sqrt(128 mel bands) = -1131 for digital silence and far above it for a tone.
    """
    import torch

    import features
    import model

    recipe = features.make_features(track_duration=1, num_segments=1)
    net = model.GenreClassifier(1, recipe["frames"], recipe["n_mfcc"], 3)
    rows, cols = recipe["frames"] // 4, recipe["n_mfcc"] // 4  # after the two 2x2 poolings
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        for norm in (net.bn1, net.bn2, net.bn3):
            norm.weight.fill_(1.0)  # batch norms at their initial running statistics: identity
        net.conv1.weight[0, 0, 1, 1] = -1.0  # max-pooling -MFCC keeps minus the lowest, c0
        net.conv2.weight[0, 0, 1, 1] = 1.0
        net.fc1.weight[0, 0:rows * cols:cols] = 1.0 / rows  # channel 0, coefficients 0-3
        net.fc2.weight[:, 0] = torch.tensor([0.01, -0.01, 0.0])
        net.fc2.bias[:] = torch.tensor([-10.0, 10.0, -100.0])  # the threshold: c0 = -1000
    model.save_checkpoint(dict(
        model_state_dict=net.state_dict(), num_channels=1, height=recipe["frames"],
        width=recipe["n_mfcc"], num_classes=3, mapping=["blues", "metal", "rock"],
        norm_min=0.0, norm_max=1.0, features=recipe, features_assumed=False,
        split={"split_kind": "track"}, test_accuracy=1.0, track_test_accuracy=1.0,
        versions=model.versions(), trained_at=datetime.datetime.now().isoformat()), path)
    return path


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_page(app):
    """Wait until app.py serves its page, or fail with what it said."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and app.process.poll() is None:
        try:
            with urllib.request.urlopen(app.url, timeout=5) as response:
                return response.status
        except OSError:
            time.sleep(0.1)
    app.process.kill()
    pytest.fail(f"app.py did not serve its page: {app.process.communicate()}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """app.py serving the hand-made model, started from an empty folder, with its own TMPDIR."""
    if importlib.util.find_spec("gradio") is None:  # (not imported here: it takes seconds)
        pytest.skip(f"the page needs gradio: {ENABLE}")
    folder = tmp_path_factory.mktemp("app")
    model_path = make_model(folder / "model.pt")
    (folder / "cwd").mkdir()
    (folder / "tmp").mkdir()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--model", str(model_path), "--port", str(port)],
        cwd=folder / "cwd", env={**os.environ, "TMPDIR": str(folder / "tmp")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}/", model=model_path,
                                folder=folder, process=process)
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def browser(app):
    """Headless system Chromium; skipped (saying how to enable it) without it or Playwright."""
    sync_api = pytest.importorskip("playwright.sync_api", reason=f"no Playwright: {ENABLE}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: {ENABLE}")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def expected_answer(model_path, song):
    """predict.py's answer for the song, computed here."""
    import predict

    return predict.predict_file(predict.load_classifier(str(model_path), "cpu"), str(song))


def upload_and_press(page, song):
    """Put a file into the page's audio input and press the button."""
    if page.locator("button[aria-label=Clear]").count():
        page.click("button[aria-label=Clear]")
    page.set_input_files("input[type=file]", str(song))
    page.wait_for_selector("audio", state="attached")
    page.click("button:has-text('Name the genre')")


def test_page_shows_predicts_genre_and_survives_bad_input(app, browser, tmp_path):
    song = write_audio(tmp_path / "song.wav", np.concatenate([np.zeros(44100), tone(3)]))
    expected = expected_answer(app.model, song)
    assert expected["segment_genres"] == ["blues"] * 2 + ["metal"] * 3  # 2 s silent, 3 s tone
    page = browser.new_page()
    outside = []  # requests to anywhere but the app: the page must work offline
    page.on("request", lambda r: r.url.startswith((app.url, "blob:", "data:"))
            or outside.append(r.url))
    wait_for_page(app)
    page.goto(app.url)
    upload_and_press(page, song)
    page.wait_for_selector(".timeline div")  # the outputs arrive together
    shown = page.inner_text("[data-testid=label-output-value]")
    timeline = page.eval_on_selector_all(".timeline div", "cells => "
                                         "cells.map(cell => cell.dataset.genre)")
    assert (shown, timeline) == (expected["genre"], expected["segment_genres"])

    (tmp_path / "notes.wav").write_text("not a song\n", encoding="utf-8")
    upload_and_press(page, tmp_path / "notes.wav")
    message = page.wait_for_selector("[data-testid=toast-text]").inner_text()
    assert message.startswith("notes.wav: not readable audio")
    upload_and_press(page, write_audio(tmp_path / "next.wav", tone(3)))  # still answered
    page.wait_for_function("document.querySelectorAll('.timeline div').length == 3")
    assert outside == []


def test_api_predict_is_predicts_answer_and_refuses_silence(app, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    song = write_audio(tmp_path / "song.wav", np.concatenate([tone(2), np.zeros(22050)]))
    silent = write_audio(tmp_path / "silent.wav", np.zeros(3 * 22050, dtype=np.float32))
    short = write_audio(tmp_path / "short.flac", tone(0.5))
    wait_for_page(app)
    client = Client(app.url, verbose=False, download_files=False)
    label, _, answer = client.predict(handle_file(str(song)), api_name="/predict")
    assert answer == {**expected_answer(app.model, song), "file": "song.wav"}
    assert label["label"] == answer["genre"]
    for path, reason in ((silent, "silent.wav is silent"), (short, "short.flac: too short")):
        with pytest.raises(AppError, match=reason):
            client.predict(handle_file(str(path)), api_name="/predict")


def test_sigterm_stops_the_server_and_leaves_no_files(app):
    wait_for_page(app)
    app.process.send_signal(signal.SIGTERM)
    out, err = app.process.communicate(timeout=30)
    assert app.process.returncode == 143, err
    assert "Serving it on http" in out and "Terminated." in err
    assert list((app.folder / "cwd").iterdir()) == [] == list((app.folder / "tmp").iterdir())


def test_without_model_or_gradio_one_line_says_what_to_do(tmp_path, monkeypatch, capsys):
    import app as page

    assert page.main(["--model", str(tmp_path / "none.pt")]) == 2
    assert "python train.py" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    monkeypatch.setattr(os, "environ", os.environ.copy())
    (tmp_path / "model.pt").write_bytes(b"")
    assert page.main(["--model", str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -r requirements-app.txt" in err
