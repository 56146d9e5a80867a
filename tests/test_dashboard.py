"""The dashboard: its JSON through the test client, and the page in a real headless Chromium
(the chart of the last hour, look-up, cancel and retry, the stale warning).

The browser test drives Debian's ``chromium`` (/usr/bin/chromium) with the Playwright package and
never downloads a browser. Without chromium it is skipped, unless REQUIRE_BROWSER=1 (set by CI),
where it fails.
"""

from __future__ import annotations

import base64
import os
import shutil
import time

import pytest
import requests

from nodeapp.history import History, Sample, merge
from provisioning.local_cluster import free_port
from tests.conftest import TOKEN
from tests.helpers import QUICK_ENV, FakeLauncher, running_cluster, wait_for
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
    assert data["nodes"][0]["workers"] == {"live": 0, "pending": 0, "max": 5, "capacity": 5,
                                           "capacity_why": "MAX_NUM_OF_WORKERS, less slots lent, plus slots borrowed"}
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


def sample(at: float, completed: int, queued: int = 0, peer: bool | None = True) -> Sample:
    return Sample(at, queued, 1, 2, 0, completed, 0, peer)


def test_history_keeps_a_bounded_series_with_a_rate_per_minute():
    history = History(interval=10, points=360)
    assert history.slot(1_000_017.5) == 1_000_010
    for i in range(400):
        history.add(sample(1_000_000 + 10 * i, completed=5 * i))
    points = history.samples()
    assert len(points) == 360 and points[0].at == 1_000_000 + 10 * 40
    assert {p.per_minute for p in points} == {30.0}  # 5 completions per 10 s
    history.add(sample(points[-1].at, completed=points[-1].completed + 1))  # the same slot: replaced
    assert len(history.samples()) == 360 and history.samples()[-1].per_minute == 31.0  # 31 in the last minute


def test_completed_per_minute_is_the_last_minutes_completions_whatever_the_interval():
    for interval in (0.5, 2, 10, 60):
        history = History(interval=interval)
        for i in range(int(300 / interval)):
            history.add(sample(1_000_000 + interval * i, completed=int(i * interval // 3)))  # one per 3 s
        assert abs(history.samples()[-1].per_minute - 20) <= 60 / max(60, interval) + 0.01, interval
    burst = History(interval=10)
    for i, completed in enumerate([0, 0, 0, 0, 0, 0, 0, 480, 480, 480]):  # 480 at once, then none
        burst.add(sample(1_000_000 + 10 * i, completed=completed))
    assert [p.per_minute for p in burst.samples()][-4:] == [0.0, 480.0, 480.0, 480.0]  # for a minute, not 2880
    restarted = History(interval=10)
    for i, completed in enumerate([100, 110, 5, 15]):  # a node without a journal restarted: counts from 0
        restarted.add(sample(1_000_000 + 10 * i, completed=completed))
    assert [p.per_minute for p in restarted.samples()] == [None, 60.0, None, 60.0]


def test_history_is_kept_across_a_restart_where_there_is_a_data_dir(tmp_path, caplog):
    from nodeapp import create_app

    settings = {"cluster_token": TOKEN, "node_name": "n", "node_url": "http://127.0.0.1:1", "data_dir": str(tmp_path),
                "history_seconds": 0.1}
    first = create_app(settings, launcher=FakeLauncher())
    context = first.extensions["nodeapp"]
    for _ in range(3):
        at = context.history.slot(time.time())
        context.sample_history()
        wait_for(lambda: context.history.slot(time.time()) > at, timeout=5, interval=0.02, what="the next slot")
    kept = first.test_client().get("/history").get_json()["points"]
    context.close()  # the node stops (its journal is closed)
    assert len(kept) == 3

    again = create_app(settings, launcher=FakeLauncher())  # the same DATA_DIR: the chart goes on
    assert again.test_client().get("/history").get_json()["points"] == kept
    again.extensions["nodeapp"].sample_history()
    assert len(again.test_client().get("/history").get_json()["points"]) == 4
    again.extensions["nodeapp"].close()

    (tmp_path / "history.json").write_text("not json")
    with caplog.at_level("WARNING"):
        damaged = create_app(settings, launcher=FakeLauncher())
    assert damaged.test_client().get("/history").get_json()["points"] == [] and "not read" in caplog.text
    damaged.extensions["nodeapp"].close()
    no_dir = create_app({**settings, "data_dir": ""}, launcher=FakeLauncher())
    no_dir.extensions["nodeapp"].sample_history()
    assert not (tmp_path / "n").exists() and len(no_dir.extensions["nodeapp"].history.samples()) == 1


def test_merge_adds_the_nodes_up_per_sample_time():
    a = [{"at": 10.0, "queued": 1, "running": 1, "live": 1, "pending": 0, "per_minute": None, "peer_reachable": True},
         {"at": 20.0, "queued": 2, "running": 1, "live": 1, "pending": 1, "per_minute": 6.0, "peer_reachable": False}]
    b = [{"at": 10.0, "queued": 3, "running": 0, "live": 2, "pending": 0, "per_minute": 12.0, "peer_reachable": True}]
    assert merge([a, b]) == [
        {"at": 10.0, "queued": 4, "running": 1, "live": 3, "pending": 0, "per_minute": 12.0, "nodes": 2,
         "peer_down": False},
        {"at": 20.0, "queued": 2, "running": 1, "live": 1, "pending": 1, "per_minute": 6.0, "nodes": 1,
         "peer_down": True},
    ]


def test_history_failed_tasks_and_workers_in_the_json(app, client, auth):
    from nodeapp.context import get_context

    app.extensions["nodeapp"].node.workers.add(["w1"])
    run_one_task(client, auth, b"other")  # w1 claims: live, seen just now
    queued = client.put("/enqueue?iterations=5", data=SECRET_BODY).get_json()["id"]
    with app.app_context():
        get_context().sample_history()
    assert client.post(f"/cancel/{queued}").status_code == 200
    own = client.get("/history").get_json()
    assert own["node"] == "test-node" and own["interval"] == 10.0 and len(own["points"]) == 1
    point = own["points"][0]
    assert (point["queued"], point["completed"], point["peer_reachable"]) == (1, 1, None)
    assert own["decisions"] == []
    chart = client.get("/dashboard/history").get_json()
    assert chart["window"] == 3600.0 and chart["points"][0]["queued"] == 1 and chart["points"][0]["nodes"] == 1
    data = client.get("/dashboard/data").get_json()
    assert [(f["id"], f["state"], f["reason"]) for f in data["failed"]] == [(queued, "cancelled", "cancelled by a client")]
    (worker,) = data["workers"]
    assert (worker["node"], worker["id"], worker["state"]) == ("test-node", "w1", "live")
    assert 0 <= worker["last_seen_ago"] < 60
    assert client.get("/dashboard/node").get_json()["failed"][0]["id"] == queued
    assert SECRET_BODY.decode() not in client.get("/dashboard/data").get_data(as_text=True)


def test_results_and_failed_tasks_are_searched_and_paged_newest_first(client, auth):
    ids = [client.put(f"/enqueue?iterations={i + 1}", data=b"page %d" % i).get_json()["id"] for i in range(25)]
    claimed = client.post("/claim", json={"worker_id": "w1", "max_tasks": 25}, headers=auth).get_json()["tasks"]
    results = {t["id"]: f"{i:02d}" * 64 for i, t in enumerate(claimed)}
    for task in claimed:  # one at a time: each its own completion time, in order
        client.post("/complete", json={"worker_id": "w1", "results": [{"id": task["id"], "result": results[task["id"]]}]},
                    headers=auth)
    cancelled = [client.put("/enqueue?iterations=1", data=b"to cancel %d" % i).get_json()["id"] for i in range(3)]
    for task_id in cancelled:
        assert client.post(f"/cancel/{task_id}").status_code == 200

    def page(**params) -> dict:
        answer = client.get("/dashboard/list", query_string=params)
        assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
        return answer.get_json()

    first = page(kind="results", limit=10)
    newest_first = [t["id"] for t in claimed][::-1]
    assert [r["id"] for r in first["items"]] == newest_first[:10] and first["more"] is True
    assert first["items"][0] == {"node": "test-node", "id": newest_first[0], "iterations": claimed[-1]["iterations"],
                                 "completed_at": first["items"][0]["completed_at"], "result": results[newest_first[0]]}
    last = page(kind="results", limit=10, offset=20)
    assert [r["id"] for r in last["items"]] == newest_first[20:] and last["more"] is False
    one = ids[7]
    assert [r["id"] for r in page(q=one[:10].upper())["items"]] == [one]  # by id, any case
    assert [r["id"] for r in page(q=results[one][:6])["items"]] == [one]  # by result
    assert page(q="no such thing")["items"] == [] and page(q="no such thing")["more"] is False
    failed = page(kind="failed")
    assert [f["id"] for f in failed["items"]] == cancelled[::-1]
    assert {f["reason"] for f in failed["items"]} == {"cancelled by a client"}
    assert len(page(kind="failed", q="client", limit=2)["items"]) == 2 and page(kind="failed", q="client", limit=2)["more"]
    assert [f["id"] for f in page(kind="failed", q=cancelled[1])["items"]] == [cancelled[1]]
    assert len(page(kind="results", scope="node", limit=30)["items"]) == 25  # the peer's part: no paging

    for bad in ({"kind": "tasks"}, {"offset": "-1"}, {"offset": "10001"}, {"limit": "101"}, {"limit": "x"},
                {"q": "x" * 129}, {"q": "\u00e9"}, {"scope": "all"}):
        answer = client.get("/dashboard/list", query_string=bad)
        assert answer.status_code == 400 and answer.get_json()["error"] == "bad_request", bad
    assert SECRET_BODY.decode() not in client.get("/dashboard/list").get_data(as_text=True)


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://localhost:9999"}])
def test_a_browser_on_another_site_cannot_change_state(client, headers):
    task_id = client.put("/enqueue?iterations=5", data=b"x").get_json()["id"]
    refused = client.post(f"/cancel/{task_id}", headers=headers)
    assert refused.status_code == 403 and refused.get_json()["error"] == "cross_origin"
    assert client.put("/enqueue?iterations=5", data=b"y", headers=headers).status_code == 403
    assert client.get(f"/status/{task_id}", headers=headers).get_json()["state"] == "queued"  # reading is fine
    assert client.get("/stats").get_json()["enqueued"] == 1  # the refused enqueue queued nothing
    same_site = client.post(f"/cancel/{task_id}", headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"})
    assert same_site.status_code == 200 and same_site.get_json()["state"] == "cancelled"


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
    env = {**QUICK_ENV, "HISTORY_SECONDS": "0.5"}  # the chart fills in seconds
    with running_cluster(env, tmp_path_factory.mktemp("dashboard-cluster")) as nodes:
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

    def chart_rate() -> str:  # the chart's newest figure, as the card rounds it
        newest = requests.get(cluster.urls[0] + "/dashboard/history", timeout=5).json()["points"][-1]["per_minute"]
        return str(int(newest + 0.5))

    wait_for(lambda: figure(page, "per-minute") == chart_rate(), timeout=15, what="the card to show the chart's rate")
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
def test_results_are_searched_and_paged_on_the_page_across_both_nodes(page, cluster):
    on_a, on_b = ([Client([url]).enqueue(f"list {name} {i}", 3) for i in range(6)] for name, url in
                  zip("ab", cluster.urls, strict=True))
    Client(cluster.urls).wait(on_a + on_b, timeout=60)
    found = requests.get(cluster.urls[0] + "/dashboard/list", params={"q": on_b[2]}, timeout=5).json()
    assert [(item["id"], item["node"]) for item in found["items"]] == [(on_b[2], "node-b")]  # asked of node-a

    def rows() -> list[str]:  # read at once: the page replaces its rows at each refresh
        return page.eval_on_selector_all("#results tbody tr", "rows => rows.map(row => row.innerText)")

    def note() -> str:
        return page.text_content("#results-search .page-note")

    page.fill("#results-search input[name=q]", on_b[2][:12])
    page.click("#results-search button[type=submit]")
    wait_for(lambda: len(rows()) == 1 and on_b[2][:12] in rows()[0] and note().startswith("matching"), timeout=10,
             what="the one matching result")
    page.fill("#results-search input[name=q]", "")
    page.click("#results-search button[type=submit]")
    wait_for(lambda: len(rows()) == 10 and note() == "newest 10", timeout=10, what="the newest 10 again")
    newest = rows()
    page.click("#results-search [data-page=older]")
    wait_for(lambda: note().startswith("11–") and rows() and rows()[0] not in newest, timeout=10,
             what="the next 10, older")
    assert page.is_enabled("#results-search [data-page=newer]")
    page.click("#results-search [data-page=newer]")
    wait_for(lambda: note() == "newest 10", timeout=10, what="back to the newest")


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


def count(page, selector: str) -> int:
    return page.locator(selector).count()


@pytest.mark.integration
def test_the_chart_draws_the_last_hour_with_scaling_decisions(page):
    wait_for(lambda: int(page.evaluate("() => document.body.dataset.chartPoints || '0'")) >= 3, timeout=30,
             what="three samples in the chart")
    for cls in ("queued", "running", "live", "pending"):
        assert count(page, f"#chart-load path.line.{cls}") == 1
    assert count(page, "#chart-rate path.line.rate") == 1
    wait_for(lambda: count(page, "#chart-load g.marker") >= 1, timeout=20, what="a scaling decision marked")
    assert "launched" in page.text_content("#chart-load g.marker title")
    assert page.is_hidden("#chart-empty")


@pytest.mark.integration
def test_workers_are_listed_with_state_engine_and_last_seen(page, cluster):
    client = Client(cluster.urls)
    client.wait([client.enqueue(b"keep a worker busy", 20_000)], timeout=60)
    wait_for(lambda: "s ago" in table_text(page, "workers"), timeout=20, what="a worker with its last-seen time")
    rows = table_text(page, "workers")
    assert "live" in rows and ("native" in rows or "python" in rows)


@pytest.mark.integration
def test_look_up_cancel_and_retry_from_the_page(page, cluster):
    client = Client(cluster.urls)
    task_id = client.enqueue(b"a long task to cancel", 10_000_000)
    page.fill("#lookup-id", task_id)
    page.click("#lookup button[type=submit]")
    wait_for(lambda: page.is_visible("#lookup-result") and task_id in page.inner_text("#lookup-result"), timeout=10,
             what="the task looked up")
    assert page.inner_text("#lookup-result .state-queued, #lookup-result .state-running") in ("queued", "running")
    page.click("#lookup-result button:text('Cancel')")
    wait_for(lambda: "cancelled" in page.inner_text("#action-message"), timeout=10, what="the cancel answered")
    assert client.status(task_id)["state"] == "cancelled"
    wait_for(lambda: task_id[:12] in table_text(page, "failed"), timeout=10, what="the cancelled task listed")
    assert "cancelled by a client" in table_text(page, "failed")

    page.click(f"#failed td[title='{task_id}'] ~ td button:text('Retry')")
    wait_for(lambda: "queued again" in page.inner_text("#action-message"), timeout=10, what="the retry answered")
    assert client.status(task_id)["state"] in ("queued", "running")
    client.cancel(task_id)  # spare the CPU

    page.fill("#lookup-id", "f" * 32)  # a well-formed id no node knows
    page.click("#lookup button[type=submit]")
    wait_for(lambda: "unknown_task" in page.inner_text("#action-message"), timeout=10, what="the unknown id reported")


@pytest.mark.integration
def test_a_stale_warning_shows_while_updates_stop(page):
    assert page.is_hidden("#stale")
    page.route("**/dashboard/data", lambda route: route.abort())
    try:
        wait_for(lambda: page.is_visible("#stale"), timeout=20, what="the stale warning")
        assert page.inner_text("#stale").startswith("Stale: no update for")
        assert "is-stale" in page.evaluate("() => document.body.className")
    finally:
        page.unroute("**/dashboard/data")
    wait_for(lambda: page.is_hidden("#stale"), timeout=20, what="the warning gone once updates resume")


@pytest.mark.integration
def test_shows_when_the_peer_goes_away(page, cluster):
    # a loaded machine can make a ping time out before (a band already): this outage adds one
    before = count(page, "#chart-load rect.band")
    cluster.stop_node(1, grace=5)
    wait_for(lambda: figure(page, "peer") == "unreachable", timeout=20, what="the peer shown unreachable")
    assert "unreachable" in table_text(page, "nodes")
    assert figure(page, "total-workers").endswith("/ 2")  # only node-a's figures count now
    wait_for(lambda: count(page, "#chart-load rect.band") > before, timeout=30, what="the outage marked in the chart")
    assert "peer unreachable" in page.locator("#chart-load rect.band title").last.text_content()


def test_data_shows_each_nodes_capacity_and_why():
    from nodeapp import create_app

    app = create_app({"cluster_token": TOKEN, "node_url": "http://127.0.0.1:1", "max_workers": 5,
                      "local_max_workers": 2})
    data = app.test_client().get("/dashboard/data").get_json()
    assert data["nodes"][0]["workers"] == {"live": 0, "pending": 0, "max": 5, "capacity": 2,
                                           "capacity_why": "TM_LOCAL_MAX_WORKERS=2"}
    assert data["totals"]["workers"]["capacity"] == 2
    assert data["totals"]["workers"]["capacity_why"] == f"{data['node']}: TM_LOCAL_MAX_WORKERS=2"


def test_data_shows_priorities_scheduled_tasks_and_a_paused_intake():
    from nodeapp import create_app

    app = create_app({"cluster_token": TOKEN, "node_url": "http://127.0.0.1:1"}, launcher=FakeLauncher())
    web = app.test_client()
    for index, priority in enumerate((9, 9, 0)):
        web.put(f"/enqueue?iterations=1&priority={priority}", data=f"body {index}".encode())
    web.put("/enqueue?iterations=1&countdown=600", data=b"later")
    web.post("/pause", headers={"X-Cluster-Token": TOKEN})
    node = web.get("/dashboard/data").get_json()["nodes"][0]
    assert (node["queued"], node["by_priority"], node["scheduled"], node["paused"]) == (3, {"9": 2, "0": 1}, 1, True)


@pytest.mark.integration
def test_the_page_shows_priorities_scheduled_tasks_paused_intake_and_takes_a_client_key(browser, tmp_path):
    """On nodes without workers (so queued tasks stay queued) that require client keys, in Chromium."""
    env = {"MAX_NUM_OF_WORKERS": "0", "HISTORY_SECONDS": "0.5", "API_KEYS": "required"}
    with running_cluster(env, tmp_path) as idle:
        page = browser.new_page()
        try:
            page.goto(idle.urls[0] + "/")
            wait_for(lambda: "updated" in page.text_content("#updated"), timeout=20, what="the first refresh")
            key = Client(idle.urls, token=idle.token).create_key("page")["key"]  # the operator's token
            client = Client(idle.urls[:1], api_key=key)
            client.enqueue_many([b"p9-a", b"p9-b"], 5, priority=9)
            low = client.enqueue(b"p0", 5)
            client.enqueue(b"later", 5, priority=4, countdown=600)
            wait_for(lambda: "3 · p9 2 p0 1 · 1 later" in table_text(page, "nodes"), timeout=20,
                     what="node-a's queue by priority, and its scheduled task")
            assert "up" in table_text(page, "nodes").splitlines()[0]

            page.fill("#lookup-id", low)  # without the key: refused, and the page says why
            page.click("#lookup button[type=submit]")
            wait_for(lambda: "api_key_required" in page.inner_text("#action-message"), timeout=10,
                     what="the look-up refused without a key")
            page.fill("#action-token", key)
            page.click("#lookup button[type=submit]")
            wait_for(lambda: page.is_visible("#lookup-result") and low in page.inner_text("#lookup-result"),
                     timeout=10, what="the task looked up with the key")
            page.click("#lookup-result button:text('Cancel')")
            wait_for(lambda: "cancelled" in page.inner_text("#action-message"), timeout=10, what="the cancel answered")
            assert client.status(low)["state"] == "cancelled"
            assert key not in page.content(), "the key typed is never written into the page"

            paused = requests.post(idle.urls[0] + "/pause", headers={"X-Cluster-Token": idle.token}, timeout=5)
            assert paused.status_code == 200
            wait_for(lambda: "intake paused" in table_text(page, "nodes").splitlines()[0], timeout=20,
                     what="node-a shown paused")
            assert "intake paused" not in table_text(page, "nodes").splitlines()[1]  # node-b still takes tasks
        finally:
            page.close()
