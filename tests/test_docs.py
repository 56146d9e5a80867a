"""The docs are checked where it is cheap: docs/client.md's terminal sessions are run against a
real two-node cluster and what each command prints is compared, by shape, with what the page
shows; its Python example runs and each value has the keys its comment lists; api.md's task
states are the code's; what the docs tell users to create is ignored by git.

A shape is a line with ids, hex digests, times, numbers and paths made generic, so that
``74574d2486c24687b99af1771ba69248  completed  100000  03:22:26`` matches any completed row.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nodeapp.store import records
from tests.helpers import QUICK_ENV, running_cluster
from tmclient.client import Client

ROOT = Path(__file__).resolve().parent.parent
CLIENT_MD = ROOT / "docs" / "client.md"
#: Commands of the sessions that are not run here: the set-up, the cluster itself (the test
#: starts one), the ones that run until Ctrl-C, and the test suite.
NOT_RUN = re.compile(r"init_setup\.sh|run_program\.py|^source |^export TM_NODES=|--follow|--watch|-m pytest")
_SHAPES = [
    (re.compile(r"\b[0-9a-f]{32}\b"), "<id>"),
    (re.compile(r"\b[0-9a-f]{12,}…?"), "<hex>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<time>"),
    (re.compile(r"(?<![\w.])/[\w./-]+"), "<path>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]


def shape(line: str) -> str:
    for pattern, name in _SHAPES:
        line = pattern.sub(name, line)
    return " ".join(line.split())


def console_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"```console\n(.*?)```", text, re.S)]


def sessions(block: list[str]) -> list[tuple[str, list[str]]]:
    """(command, the lines the docs show it printing) for each ``$`` line of a block."""
    steps: list[tuple[str, list[str]]] = []
    for line in block:
        if line.startswith("$ "):
            steps.append((re.sub(r"\s+#.*$", "", line[2:]).strip(), []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def shown(lines: list[str]) -> list[str]:
    """The documented lines worth comparing: not "...", not a progress bar (it redraws itself)."""
    return [line for line in lines if line.strip() not in ("", "...") and "━" not in line]


def test_the_files_the_docs_tell_users_to_create_are_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for name in (".tm-cursor", ".tm-data/node-a/journal.db"):
        done = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert done.returncode == 0, f"{name} is not ignored by git"


def test_api_md_lists_every_state_a_task_can_be_in():
    text = (ROOT / "docs" / "api.md").read_text()
    listed = re.search(r"`state` is one of ((?:`\w+`,?\s*)+)", text).group(1)
    states = {getattr(records, name) for name in ("QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")}
    assert set(re.findall(r"`(\w+)`", listed)) == states


def test_client_md_sessions_are_the_ones_its_commands_print(tmp_path):
    """Covered: every ``$`` command of client.md's sessions but those ``NOT_RUN`` matches."""
    steps = [step for block in console_blocks(CLIENT_MD.read_text()) for step in sessions(block)
             if not NOT_RUN.search(step[0])]
    assert len(steps) >= 12 and any(command.startswith("tm wait") for command, _ in steps)
    script = ["set -u"]
    for index, (command, _) in enumerate(steps):
        script += [f"echo '@@@ {index}'", f"{command} 2>&1", f"echo \"@@@ rc $?\""]
    env = {k: v for k, v in os.environ.items() if k != "TM_NODES"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # tm, as after `source`
    with running_cluster(QUICK_ENV, tmp_path / "logs") as cluster:
        env["TM_NODES"] = ",".join(cluster.urls)
        done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
    parts = re.split(r"^@@@ (\d+)\n", done.stdout, flags=re.M)[1:]
    outputs = {int(number): body for number, body in zip(parts[::2], parts[1::2], strict=True)}
    assert len(outputs) == len(steps), done.stdout[-2000:] + done.stderr[-2000:]
    for index, (command, documented) in enumerate(steps):
        body, _, rc = outputs[index].rpartition("@@@ rc ")
        assert rc.strip() == "0", f"{command!r} exited {rc.strip()}:\n{body}"
        printed = {shape(line) for line in body.splitlines()}
        for line in shown(documented):
            assert shape(line) in printed, f"{command!r}: the docs show {line!r}; it printed:\n{body}"


def test_client_md_python_example_runs_and_returns_the_shapes_it_shows(tmp_path, monkeypatch):
    code = re.search(r"```python\n(from pathlib.*?)```", CLIENT_MD.read_text(), re.S).group(1)
    (tmp_path / "data.bin").write_bytes(b"the documented data.bin")
    monkeypatch.chdir(tmp_path)
    with running_cluster(QUICK_ENV, tmp_path / "logs") as cluster:
        monkeypatch.setenv("TM_NODES", ",".join(cluster.urls))
        warm = Client()
        warm.wait([warm.enqueue("a result to pull", 1)], timeout=60)  # pull_completed has one to show
        namespace: dict = {"print": lambda *args: None, "OPERATOR_TOKEN": cluster.token}
        lines = code.splitlines()
        checked = 0
        for statement in ast.parse(code).body:
            source = textwrap.dedent("\n".join(lines[statement.lineno - 1:statement.end_lineno]))
            comment = lines[statement.end_lineno - 1].partition("#")[2]
            target = statement.targets[0].id if isinstance(statement, ast.Assign) else None
            if isinstance(statement, ast.Expr):
                value = eval(compile(ast.Expression(statement.value), "client.md", "eval"), namespace)  # noqa: S307
            else:
                exec(compile(ast.Module([statement], []), "client.md", "exec"), namespace)  # noqa: S102
                value = namespace.get(target) if target else None
            if isinstance(statement, ast.Expr) or target:
                checked += check_shape(value, comment, namespace)
        assert checked >= 4


def check_shape(value, comment: str, namespace: dict) -> int:
    """Whether ``value`` has the shape the comment shows: ``{"a", "b"?}`` (keys; ``?`` = when it
    applies), ``[{...}, ...]`` (a list of such), ``{"a": ..., "b": ...}`` or ``{id: status}``
    (each value as ``status(id)`` gives it). Returns 1 if a shape was checked, 0 if none shown
    (or the list is empty)."""
    start = min((i for i in (comment.find("{"), comment.find("[{")) if i >= 0), default=-1)
    if start < 0:
        return 0
    text = comment[start:]
    if text.startswith("{id: status}"):
        client: Client = namespace["client"]
        assert value and all(task == client.status(task_id) for task_id, task in value.items()), value
        return 1
    listed = text.startswith("[")
    inner = text[1:] if listed else text
    depth, top = 0, ""
    for char in inner:  # the outermost braces only: nested groups are left out
        depth += char in "{["
        depth -= char in "}]"
        if depth == 1 and char not in "{[":
            top += char
        if depth == 0:
            break
    keys = re.findall(r'"(\w+)"(\?)?', top)
    required = {key for key, optional in keys if not optional}
    items = value if listed else [value]
    if listed and value == []:
        return 0  # nothing to compare (no worker holds a task right now)
    assert items and required, (value, comment)
    for item in items:
        assert isinstance(item, dict) and required <= set(item), f"{comment.strip()}: got {item}"
    return 1
