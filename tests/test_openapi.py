"""``GET /openapi.json`` documents every endpoint (checked against the app's routes), and
schemathesis fuzzes every endpoint from it: no 5xx, every error in the JSON error shape, an error
changes nothing, answers match the document.

The default run makes a bounded number of cases per endpoint against the app in process
(FUZZ_CASES); ``pytest -m fuzz`` runs many more against a real gunicorn node (FUZZ_DEEP_CASES,
an environment variable too). A new route fails test_every_route_is_documented... until it is
added to nodeapp/web/openapi.json.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nodeapp import create_app
from tests.conftest import TOKEN
from tests.helpers import FakeLauncher, running_node, wait_for

DOCUMENT = Path(__file__).resolve().parent.parent / "nodeapp" / "web" / "openapi.json"
FUZZ_CASES = 10  # generated per endpoint in the default run (schemathesis adds its coverage cases)
FUZZ_DEEP_CASES = int(os.environ.get("FUZZ_DEEP_CASES", "300"))  # per endpoint, with -m fuzz
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: /stats fields that move without any request changing state
VOLATILE = {"peer", "scaler", "journal"}


def make_app():
    # Loans the fuzzer is granted must not expire between a case's two snapshots of /stats (a
    # loaded machine can take LOAN_TTL_SECONDS' default between them): they last the whole run.
    return create_app({"cluster_token": TOKEN, "node_name": "fuzzed", "node_url": "http://127.0.0.1:1",
                       "loan_ttl": 86400.0}, environ={}, launcher=FakeLauncher())


# ================================================================== the document and the routes
def routes(app) -> dict[str, set[str]]:
    """Every route of the app as OpenAPI paths: ``/status/<task_id>`` -> ``/status/{task_id}``."""
    found: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        found.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    return found


def test_every_route_is_documented_with_its_methods_and_nothing_else():
    document = json.loads(DOCUMENT.read_text())
    documented = {path: set(ops) for path, ops in document["paths"].items()}
    assert routes(make_app()) == documented


def test_the_document_is_served_and_loads_as_openapi():
    response = make_app().test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == json.loads(DOCUMENT.read_text())
    schema = schemathesis.openapi.from_dict(response.get_json())
    assert len(list(schema.get_all_operations())) == sum(len(ops) for ops in response.get_json()["paths"].values())


def test_internal_endpoints_are_marked_as_needing_the_token():
    from nodeapp.web.params import internal  # noqa: F401 - the decorator the marked views use

    app = make_app()
    document = json.loads(DOCUMENT.read_text())
    client = app.test_client()
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            if op.get("security") == [{"clusterToken": []}]:
                concrete = re.sub(r"\{[^}]+\}", "x", path)
                answer = client.open(concrete, method=method.upper(), json={})
                assert answer.status_code == 401, f"{method.upper()} {path} is documented as internal but answers {answer.status_code}"


# ================================================================== fuzzing
def snapshot(client) -> dict:
    stats = client.get("/stats").get_json()
    return {key: value for key, value in stats.items() if key not in VOLATILE}


def check_case(case, call, client):
    """One generated request: the node's answer is no 5xx, matches the document, and an error
    is JSON ``{"error", "message"}`` that changed nothing."""
    case.headers = {**(case.headers or {}), "X-Cluster-Token": TOKEN}  # a valid token: internal endpoints too
    before = snapshot(client)
    response = call(case)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.text[:200]
        body = json.loads(response.content)
        assert set(body) == {"error", "message"} and all(isinstance(v, str) and v for v in body.values()), body
        assert snapshot(client) == before, f"{case.method} {case.path} answered {response.status_code} but changed state"
    if case.path == "/configure":  # a fuzzed peer URL would send the next cases' peer calls anywhere
        client.post("/configure", json={"peer_url": ""}, headers={"X-Cluster-Token": TOKEN})
    if case.path == "/pause":  # a paused node would answer every later enqueue case 503 paused
        client.post("/resume", json={}, headers={"X-Cluster-Token": TOKEN})
    return response


#: The document as schemathesis reads it; cases go to the app in process or to a real node.
SCHEMA = schemathesis.openapi.from_path(str(DOCUMENT))
# PUT /enqueue_batch takes raw bytes of its own media type: fuzzed as any binary body
schemathesis.serializer.alias("application/x-tm-batch", "application/octet-stream")


@pytest.fixture(scope="module")
def app():
    return make_app()


@pytest.fixture(scope="module")
def cases_run():
    """Counts the generated requests by status; the totals are printed at the end (pytest -s)."""
    counts: dict[int, int] = {}
    yield counts
    print(f"\nfuzzing: {sum(counts.values())} requests, by status: {dict(sorted(counts.items()))}")


@SCHEMA.parametrize()
@settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_fuzz_every_endpoint(case, app, cases_run):
    response = check_case(case, lambda c: c.call(app=app), app.test_client())
    cases_run[response.status_code] = cases_run.get(response.status_code, 0) + 1


@pytest.fixture(scope="module")
def real_node(tmp_path_factory):
    env = {"CLUSTER_TOKEN": TOKEN, "MAX_NUM_OF_WORKERS": "0"}
    with running_node(env, tmp_path_factory.mktemp("fuzz")) as cluster:
        node = cluster.nodes[0]
        # no peer, as in process: with one that is down, unknown ids would rightly be 503 peer_unavailable
        forget = requests.post(f"{node.url}/configure", json={"peer_url": ""}, headers={"X-Cluster-Token": TOKEN}, timeout=10)
        assert forget.status_code == 200
        # a node started with a peer recovers its loans first; let that settle before comparing /stats
        wait_for(lambda: not requests.get(f"{node.url}/stats", timeout=10).json()["quota"].get("recovering"),
                 timeout=60, what="the node to end its quota recovery")
        yield node


class _HttpClient:
    """/stats and /configure of a real node, in the shape ``check_case`` uses."""

    def __init__(self, url: str) -> None:
        self.url, self.session = url, requests.Session()

    def get(self, path):
        answer = self.session.get(self.url + path, timeout=10)
        answer.get_json = answer.json
        return answer

    def post(self, path, json, headers):
        return self.session.post(self.url + path, json=json, headers=headers, timeout=10)


@pytest.mark.fuzz
@SCHEMA.parametrize()
@settings(max_examples=FUZZ_DEEP_CASES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_every_endpoint_of_a_real_node(case, real_node, cases_run):
    response = check_case(case, lambda c: c.call(base_url=real_node.url, timeout=10), _HttpClient(real_node.url))
    cases_run[response.status_code] = cases_run.get(response.status_code, 0) + 1
