"""Imports point one way: entry points -> nodeapp -> provisioning; workers talk to nodes over HTTP.

Two checks: what a fresh interpreter has loaded after importing a package (catches imports at
module level, including indirect ones), and every import statement in a package's source, also
those inside functions (catches a lazy import that runs only on some path).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("nodeapp", "workerapp", "provisioning", "tmclient", "tmcommon", "tmrun", "wsgi", "run_program")

#: package -> top-level modules it must never import, directly or through another module.
FORBIDDEN = {
    "workerapp": ("flask", "werkzeug", "prometheus_client", "apscheduler", "nodeapp", "provisioning", "tmrun",
                  "tmclient"),
    "provisioning": ("nodeapp", "workerapp", "tmrun", "tmclient"),
    "tmcommon": tuple(m for m in OURS if m != "tmcommon") + ("flask", "requests", "boto3", "botocore"),
}


def loaded_after(code: str) -> set[str]:
    """Top-level module names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def import_all(package: str) -> str:
    """Code that imports every module of ``package`` (``__main__`` too, without running it)."""
    names = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                   for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)
    return "\n".join(f"import {name.removesuffix('.__init__')}" for name in names)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_a_package_loads_nothing_it_must_not(package):
    wrong = loaded_after(import_all(package)) & set(FORBIDDEN[package])
    assert not wrong, f"importing {package} loaded {sorted(wrong)}"


def test_worker_command_line_loads_no_node_code():
    code = ("import runpy, sys\nsys.argv = ['workerapp', '--help']\n"
            "try:\n    runpy.run_module('workerapp', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n")
    loaded = loaded_after(code)
    assert "workerapp" in loaded
    assert not loaded & set(FORBIDDEN["workerapp"]), sorted(loaded & set(FORBIDDEN["workerapp"]))


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every top-level module an import statement of ``package`` names, by file (lazy imports too)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[path.relative_to(ROOT).as_posix()] = names
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_points_the_wrong_way(package):
    wrong = {path: sorted(names & set(FORBIDDEN[package]))
             for path, names in imported_modules(package).items() if names & set(FORBIDDEN[package])}
    assert not wrong, f"imports against the layering: {wrong}"


def test_the_source_scan_sees_lazy_imports(tmp_path, monkeypatch):
    """The check above would catch the import that used to be in provisioning/aws_cli.py."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "cli.py").write_text("def run():\n    from nodeapp.config import NodeConfig\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_modules("pkg") == {"pkg/cli.py": {"nodeapp"}}
