"""The dashboard: its JSON through the test client, and the page in a real headless Chromium.

The browser test drives Debian's ``chromium`` (/usr/bin/chromium) with the Playwright package and
never downloads a browser. Without chromium it is skipped, unless REQUIRE_BROWSER=1 (set by CI),
where it fails.
"""

from __future__ import annotations

import base64
import os
import shutil

import pytest

from provisioning.local_cluster import free_port
from tests.conftest import TOKEN
from tests.helpers import QUICK_ENV, running_cluster, wait_for
from tmclient.client import Client

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECRET_BODY = b"TOP-SECRET-TASK-BODY"


# ------------------------------------------------------------- JSON and page, no browser
def run_one_task(client, auth, body: bytes, iterations: int = 1) -> str:
    task_id = client.put(f"/enqueue?iterations={iterations}", data=body).get_json()["id"]
    claimed = client.post("/claim", json={"worker_id": "w1", "max_tasks": 1}, headers=auth).get_json()
    assert [t["id"] for t in claimed["tasks"]] == [task_id]
    client.post("/complete", json={"worker_id": "w1", "results": [{"id": task_id, "result": "ab" * 64}]},
                headers=auth)
    return task_id


def test_page_is_self_contained_and_carries_no_secret(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'id="total-completed"' in html and "test-node" in html
    assert TOKEN not in html
    assert "https://" not in html and "http://" not in html and "//cdn" not in html
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css"):
        assert asset in html
        assert client.get(asset).status_code == 200


def test_data_shows_figures_results_but_no_body_and_no_token(client, auth):
    done = run_one_task(client, auth, SECRET_BODY)
    client.put("/enqueue?iterations=5", data=SECRET_BODY)
    answer = client.get("/dashboard/data")
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    data = answer.get_json()
    assert data["node"] == "test-node"
    assert data["totals"]["queued"] == 1 and data["totals"]["completed"] == 1
    assert data["nodes"][0]["workers"] == {"live": 0, "pending": 0, "max": 5}
    assert data["results"] == [{"id": done, "iterations": 1, "completed_at": data["results"][0]["completed_at"],
                                "result": "ab" * 64}]
    assert data["peer"] == {"url": None, "reachable": None}
    text = answer.get_data(as_text=True)
    assert SECRET_BODY.decode() not in text and base64.b64encode(SECRET_BODY).decode() not in text
    assert TOKEN not in text


def test_unreachable_peer_is_shown_as_unreachable(app):
    from nodeapp.context import get_context

    with app.app_context():
        get_context().configure(peer_url=f"http://127.0.0.1:{free_port()}")
    data = app.test_client().get("/dashboard/data").get_json()
    assert data["peer"]["reachable"] is False
    assert data["nodes"][1] == {"node": data["peer"]["url"], "url": data["peer"]["url"], "reachable": False}
    assert data["totals"]["workers"]["max"] == 5  # only the node that answered counts


# ------------------------------------------------------------------------- the browser
def chromium_path() -> str | None:
    return CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")


def browser_or_skip():
    reason = None
    if chromium_path() is None:
        reason = f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install -e '.[test]')"
    if reason:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    browser_or_skip()
    with running_cluster(QUICK_ENV, tmp_path_factory.mktemp("dashboard-cluster")) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def browser(cluster, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # empty user-data dir
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 900}, bypass_csp=True,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def page(browser, cluster):
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.requested = requested
    page.goto(cluster.urls[0] + "/")
    wait_for(lambda: "updated" in page.text_content("#updated"), timeout=20, what="the first refresh")
    return page


def figure(page, element_id: str) -> str:
    return page.text_content(f"#{element_id}").strip()


def table_text(page, table_id: str) -> str:
    return page.inner_text(f"#{table_id} tbody")


@pytest.mark.integration
def test_figures_change_as_tasks_complete(page, cluster, tmp_path):
    assert figure(page, "peer") == "reachable"
    assert figure(page, "total-workers").endswith("/ 4")  # 2 + 2 max over the cluster
    before = int(figure(page, "total-completed"))
    client = Client(cluster.urls)
    ids = [client.enqueue(SECRET_BODY + bytes([i]), 20_000) for i in range(6)]
    client.wait(ids, timeout=60)

    wait_for(lambda: int(figure(page, "total-completed")) == before + 6, timeout=20,
             what="the page to count the 6 new completions")
    assert figure(page, "total-queued") == "0" and figure(page, "total-failed") == "0"
    wait_for(lambda: figure(page, "per-minute").isdigit() and int(figure(page, "per-minute")) > 0, timeout=10,
             what="completed per minute above 0")
    results = table_text(page, "results")
    assert any(task_id[:12] in results for task_id in ids)
    assert "node-a" in table_text(page, "decisions")  # node-a got work and launched a worker
    nodes = table_text(page, "nodes")
    assert "node-a (this node)" in nodes and "node-b" in nodes

    html = page.content()
    assert SECRET_BODY.decode() not in html and cluster.token not in html
    assert all(url.startswith(cluster.urls[0] + "/") for url in page.requested), page.requested
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)


@pytest.mark.integration
def test_fits_a_phone_width_screen(page):
    page.set_viewport_size({"width": 375, "height": 800})
    try:
        wait_for(lambda: page.evaluate("() => document.documentElement.scrollWidth") <= 375, timeout=5,
                 what="no sideways scrolling of the page at 375 px")
        box = page.locator("#total-completed").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 375
    finally:
        page.set_viewport_size({"width": 1100, "height": 900})


@pytest.mark.integration
def test_shows_when_the_peer_goes_away(page, cluster):
    cluster.stop_node(1, grace=5)
    wait_for(lambda: figure(page, "peer") == "unreachable", timeout=20, what="the peer shown unreachable")
    assert "unreachable" in table_text(page, "nodes")
    assert figure(page, "total-workers").endswith("/ 2")  # only node-a's figures count now
