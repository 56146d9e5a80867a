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


# ------------------------------------------------------------ inside the node package
#: nodeapp's parts (a folder, or top-level modules) -> modules they must never import. The store
#: knows nothing of HTTP, workers or the peer; the fleet nothing of HTTP nor of the node's
#: composition (it sees the node through ``nodeapp.fleet.scaling.ScaledNode``); nothing below
#: the HTTP layer imports it. ``nodeapp`` alone is the composition root (``create_app``).
NODE_PARTS = {
    "nodeapp/store": ("nodeapp", "nodeapp.web", "nodeapp.fleet", "nodeapp.context", "nodeapp.node",
                      "nodeapp.background", "nodeapp.metrics", "nodeapp.history", "flask", "werkzeug", "requests",
                      "boto3", "apscheduler", "prometheus_client", "provisioning"),
    "nodeapp/fleet": ("nodeapp", "nodeapp.web", "nodeapp.context", "nodeapp.node", "nodeapp.background",
                      "flask", "werkzeug"),
    "nodeapp/node.py": ("nodeapp", "nodeapp.web", "nodeapp.context", "nodeapp.background", "flask"),
    "nodeapp/config.py": ("nodeapp", "nodeapp.web", "nodeapp.store", "nodeapp.fleet", "nodeapp.context", "flask"),
    "nodeapp/history.py": ("nodeapp", "nodeapp.web", "nodeapp.context", "flask"),
    "nodeapp/metrics.py": ("nodeapp", "nodeapp.web", "nodeapp.context"),
    "nodeapp/context.py": ("nodeapp", "nodeapp.web", "nodeapp.background"),
}


def dotted_imports(path: Path) -> set[str]:
    """Every module an import statement of ``path`` may load, dotted (``from a.b import c`` gives
    ``a.b`` and ``a.b.c``; a relative import is resolved against the file's package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] if node.level else ()) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def forbidden_hits(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    """``names`` that are a forbidden module or inside one; ``nodeapp`` forbids only itself."""
    return sorted(n for n in names for f in forbidden
                  if n == f or (f != "nodeapp" and n.startswith(f + ".")) or (f == "nodeapp" and n in (
                      "nodeapp.create_app", "nodeapp.silence_seconds")))


@pytest.mark.parametrize("part", sorted(NODE_PARTS))
def test_the_node_package_parts_import_only_downwards(part):
    paths = sorted((ROOT / part).rglob("*.py")) if (ROOT / part).is_dir() else [ROOT / part]
    assert paths, f"{part} has no module"
    wrong = {p.relative_to(ROOT).as_posix(): hits for p in paths
             if (hits := forbidden_hits(dotted_imports(p), NODE_PARTS[part]))}
    assert not wrong, f"imports against the node's layering: {wrong}"


def test_every_node_subpackage_says_what_it_owns_and_may_import():
    for folder in ("store", "web", "fleet"):
        doc = ast.get_docstring(ast.parse((ROOT / "nodeapp" / folder / "__init__.py").read_text()))
        assert doc and "import" in doc, f"nodeapp/{folder}/__init__.py must say what it owns and may import"


def test_the_node_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check above fails on a store module that reaches into the HTTP layer or the node."""
    (tmp_path / "nodeapp" / "store").mkdir(parents=True)
    (tmp_path / "nodeapp" / "store" / "bad.py").write_text(
        "from nodeapp.web import views\nfrom ..node import Node\ndef f():\n    import flask\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = dotted_imports(tmp_path / "nodeapp" / "store" / "bad.py")
    assert forbidden_hits(names, NODE_PARTS["nodeapp/store"]) == [
        "flask", "nodeapp.node", "nodeapp.node.Node", "nodeapp.web", "nodeapp.web.views"]
