"""The README's commands: every `python SCRIPT.py ...` parses with that script's own parser, and
every file a command names exists. (What the commands do is tested in each script's tests.)"""
import importlib
import re
import shlex

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
# Each command of a shell line (split at && and |), without its trailing comment.
COMMANDS = [part.strip() for block in BLOCKS for line in block.splitlines()
            for part in re.split(r"&&|\|", line.split("  #")[0]) if part.strip()]
SCRIPT_COMMANDS = [c for c in COMMANDS if re.match(r"python [a-z_]+\.py\b", c)]
INLINE = re.findall(r"`(python [a-z_]+\.py[^`]*)`", README)


def test_the_readme_has_the_quick_start_and_the_pipeline():
    assert "python train.py --demo" in COMMANDS and "python -m pytest" in COMMANDS
    used = {c.split()[1] for c in SCRIPT_COMMANDS + INLINE}
    assert {"extract.py", "preprocess.py", "train.py", "predict.py", "app.py"} <= used


@pytest.mark.parametrize("command", sorted(set(SCRIPT_COMMANDS + INLINE)))
def test_every_script_command_parses(command):
    script, *args = shlex.split(command)[1:]
    module = importlib.import_module(script.removesuffix(".py"))
    module.parse_args(args)  # argparse exits with status 2 on anything it refuses


def test_every_requirements_file_named_exists():
    for name in set(re.findall(r"requirements[\w-]*\.txt", README)):
        assert (ROOT / name).is_file(), name
