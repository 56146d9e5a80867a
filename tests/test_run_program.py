"""run_program.py: a missing dependency is named for the mode being run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import run_program
from tmcommon.invocation import python_command

ROOT = Path(__file__).resolve().parent.parent


def test_local_mode_names_its_missing_import(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "tmrun.local", raising=False)
    monkeypatch.setitem(sys.modules, "rich.live", None)  # as if rich were not installed
    assert run_program.main(["--local"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: local mode is not available: could not import rich.live")
    assert "AWS" not in line


def test_aws_mode_names_its_missing_import(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "boto3", None)
    assert run_program.main(["--cluster-name", "demo"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: AWS mode is not available: could not import boto3") and "--local" in line


def test_without_the_venv_one_line_names_init_setup_and_the_venv_command():
    # -S: no site-packages (the venv's), as python3 outside the venv: only the standard library
    done = subprocess.run([sys.executable, "-S", "run_program.py", "--local", "--ports", "8101,8102"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and "Traceback" not in line
    assert "./init_setup.sh" in line and line.endswith(".venv/bin/python run_program.py --local --ports 8101,8102")


def test_help_lists_the_commands_with_their_descriptions_in_one_column(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/some/where/run_program.py"])
    text = run_program.help_text()
    usage = [line for line in text.splitlines() if "run_program.py" in line]
    assert len(usage) == 4 and all(line.startswith(f"    {python_command()} /some/where/run_program.py")
                                   for line in usage)
    columns = {re.search(r"\S  +(\S)", line).start(1) for line in usage}
    assert len(columns) == 1, usage  # each description starts in the same column
