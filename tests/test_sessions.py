"""A node keeps no sessions: every request sees the read-only empty session a Flask app without a
secret key gives (``nodeapp._NoSessions`` shares one among requests instead of making one each)."""

from __future__ import annotations

import pytest
from flask import Flask, session

from nodeapp import create_app


def _session_write_error(app: Flask) -> str:
    with app.test_request_context("/health"):
        assert dict(session) == {} and session.get("x") is None and not session.permanent
        with pytest.raises(RuntimeError) as raised:
            session["x"] = 1
        return str(raised.value)


def test_a_node_session_is_flasks_null_session_shared_by_every_request():
    node = create_app({"max_workers": 0})
    try:
        assert _session_write_error(node) == _session_write_error(Flask("plain"))  # Flask's own refusal
        with node.test_request_context("/health"):
            first = session._get_current_object()
        with node.test_request_context("/enqueue"):
            assert session._get_current_object() is first and dict(session) == {}
        answer = node.test_client().get("/health")
        assert answer.status_code == 200 and "Set-Cookie" not in answer.headers
    finally:
        node.extensions["nodeapp"].close()
