"""Who calls a public task endpoint: a client key, the operator, the peer node, or anyone.

With API_KEYS=off (local mode's default) nobody is refused: a valid ``X-Api-Key`` still names the
owner of the tasks it queues. With API_KEYS=required each task endpoint takes one of

* a live client key (``X-Api-Key``): enqueue, read any task, cancel and retry its own tasks;
* the operator token (``X-Cluster-Token``): everything, any task;
* the peer node's token with ``X-Peer-Request``: the peer asking or passing a call on (a call
  passed on carries the client's key, which is then checked here too).

Anything else is a 401 ``api_key_required`` (or ``api_key_revoked``), a key acting on another
key's task a 403 ``not_owner``; nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps

from flask import g, request

from nodeapp.store.apikeys import HEADER, key_id_of
from nodeapp.web.auth import HEADER as TOKEN_HEADER, OPERATOR, PEER, holds
from nodeapp.context import get_context
from nodeapp.web.errors import ApiError
from nodeapp.fleet.peer import PEER_HEADER

OPERATOR_OWNER = "operator"


def _environ_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


_KEY_ENVIRON, _TOKEN_ENVIRON, _PEER_ENVIRON = map(_environ_name, (HEADER, TOKEN_HEADER, PEER_HEADER))


@dataclass(frozen=True)
class Caller:
    key_id: str | None = None  # a live client key
    operator: bool = False
    peer: bool = False

    @property
    def owner(self) -> str | None:
        """What a task queued by this caller records as its owner."""
        return self.key_id or (OPERATOR_OWNER if self.operator else None)

    def may_act_on(self, owner: str | None, required: bool) -> bool:
        """Whether this caller may cancel or retry a task ``owner`` queued."""
        if not required or self.operator or (self.peer and self.key_id is None):
            return True
        return self.key_id is not None and self.key_id == owner


#: A caller with no key and no token (a frozen value: one serves every such request).
ANYONE = Caller()


def identify() -> Caller:
    """The caller of this request; with API_KEYS=required, a 401 for nobody."""
    ctx = get_context()
    config = ctx.config
    required = config.api_keys == "required"
    # The environ, not request.headers (a header it lacks costs an exception there), read from
    # the request itself, not through the proxy (whose every attribute read is a lookup).
    environ = request._get_current_object().environ
    key = environ.get(_KEY_ENVIRON)
    token = environ.get(_TOKEN_ENVIRON, "")
    operator = bool(token) and holds(config, OPERATOR, token)
    peer = bool(token) and _PEER_ENVIRON in environ and holds(config, PEER, token)
    if key:
        entry = ctx.keys.verify(key)
        if entry is None and ctx.keys_refresh():  # perhaps made on the peer a moment ago
            entry = ctx.keys.verify(key)
        if entry is not None:
            return Caller(entry.id, operator, peer)
        if required and not operator:
            known = {k.id: k for k in ctx.keys.listing()}.get(key_id_of(key))
            if known is not None and known.revoked_at is not None:
                raise ApiError(401, "api_key_revoked", f"the key {known.id} was revoked by the operator; ask for "
                                                       "a new one (tm keys create)")
            raise ApiError(401, "api_key_required", f"the {HEADER} given is not a key of this cluster")
    if required and not (operator or peer):
        raise ApiError(401, "api_key_required", f"this cluster takes a client key: send it in {HEADER} (tm and "
                                                "tmclient read TM_API_KEY); the operator makes one with "
                                                "`tm keys create`")
    return Caller(None, operator, peer) if operator or peer else ANYONE


def client_access(view):
    """Decorator of a public task endpoint: ``g.caller`` is who calls (see ``identify``)."""

    @wraps(view)
    def checked(*args, **kwargs):
        g._get_current_object().caller = identify()  # set on g itself: through the proxy it is a lookup more
        return view(*args, **kwargs)

    return checked


def caller() -> Caller:
    return getattr(g._get_current_object(), "caller", None) or ANYONE


def check_owner(owner: str | None, task_id: str, verb: str) -> None:
    """403 ``not_owner`` unless the caller may ``verb`` the task ``owner`` queued."""
    ctx = get_context()
    if not caller().may_act_on(owner, ctx.config.api_keys == "required"):
        raise ApiError(403, "not_owner", f"task {task_id} was queued with another key: only that key or the "
                                         f"operator may {verb} it")


def forwarded_headers() -> dict:
    """Headers a call passed on to the peer carries, so that the peer checks the same caller."""
    key = request.environ.get(_KEY_ENVIRON)
    return {HEADER: key} if key else {}


def check_intake(ctx=None) -> None:
    """503 ``paused`` while the operator has paused intake on this node (``POST /pause``)."""
    if (ctx or get_context()).intake.paused:
        raise ApiError(503, "paused", "intake is paused by the operator (tm pause): nothing was queued; retry "
                                      "later, or ask the operator to run `tm resume`", headers={"Retry-After": "5"})
