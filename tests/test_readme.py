"""The README's command examples that need no cluster, run as printed: what they print must be
what the README shows. A file an example names that is not in the repository is the README's own
YAML block headed ``# <file>``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()
RTO = Path(sys.executable).parent / "rto"
# Shown with what a run on a cluster printed; tests/e2e/test_rto_commands.py runs them on the kit.
CLUSTER_COMMANDS = ("status", "results", "logs", "submit", "delete", "retry")


def examples() -> list[tuple[str, str]]:
    """(command, output) for every ``$ rto ...`` line in the README's text blocks."""
    found = []
    for block in re.findall(r"```text\n(.*?)```", README, flags=re.S):
        for part in re.split(r"^(?=\$ )", block, flags=re.M):
            if part.startswith("$ rto "):
                command, _, output = part.partition("\n")
                found.append((command[2:], output))
    return found


def embedded_files() -> dict[str, str]:
    return {match.group(1): match.group(2) for match in re.finditer(r"```yaml\n# (\S+)\n(.*?)```", README, flags=re.S)}


RUNNABLE = [(command, output) for command, output in examples() if command.split()[1] not in CLUSTER_COMMANDS]


def test_the_readme_shows_commands_of_both_kinds():
    assert {command.split()[1] for command, _ in RUNNABLE} >= {"plan", "validate"}
    assert len(examples()) > len(RUNNABLE), "the cluster examples are found too"


@pytest.mark.parametrize("command, shown", RUNNABLE, ids=[command for command, _ in RUNNABLE])
def test_a_readme_example_prints_what_the_readme_shows(command, shown, tmp_path):
    args, files = shlex.split(command)[1:], embedded_files()
    for value in args:
        if value in files and not (ROOT / value).exists():
            (tmp_path / value).write_text(files[value])
    args = [str(ROOT / value) if (ROOT / value).is_file() else value for value in args]
    ran = subprocess.run([str(RTO), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert ran.stdout + ran.stderr == shown, f"README shows:\n{shown}\n`{command}` prints:\n{ran.stdout}{ran.stderr}"
