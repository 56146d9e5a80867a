"""``params.query_args`` splits plain query strings itself: it must give exactly what werkzeug's
``request.args`` gives (each name's first value), and leave every other string to werkzeug."""

from __future__ import annotations

import pytest
from flask import Request

from nodeapp.web.params import query_args

#: Query strings as a server hands them over (raw bytes decoded as latin-1, as WSGI says).
PLAIN = ["", "iterations=1&reuse=0", "a", "a=", "=", "==", "=b", "a==", "a=b=c", "&&", "&", "a&&b=2",
         "&a=1&", "a=1&a=2", "a=&a=2", "a&a=2", "a=1&A=2", "a=1;b=2", " a = 1 ", "a=1#frag", "a=1?b=2",
         "x=\x00\x7f", "priority=9&countdown=10.5&iterations=3&iterations=4", "reuse=&reuse=1", "a=b&&&a=c"]
ESCAPED = ["x=%41", "%61=1&a=2", "x=a+b", "a+b=1", "x=%ZZ", "x=%", "a=%26b&a=c",
           "x=\u00c3\u00a9", "\u00c3\u00a9=1", "x=\u00ff", "x=%C3%A9", "x=%FF"]


def _request(query: str) -> Request:
    return Request({"QUERY_STRING": query, "REQUEST_METHOD": "PUT", "SERVER_NAME": "127.0.0.1",
                    "SERVER_PORT": "8000", "wsgi.url_scheme": "http"})


@pytest.mark.parametrize("query", PLAIN)
def test_a_plain_query_is_split_as_werkzeug_splits_it_without_werkzeug(query):
    request = _request(query)
    got = query_args(request)
    assert "args" not in request.__dict__  # werkzeug's parse (a cached property) was not used
    assert got == _request(query).args.to_dict()


def _outcome(read, query: str):
    """What ``read`` makes of ``query``: its value, or the type of what it raised."""
    try:
        return read(_request(query))
    except Exception as exc:  # bytes that are not UTF-8: werkzeug's error must stay as it is
        return type(exc)


@pytest.mark.parametrize("query", ESCAPED)
def test_any_other_query_is_werkzeugs(query):
    assert _outcome(query_args, query) == _outcome(lambda request: request.args.to_dict(), query)


def test_each_name_has_its_first_value():
    assert query_args(_request("a=1&b&a=2&=x&c=")) == {"a": "1", "b": "", "": "x", "c": ""}
