"""Browsers may change state only from the node's own pages.

The public actions (enqueue, cancel, retry) need no token, so that the dashboard can offer them.
A web page on another site must not make a visitor's browser send them (cross-site request
forgery): a request that changes state and that a browser marks as coming from another origin
(``Sec-Fetch-Site: cross-site``/``same-site``, or an ``Origin`` other than this node's) is
refused with 403 ``cross_origin``. Clients that are not browsers (``tm``, ``tmclient``, curl) send
neither header and are not affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, request

from nodeapp.web.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def foreign_origin() -> str | None:
    """Why the current request comes from another origin, or None if it does not (or no browser)."""
    site = request.headers.get("Sec-Fetch-Site", "")
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()):
        return f"Origin: {origin}"
    return None


def refuse_foreign_writes() -> None:
    if request.method in SAFE_METHODS:
        return
    why = foreign_origin()
    if why is not None:
        raise ApiError(403, "cross_origin", f"a browser sent this {request.method} from another site ({why}); "
                       "only the node's own pages may change state from a browser")


def init_app(app: Flask) -> None:
    app.before_request(refuse_foreign_writes)
