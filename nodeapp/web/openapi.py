"""``GET /openapi.json``: the OpenAPI document of every endpoint, a static file of the package
(``nodeapp/web/openapi.json``). tests/test_openapi.py keeps it and the app's routes in step."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)
DOCUMENT = "openapi.json"


def document_bytes() -> bytes:
    return resources.files("nodeapp.web").joinpath(DOCUMENT).read_bytes()


@bp.get("/openapi.json")
def openapi():
    return Response(document_bytes(), mimetype="application/json")
