"""The README's commands: every one is walked (tests/readme_walk.py), and what each names exists.

The commands themselves run in tests/test_dvc_pipeline.py (``test_readme_commands_run``) and the tests named in
the walk table; here the cheap checks that need no training: the table covers every command, the two Quickstart
commands are the ones `.ci/run` and a new user type, the activation comes before the first command that needs it,
and every module, script, make target and DVC stage a command names exists.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

from tests.conftest import REPO
from tests.readme_walk import README, WALK, classify, commands, words


def test_every_readme_command_is_walked():
    cmds = commands()
    assert len(cmds) >= 30
    used = {classify(c)[0] for c in cmds}  # raises on a command missing from the table
    assert used == set(WALK), f"walk entries without a README command: {sorted(set(WALK) - used)}"
    for prefix, (action, note) in WALK.items():
        assert action in ("run", "serve", "covered", "skip")
        assert action == "run" or note, f"{prefix!r}: {action} needs a note saying why or by which test"


def test_quickstart_commands_and_ci_agree():
    first_two = [words(c) for c in commands()[:2]]
    assert first_two == ["DATA_MIRROR=../shared/data make run", "DATA_MIRROR=../shared/data make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nDATA_MIRROR=../shared/data make test\n" in ci  # CI runs the README's test command as written


def test_activation_comes_before_the_commands_that_need_it():
    cmds = [words(c) for c in commands()]
    first = cmds.index("source .venv/bin/activate")
    assert all(c.startswith("DATA_MIRROR=") for c in cmds[:first])  # before it: only `make`, which needs nothing
    assert not any(".venv/bin/" in c for c in cmds[first + 1:])


def test_named_modules_scripts_targets_and_stages_exist():
    makefile = (REPO / "Makefile").read_text()
    stages = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--all", "--name-only"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for c in commands():
        w = words(c).split()
        if w[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(w[2]) is not None, f"README: no module {w[2]}"
        elif w[0] == "python":
            assert (REPO / w[1]).is_file(), f"README: no script {w[1]}"
        elif "make" in w:
            target = w[w.index("make") + 1]
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"README: no make target {target}"
        elif w[:2] == ["dvc", "repro"]:
            for stage in w[2:]:
                assert stage in stages or any(s.startswith(stage + "@") for s in stages), f"README: no DVC stage {stage}"


def test_parser_joins_continuations_and_quotes():
    text = "x\n```bash\na \\\n  b   # c\n# only a comment\ncurl -d '{\n  1}'\n```\n"
    assert commands(text) == ["a \\\n  b   # c", "curl -d '{\n  1}'"]
    assert README.is_file()
