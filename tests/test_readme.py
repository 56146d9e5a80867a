"""The docs stay true: the README documents every setting, docs/api.md every endpoint the node has."""

import re
from pathlib import Path

import pytest

from nodeapp.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
API_DOC = (ROOT / "docs" / "api.md").read_text()


@pytest.mark.parametrize("env", sorted(s.env for s in SETTINGS.values()))
def test_every_setting_is_documented(env):
    assert f"`{env}`" in README


def test_every_endpoint_is_documented(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[-1] == "static":  # files of the dashboard page
            continue
        pattern = r"<\w+>".join(re.escape(part) for part in re.split(r"<[^>]+>", rule.rule))
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert re.search(f"{method} {pattern}", API_DOC), f"{method} {rule.rule} is not in docs/api.md"


def test_quickstart_commands_are_the_ci_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "./init_setup.sh && .venv/bin/python -m pytest"
    assert test_command in README and test_command in ci
    assert "./init_setup.sh && .venv/bin/python run_program.py --local" in README
