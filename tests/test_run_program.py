"""run_program.py: a missing dependency is named for the mode being run."""

from __future__ import annotations

import sys

import run_program


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
