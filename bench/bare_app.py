"""The enqueue ceiling: a bare Flask app whose ``PUT /enqueue`` only reads the body and returns an id.

Served by ``bench/bare_gunicorn_conf.py`` with the node's own gunicorn settings, so the gap
between the node and this app is what the node's own work per enqueue costs.
"""

from __future__ import annotations

import uuid

from flask import Flask, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.put("/enqueue")
    def enqueue():
        request.get_data()
        return {"id": uuid.uuid4().hex}, 201

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


app = create_app()
