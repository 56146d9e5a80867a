"""Every error leaves the node as ``{"error": code, "message": text}``, never as HTML."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from nodeapp.store.journal import JournalError

log = logging.getLogger(__name__)

#: Error codes for the HTTP errors Flask and Werkzeug raise themselves.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error answer: status, machine-readable code, message for a person, extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    response = jsonify(error=code, message=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return error_response(err.status, err.code, err.message, err.headers)

    @app.errorhandler(JournalError)
    def _journal_error(err: JournalError):
        log.error("answering 503: %s", err)
        return error_response(503, "journal_unavailable", f"this node could not make the change durable ({err}); "
                              "retry, or send it to the other node", {"Retry-After": "1"})

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        headers = {}
        if err.code == 405 and err.valid_methods:
            headers["Allow"] = ", ".join(err.valid_methods)
        code = _HTTP_CODES.get(err.code or 500, "http_error")
        message = err.description or err.name
        if err.code == 404:
            message = f"no endpoint {request.method} {request.path}; see docs/api.md for the API"
        elif err.code == 405:
            message = f"{request.method} is not allowed on {request.path}; allowed: {headers.get('Allow', '')}"
        return error_response(err.code or 500, code, message, headers)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "the node hit an unexpected error; it has been logged")
