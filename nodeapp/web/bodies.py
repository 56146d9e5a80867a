"""Reading request bodies: size limits, cut-off uploads, broken chunking, deep JSON.

A body is read to its end or refused. A request answered without its body read to the end
(refused early, or read but broken) closes its connection after the answer, announced with
``Connection: close``: what is left of the body on the wire would otherwise be taken for the
next request. gunicorn decides about the connection, so its ``pre_request`` hook
(``nodeapp.gunicorn_conf``) hands each request a way to ask for that (``CLOSE_HOOK``).
"""

from __future__ import annotations

from typing import Any

from flask import Request, current_app, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import get_content_length

from nodeapp.web.errors import ApiError

#: Bodies are read in pieces of this size, so an oversized one is refused after MAX_BODY_BYTES + 1.
READ_CHUNK = 64 * 1024
#: The largest JSON body an internal endpoint accepts (results and claims are small).
MAX_JSON_BYTES = 4 * 1024 * 1024
#: The attribute of ``wsgi.input`` that ``gunicorn_conf.pre_request`` sets to the request's
#: ``force_close``: called, gunicorn answers with ``Connection: close`` and closes the connection.
CLOSE_HOOK = "tm_close_connection"
#: The environ key set once the body is read to its end (the environ lives as long as the
#: request, and is reached without the ``g`` proxy).
BODY_READ = "nodeapp.body_read"


def read_body(limit: int, setting: str = "MAX_BODY_BYTES", request: Request = request) -> bytes:
    """The whole body of ``request`` (by default the current one: a view that holds the request
    itself passes it, as each attribute read through the ``flask.request`` proxy is a lookup), or
    an ApiError.

    A declared Content-Length over ``limit`` is refused before anything is read (413); a chunked
    body is read piece by piece and refused once it crosses the limit (413). A body that ends
    before its declared length (400 ``incomplete_body``) or whose chunked framing is broken
    (400 ``bad_chunked_body``) is refused too: nothing of it is used.
    """
    environ = request.environ
    declared = get_content_length(environ)  # request.content_length's own reading, without building request.headers
    if declared is not None and declared > limit:
        raise ApiError(413, "body_too_large", f"body is {declared} bytes; the limit is {limit} ({setting})")
    if declared is not None:
        # gunicorn's own body reader stops at Content-Length: read from it directly, without
        # werkzeug's LimitedStream around it (a fifth of an enqueue's time in the node's code).
        gunicorn = environ.get("gunicorn.socket") is not None
        data = _read_declared(environ["wsgi.input"] if gunicorn else request.stream, declared)
        environ[BODY_READ] = True
        return data
    stream = request.stream  # chunked: read to its end, refused once past the limit
    parts, size = [], 0
    try:
        while True:
            part = stream.read(min(READ_CHUNK, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
            if size > limit:
                raise ApiError(413, "body_too_large", f"body exceeds the limit of {limit} bytes ({setting})")
    except OSError:  # the connection ended inside a chunk (gunicorn's NoMoreData is an IOError)
        raise ApiError(400, "incomplete_body", "the connection ended before the chunked body did") from None
    except ParseException as exc:
        raise ApiError(400, "bad_chunked_body", f"malformed chunked request body ({exc.__class__.__name__})") from None
    environ[BODY_READ] = True
    return b"".join(parts)


def _read_declared(stream, declared: int) -> bytes:
    """Exactly ``declared`` bytes of ``stream``, never more; a 400 when the body ends first."""
    parts, size = [], 0
    try:
        while size < declared:
            part = stream.read(min(READ_CHUNK, declared - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
    except (OSError, ClientDisconnected):  # the connection ended (gunicorn's NoMoreData is an IOError;
        pass  # werkzeug's own stream, not gunicorn's, raises ClientDisconnected)
    if size != declared:
        raise ApiError(400, "incomplete_body",
                       f"Content-Length is {declared} but the body ended after {size} bytes; nothing was done")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def json_body() -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``."""
    body = read_body(MAX_JSON_BYTES)
    if not body:
        return {}
    try:
        data = current_app.json.loads(body)
    except ValueError:
        raise ApiError(400, "bad_json", "request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return data


def _has_body(environ) -> bool:
    # not request.headers: a header it lacks costs an exception there
    return environ.get("CONTENT_LENGTH", "") not in ("", "0") or "chunked" in environ.get(
        "HTTP_TRANSFER_ENCODING", "").lower()


def close_if_body_left(environ) -> None:
    """After the answer: ask gunicorn to close the connection if the body was not read to its end."""
    if BODY_READ not in environ and _has_body(environ):
        close = getattr(environ.get("wsgi.input"), CLOSE_HOOK, None)
        if close is not None:
            close()
