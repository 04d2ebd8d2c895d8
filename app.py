"""A local web page for the genre model: drop in a song or record one, see its genre and why.

Usage:
    pip install -r requirements-app.txt
    python app.py                          # serves saved_models/final_model_pytorch.pt
    python app.py --model saved_models/final_model.onnx --port 8080
    python app.py --demo                   # trains the demo model first if needed

The genre is predict.py's, by predict.py's own code. The page is served on this machine only and
works offline: no share link, no analytics, nothing written to the working folder (uploads go to a
temporary folder removed at exit). Programs call the API endpoint /predict:

    from gradio_client import Client, handle_file
    label, timeline, answer = Client("http://127.0.0.1:7860/").predict(
        handle_file("song.wav"), api_name="/predict")   # answer: predict.py's, as a dict
"""
import argparse
import contextlib
import html
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import features
import predict
from common import DataError, HelpFormatter, at_least, input_file, run_main

HOST = "127.0.0.1"  # the page is reachable from this machine only; 0.0.0.0 opens it to the network
PORT = 7860  # Gradio's usual port
DEMO_MODEL = "demo/audio_models/final_model_pytorch.pt"  # the README's demo on synthetic audio
# How --demo makes it: synthetic genre audio (extract.py --demo), then a model trained on it.
DEMO_STEPS = (["extract.py", "--demo"], ["train.py", "--data", "demo/audio.json", "--cache",
              "demo/audio.npz", "--model-dir", "demo/audio_models"])
SILENCE_DBFS = -60.0  # a recording whose loudest sample is below this holds no music to classify
CACHE_SECONDS = 3600  # uploads older than this are deleted from the temporary folder, hourly
# Gradio's settings, read when it is imported: no calls home, no run history in the browser.
GRADIO_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_RUN_HISTORY": "False"}
TRAIN_HINT = "train one with `python train.py`, or try `python app.py --demo`"
CSS = """.timeline {display: flex; height: 2.2em; border-radius: 4px; overflow: hidden}
.timeline div {flex: 1; color: white; font-size: 0.75em; line-height: 2.9em; text-align: center;
               overflow: hidden; white-space: nowrap; border-right: 1px solid white}
.axis {display: flex; justify-content: space-between; font-size: 0.8em; opacity: 0.7}"""  # timeline


def peak_dbfs(path, seconds):
    """The loudest sample of the file's first seconds, in dB below full scale."""
    import soundfile

    with soundfile.SoundFile(os.fsencode(path)) as audio:
        peak = max((np.abs(block).max(initial=0.0) for block in audio.blocks(
            1 << 16, frames=int(seconds * audio.samplerate), dtype="float32")), default=0.0)
    return 20 * np.log10(peak) if peak > 0 else -np.inf


def classify_upload(clf, path):
    """predict.py's answer for an uploaded file, named by the upload; DataError when unusable."""
    name = Path(path).name
    try:
        answer = predict.predict_file(clf, path)
        loudest = peak_dbfs(path, predict.MAX_DURATION)
    except DataError as exc:
        raise DataError(str(exc).replace(str(path), name)) from None
    if loudest < SILENCE_DBFS:
        raise DataError(f"{name} is silent (loudest sample {loudest:.0f} dBFS): upload or record "
                        f"some music")
    return json.loads(json.dumps({**answer, "file": name}))  # as `predict.py --json` prints it


def label_payload(answer):
    """gr.Label's value: the voted genre, and bars of the top genres' shares of the votes."""
    return {"label": answer["genre"], "confidences": [
        {"label": f"{top['genre']}: {top['votes']} of {answer['segments']} segments, mean "
                  f"probability {top['mean_probability']:.2f}", "confidence": top["vote_share"]}
        for top in answer["top"]]}


def timeline_html(answer, clf):
    """A strip of the song's segments, each coloured by the genre it voted for."""
    seconds = clf.features["segment_samples"] / clf.features["sample_rate"]
    cells = []
    for index, genre in enumerate(answer["segment_genres"]):
        hue, name = 360 * clf.mapping.index(genre) // len(clf.mapping), html.escape(genre)
        cells.append(f'<div data-genre="{name}" style="background: hsl({hue} 60% 40%)" title="'
                     f'{index * seconds:g}-{(index + 1) * seconds:g} s: {name}">{name}</div>')
    return (f'<div class="timeline">{"".join(cells)}</div><div class="axis"><span>0 s</span>'
            f'<span>the genre each {seconds:g}-s segment voted for</span>'
            f'<span>{len(cells) * seconds:g} s</span></div>')


def build_page(gr, clf):
    """The page: a song in; its genre, timeline and predict.py's answer out; the model card."""
    def analyse(path):
        if not path:
            raise gr.Error("Upload a song or record one first.")
        try:
            answer = classify_upload(clf, path)
        except DataError as exc:
            raise gr.Error(str(exc)) from None
        return label_payload(answer), timeline_html(answer, clf), answer

    with gr.Blocks(title="Music genre", delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as page:
        gr.Markdown("# Music genre\nUpload a song or record one, then press **Name the genre**.")
        with gr.Row():
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Song",
                             buttons=["download"])
            genre = gr.Label(label="Genre: share of the segments' votes")
        button = gr.Button("Name the genre", variant="primary")
        timeline = gr.HTML()
        with gr.Accordion("predict.py's answer", open=False):
            answer = gr.JSON(label="Answer")
        card = predict.describe_classifier(clf).split("; ")  # the model card: a line a part
        gr.Markdown("  \n".join([*card, f"trained {clf.card.get('trained_at', '?')}"]))
        # Label's own postprocessing would title it with the largest bar, not the vote's winner.
        button.click(analyse, audio, [genre, timeline, answer], api_name="predict",
                     postprocess=False)
    return page


def warm_up(clf):
    """Run the analysis and the model once: the first song is then answered as fast as the rest."""
    features.warm_up(clf.features)
    predict.classify(clf, np.zeros((1, *features.segment_shape(clf.features)[1:]), np.float32))
    with contextlib.suppress(ImportError):  # Gradio sets matplotlib's backend around each event:
        importlib.import_module("matplotlib").get_backend()  # imported then, a second's delay


def ensure_demo_model():
    """The demo model, made first (about two minutes on two cores) when it is not there yet."""
    for step in DEMO_STEPS if not Path(DEMO_MODEL).is_file() else ():
        print(f"No {DEMO_MODEL} yet: running `python {' '.join(step)}`", flush=True)
        if subprocess.call([sys.executable, str(Path(__file__).with_name(step[0])), *step[1:]]):
            raise DataError(f"`python {' '.join(step)}` failed: see its messages above")
    return DEMO_MODEL


def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=predict.MODEL_PATH, help="checkpoint or .onnx export")
    source.add_argument("--demo", action="store_true", help="the demo model (trained if missing)")
    parser.add_argument("--host", default=HOST, help="address to serve the page on")
    parser.add_argument("--port", type=at_least(int, 1, maximum=65535), default=PORT,
                        help="port of the page")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Serve the page until Ctrl-C; exit status 2 when the model or the port is unusable."""
    args = parse_args(argv)
    temp_dir = tempfile.mkdtemp(prefix="genre-app-")
    try:
        model = None if args.demo else input_file(args.model, "--model", TRAIN_HINT)
        os.environ.update(GRADIO_ENVIRONMENT, GRADIO_TEMP_DIR=temp_dir)  # not .gradio/ here
        try:
            import gradio as gr
        except ImportError:
            raise DataError("app.py needs Gradio: pip install -r requirements-app.txt") from None
        clf = predict.load_classifier(model or ensure_demo_model())
        warm_up(clf)
        page = build_page(gr, clf)
        try:  # the server runs in threads of its own
            page.launch(server_name=args.host, server_port=args.port, share=False, quiet=True,
                        css=CSS, prevent_thread_lock=True, footer_links=["api"])
        except OSError:
            raise DataError(f"cannot serve on {args.host}:{args.port} (port in use, or not this "
                            f"machine's address): pass another --port or --host") from None
        print(f"{predict.describe_classifier(clf)}\nServing it on {page.local_url} (Ctrl-C stops)",
              flush=True)
        while page.is_running:  # Ctrl-C and SIGTERM land here
            time.sleep(0.5)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
