"""The README's walkthrough commands run as written (on a smaller demo), and its recipe is real."""
import contextlib
import io
import json
import re
import shlex

import pytest

import extract
import predict
import preprocess
import train
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
SCRIPTS = {"extract.py": extract.main, "preprocess.py": preprocess.main, "train.py": train.main,
           "predict.py": predict.main}


def code_blocks(language):
    """The README's fenced code blocks of one language, as text."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def walkthrough():
    """The audio walkthrough: the bash block that starts from `extract.py --demo`."""
    blocks = [b for b in code_blocks("bash") if b.startswith("python extract.py --demo")]
    assert len(blocks) == 1, "the README has one extract -> preprocess -> train walkthrough"
    return [shlex.split(line) for line in blocks[0].splitlines() if line.strip()]


def test_readme_audio_walkthrough_runs(tmp_path, monkeypatch):
    # Smaller than what a user gets, to keep the suite fast: 2 genres of 10 one-segment tracks,
    # a single epoch and no pictures. The commands themselves are the README's, in a fresh folder.
    real_synthesize = extract.synthesize_track
    monkeypatch.setattr(extract, "DEMO_GENRES", extract.DEMO_GENRES[:2])
    monkeypatch.setattr(extract, "synthesize_track",
                        lambda genre, track: real_synthesize(genre, track, seconds=3.1))
    monkeypatch.chdir(tmp_path)
    commands = walkthrough()
    assert [c[:2] for c in commands] == [["python", "extract.py"], ["python", "preprocess.py"],
                                         ["python", "train.py"], ["python", "predict.py"]]
    for command in commands:
        args = command[2:] + (["--epochs", "1", "--device", "cpu", "--no-plots"]
                              if command[1] == "train.py" else [])
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert SCRIPTS[command[1]](args) == 0, command
    assert f"Predicted {extract.DEMO_TRACKS} file(s)" in out.getvalue()  # predict.py, last
    assert json.loads((tmp_path / "demo" / "audio.json").read_text())["features"] == \
        extract.default_features()
    assert (tmp_path / "demo" / "audio_models" / train.FINAL_MODEL_FILE).is_file()
    assert not (tmp_path / "demo" / "data.json").exists()  # train.py --demo's file is left alone


def test_readme_shows_the_real_default_recipe():
    recipes = [json.loads(b) for b in code_blocks("json") if '"sample_rate"' in b]
    assert recipes == [extract.default_features()]


@pytest.mark.parametrize("flag", [flag for flag, *_ in extract.RECIPE_FLAGS] + ["--workers"])
def test_readme_documents_every_extract_flag(flag):
    section = README[README.index("### `extract.py`"):README.index("### `preprocess.py`")]
    names = {flag, flag.replace("--", "--no-", 1)} if flag in ("--center", "--htk") else {flag}
    assert any(f"`{name}" in section or f"{name}`" in section or f"{name}/" in section
               for name in names), flag


# ---------------------------------------------------------------------------------------------
# Every command line the README shows


def readme_commands():
    """Every `python SCRIPT ARGS` command in the README's bash blocks, as (script, args, line)."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.splitlines():
            for part in line.split("#")[0].split("&&"):
                words = shlex.split(part)
                while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value python ...
                    words = words[1:]
                if len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
                    commands.append((words[1], words[2:], line.strip()))
    return commands


def test_the_readme_shows_every_script_and_the_benchmark():
    shown = {script for script, _, _ in readme_commands()}
    assert {*SCRIPTS, "tests/benchmark.py"} <= shown


@pytest.mark.parametrize("script, args, line", readme_commands(),
                         ids=[line for _, _, line in readme_commands()])
def test_every_readme_command_line_is_accepted_by_its_script(script, args, line, tmp_path,
                                                             monkeypatch):
    # Parsing checks every flag and value against the script as it is now, so a renamed or
    # removed flag fails here instead of in a user's terminal.
    import importlib

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module("benchmark" if script == "tests/benchmark.py"
                                     else script.removesuffix(".py"))
    if "--data" in args and script == "tests/benchmark.py":  # it checks the file exists
        (tmp_path / args[args.index("--data") + 1]).write_text("{}")
    module.parse_args(args)


def test_the_quick_start_demo_trains_and_saves_a_model(tmp_path, monkeypatch):
    quick_start = code_blocks("bash")[0].splitlines()[0]
    command = shlex.split(quick_start.split("&&")[-1])
    assert command[-3:] == ["python", "train.py", "--demo"]
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        # One epoch instead of thirty keeps the suite fast; everything else is the README's.
        assert train.main(["--demo", "--epochs", "1", "--no-plots"]) == 0
    assert "Test Results:" in out.getvalue()
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [
        "data.json", "preprocessed_data.npz", "saved_models"]
    assert (tmp_path / "demo" / "saved_models" / train.FINAL_MODEL_FILE).is_file()
