"""Browsers may change state only from the node's own pages.

The public actions (enqueue, cancel, retry) need no token (unless ACTIONS_TOKEN is set for cancel
and retry), so that the dashboard can offer them. A web page on another site must not make a
visitor's browser send them (cross-site request forgery): a request that changes state and that
a browser marks as coming from another origin (``Sec-Fetch-Site: cross-site``/``same-site``, or
an ``Origin`` other than the address the request was sent to) is refused with 403 ``cross_origin``.

The address a browser sent a request to (its ``Host`` header) is trusted only when it is one no
other site can point a browser at: an IP address, ``localhost``, or the host of ``NODE_URL``.
Another name may be a site's own, resolving to this node only since a moment ago (DNS
rebinding): a write from a browser (one that sends ``Origin`` or ``Sec-Fetch-Site``) on such a
name is refused too. Clients that are not browsers (``tm``, ``tmclient``, curl) send neither
header and are not affected.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from flask import Request

from nodeapp.context import get_context
from nodeapp.web.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _hostname(netloc: str) -> str:
    """The host of ``host[:port]`` (brackets of an IPv6 address removed), lower case."""
    return (urlsplit("//" + netloc).hostname or "").lower()


def trusted_host(host: str, node_url: str) -> bool:
    """True if a browser's ``Host`` names this node: an IP address, ``localhost`` or NODE_URL's host."""
    name = _hostname(host)
    if name == "localhost" or (node_url and name == (urlsplit(node_url).hostname or "").lower()):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def foreign_origin(request: Request) -> str | None:
    """Why ``request`` comes from another origin, or None if it does not (or no browser)."""
    environ = request.environ  # not request.headers: a header it lacks costs an exception there
    site = environ.get("HTTP_SEC_FETCH_SITE", "")
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()):
        return f"Origin: {origin}"
    if (origin is not None or site) and not trusted_host(request.host, get_context().config.node_url):
        return f"Host: {request.host} is neither an IP address nor this node's name"
    return None


def refuse_foreign_writes(request: Request) -> None:
    """403 ``cross_origin`` for a browser's write from another site (``request``: the request itself,
    not the ``flask.request`` proxy, whose every attribute costs a lookup)."""
    if request.method in SAFE_METHODS:
        return
    why = foreign_origin(request)
    if why is not None:
        raise ApiError(403, "cross_origin", f"a browser sent this {request.method} from another site ({why}); "
                       "only the node's own pages may change state from a browser")

