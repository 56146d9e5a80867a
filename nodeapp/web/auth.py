"""Who may call which internal endpoint: three powers, each with its token (docs/api.md).

* worker: ``/claim``, ``/complete``, ``/heartbeat``, ``/worker_down`` - CLUSTER_TOKEN (the peer's
  token works too);
* peer: borrowing and returning worker slots - PEER_TOKEN;
* operator: ``POST /configure`` - OPERATOR_TOKEN;
* actions: ``POST /cancel``, ``POST /retry`` - ACTIONS_TOKEN, OPERATOR_TOKEN or PEER_TOKEN (which
  forwards a client's call), only when ACTIONS_TOKEN is set (``requires_if_set``); else public.

A token that is not set falls back to the one below it (OPERATOR_TOKEN to PEER_TOKEN to
CLUSTER_TOKEN), so with CLUSTER_TOKEN alone (local mode) it opens every internal endpoint. AWS
mode sets three different tokens and gives workers only the first. The header is always
``X-Cluster-Token``; the comparison is constant-time. A missing or unknown token is a 401; a
token of a lower power is a 403 and changes nothing.
"""

from __future__ import annotations

import hmac
from functools import wraps
from typing import Any

from flask import request

from nodeapp.context import get_context
from nodeapp.web.errors import ApiError

WORKER, PEER, OPERATOR, ACTIONS = "worker", "peer", "operator", "actions"
HEADER = "X-Cluster-Token"
_NEEDS = {
    PEER: "the peer node's token (PEER_TOKEN)",
    OPERATOR: "the operator token (OPERATOR_TOKEN)",
    ACTIONS: "the actions token (ACTIONS_TOKEN) or the operator's",
}


def peer_token(config: Any) -> str:
    """The token this node and its peer use between them."""
    return config.peer_token or config.cluster_token


def operator_token(config: Any) -> str:
    return config.operator_token or peer_token(config)


def accepted(config: Any, power: str) -> tuple[str, ...]:
    """The (set) tokens that carry ``power``."""
    if power == WORKER:
        tokens = (config.cluster_token, peer_token(config))
    elif power == PEER:
        tokens = (peer_token(config),)
    elif power == OPERATOR:
        tokens = (operator_token(config),)
    elif power == ACTIONS:
        tokens = (config.actions_token, operator_token(config), peer_token(config))
    else:
        raise ValueError(f"no power {power!r}")
    return tuple(token for token in dict.fromkeys(tokens) if token)


def holds(config: Any, power: str, given: str) -> bool:
    """True if ``given`` carries ``power`` (every candidate compared, in constant time)."""
    found = False
    for token in accepted(config, power):
        found |= hmac.compare_digest(given.encode(), token.encode())
    return found


def check(config: Any, power: str) -> None:
    """Raise 401 (no or an unknown token) or 403 (a token of another power) unless the request's
    X-Cluster-Token carries ``power``."""
    given = request.headers.get(HEADER, "")
    if not holds(config, power, given):
        if any(holds(config, lower, given) for lower in (WORKER, PEER) if lower != power):
            raise ApiError(403, "forbidden", f"this endpoint takes {_NEEDS[power]}; the token given "
                                             "does not carry that power")
        wanted = f" ({_NEEDS[power]})" if power == ACTIONS else ""
        raise ApiError(401, "unauthorized", f"missing or wrong {HEADER}{wanted}")


def requires(power: str):
    """Decorator of a Flask view: the request's X-Cluster-Token must carry ``power``."""

    def decorate(view):
        @wraps(view)
        def checked(*args, **kwargs):
            check(get_context().config, power)
            return view(*args, **kwargs)

        return checked

    return decorate


def requires_if_set(view):
    """Decorator of cancel and retry: they need the ACTIONS power only when ACTIONS_TOKEN is set."""

    @wraps(view)
    def checked(*args, **kwargs):
        config = get_context().config
        if config.actions_token:
            check(config, ACTIONS)
        return view(*args, **kwargs)

    return checked
