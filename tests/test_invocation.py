"""Hints name the command that works as the user started the program (a venv need not be active)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tmcommon.invocation import program_command, python_command

ROOT = Path(__file__).resolve().parent.parent


def link(path: Path, target: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return str(path)


def test_a_venv_python_is_named_by_its_path_even_if_it_links_to_python3_on_path(tmp_path, monkeypatch):
    system = link(tmp_path / "usr/bin/python3", sys.executable)
    venv = link(tmp_path / "proj/.venv/bin/python", system)  # as venv makes it: a link to the system python
    monkeypatch.setenv("PATH", str(tmp_path / "usr/bin"))
    assert python_command(venv, cwd=str(tmp_path / "proj")) == ".venv/bin/python"
    assert python_command(venv, cwd=str(tmp_path / "elsewhere")) == f"{tmp_path}/proj/.venv/bin/python"
    assert python_command(system, cwd=str(tmp_path)) == "python3"


def test_an_active_venv_is_just_python3(tmp_path, monkeypatch):
    venv = link(tmp_path / ".venv/bin/python3", sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path / ".venv/bin"))
    assert program_command("--destroy", script="run_program.py", executable=venv, cwd=str(tmp_path)) == \
        "python3 run_program.py --destroy"


def test_the_script_path_is_kept_as_typed_and_quoted(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    command = program_command("--destroy", "--cluster-name", "my demo", script="../tm/run_program.py",
                              executable="/opt/py/bin/python", cwd=str(tmp_path))
    assert command == "/opt/py/bin/python ../tm/run_program.py --destroy --cluster-name 'my demo'"
    assert program_command(script="/usr/lib/pytest/__main__.py", executable="/opt/py/bin/python",
                           cwd=str(tmp_path)) == "/opt/py/bin/python run_program.py"


def test_help_prints_the_interpreter_it_was_started_with():
    env = {**os.environ, "PATH": "/nonexistent"}  # no python3 on PATH: the venv is not "active"
    out = subprocess.run([sys.executable, "run_program.py", "--help"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60).stdout
    expected = f"{python_command(sys.executable, cwd=str(ROOT))} run_program.py --destroy"
    assert expected in out and "    python3 run_program.py" not in out
