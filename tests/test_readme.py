"""The docs stay true: the README documents every setting, docs/api.md every endpoint the node has,
every link between them leads somewhere, and the README stays a five-minute read."""

import re
from pathlib import Path

import pytest

from tmcommon import settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
API_DOC = (ROOT / "docs" / "api.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_PROSE_LINES = 180  # outside the settings table; detail goes to docs/


def test_readme_settings_table_is_the_schema():
    assert settings.readme_table(README) == settings.markdown_table(), (
        "README.md's settings table differs from tmcommon/settings.py: "
        "run  python -m tmcommon.settings --update README.md")
    for setting in settings.SETTINGS.values():
        assert f"| `{setting.env}` |" in README


def test_update_rewrites_only_the_table(tmp_path):
    stale = README.replace("| `MAX_QUEUED` |", "| `MAX_QUEUED_OLD` |")
    path = tmp_path / "README.md"
    path.write_text(stale)
    assert settings.main(["--update", str(path)]) == 0
    assert path.read_text() == settings.with_table(README)
    assert settings.readme_table(path.read_text()) == settings.markdown_table()


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
    # CI's exit status is pytest's: any failure, and 5 (no test collected), fails it
    assert "\nset -euo pipefail\n" in ci and ci.strip().splitlines()[-1] == test_command
    assert "export REQUIRE_NO_SKIP=1" in ci
    assert "./init_setup.sh && .venv/bin/python run_program.py --local" in README


def _anchors(path):
    """GitHub's ids of the headings of a markdown file."""
    headings = re.findall(r"^#+ (.*)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_relative_link_leads_to_a_file_and_heading(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        dest = doc.parent / name if name else doc
        assert dest.exists(), f"{doc.name} links to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{doc.name} links to {target}: no such heading"


def test_readme_links_every_doc_and_stays_short():
    for doc in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{doc.name})" in README, f"README.md does not link docs/{doc.name}"
    start, end = README.index("<!-- settings:start -->"), README.index("<!-- settings:end -->")
    prose = README[:start].count("\n") + README[end:].count("\n")
    assert prose <= README_PROSE_LINES, (
        f"README.md has {prose} lines outside the settings table (at most {README_PROSE_LINES}): "
        "move detail to docs/ and link it")
