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


def test_fresh_says_how_many_tasks_and_results_it_removed(tmp_path):
    import argparse

    from nodeapp.store.journal import Accepted, Completed, Failed, Journal
    from provisioning.local_cluster import LocalCluster
    from tmrun.local import prepare_data_dir

    for name, done in (("node-a", 2), ("node-b", 1)):
        journal = Journal(tmp_path / name)
        journal.load()
        journal.start()
        journal.write([Accepted(seq, f"{name}-{seq}", 1, b"body", 1.0) for seq in range(1, 5)]).wait()
        journal.write([Completed(seq, "a" * 128, 2.0) for seq in range(1, done + 1)] + [Failed(4, "why", 3.0)]).wait()
        journal.close()
    cluster = LocalCluster(ports=(1, 2), log_dir=tmp_path / "logs", data_dir=tmp_path)
    line = prepare_data_dir(argparse.Namespace(fresh=True), cluster, tmp_path)
    assert line.endswith("--fresh removed 5 tasks (3 queued, 2 failed or cancelled) and 3 results"), line
    line = prepare_data_dir(argparse.Namespace(fresh=True), cluster, tmp_path)
    assert line.endswith("--fresh removed 0 tasks (0 queued, 0 failed or cancelled) and 0 results"), line
    assert "--fresh empties them" in prepare_data_dir(argparse.Namespace(fresh=False), cluster, tmp_path)
