"""Client keys for the public task endpoints (API_KEYS=required), shared by both nodes.

A key made by ``POST /keys`` reads ``tmk_<id>_<secret>``: the id (12 hex characters) names it in
listings, in ``revoke`` and as the owner of the tasks queued with it; only the SHA-256 of the
whole key is kept. API_KEY (AWS mode: the first key, from SSM) is accepted too, under the id
``env-<first 8 hex of its SHA-256>``. The two nodes exchange their lists (``merge``): a key is
the same everywhere, and a revocation wins over everything (a revoked key stays listed, so that
the revocation travels and survives). With DATA_DIR the list is kept in ``api_keys.json`` there
(replaced atomically), so it survives a restart; without, a restarted node learns it from its peer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = "X-Api-Key"
FILE_NAME = "api_keys.json"
#: Keys (revoked ones included) a cluster may hold: every key is checked against this bound.
MAX_KEYS = 10_000
NAME_MAX = 100
_ID = re.compile(r"(?:[0-9a-f]{12}|env-[0-9a-f]{8})")
_NAME = re.compile(rf"[ -~]{{0,{NAME_MAX}}}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
PREFIX = "tmk_"


class TooManyKeys(Exception):
    """The cluster holds MAX_KEYS keys already."""


@dataclass(frozen=True)
class ApiKey:
    """One key as nodes keep it: never the key itself, only its digest."""

    id: str
    name: str
    digest: str  # sha256 hex of the whole key
    created_at: float
    revoked_at: float | None = None

    def public(self) -> dict:
        """As ``GET /keys`` lists it."""
        return {"id": self.id, "name": self.name, "created_at": self.created_at, "revoked_at": self.revoked_at}

    @classmethod
    def from_json(cls, item: object) -> ApiKey | None:
        """A key from the peer or the file, or None if it is malformed."""
        if not isinstance(item, dict):
            return None
        key_id, name, digest = item.get("id"), item.get("name"), item.get("digest")
        created, revoked = item.get("created_at"), item.get("revoked_at")
        if not (isinstance(key_id, str) and _ID.fullmatch(key_id) and isinstance(name, str) and _NAME.fullmatch(name)
                and isinstance(digest, str) and _DIGEST.fullmatch(digest) and _is_time(created)
                and (revoked is None or _is_time(revoked))):
            return None
        return cls(key_id, name, digest, float(created), None if revoked is None else float(revoked))


def _is_time(value: object) -> bool:
    return type(value) in (int, float) and 0 <= value < 1e11


def is_key_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def is_name(text: str) -> bool:
    return _NAME.fullmatch(text) is not None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str:
    """The id a key goes by (whether or not it is known)."""
    if key.startswith(PREFIX) and len(key) > len(PREFIX) + 13 and key[len(PREFIX) + 12] == "_":
        candidate = key[len(PREFIX):len(PREFIX) + 12]
        if _ID.fullmatch(candidate):
            return candidate
    return "env-" + _digest(key)[:8]


class KeyRing:
    """The keys this node knows. Thread-safe.

    Args:
        initial: API_KEY, accepted from start (unless a revocation of it is known).
        path: where the list is kept (DATA_DIR/api_keys.json), or None (memory only).
        wall: the clock of ``created_at`` and ``revoked_at``.
    """

    def __init__(self, initial: str = "", path: str | os.PathLike | None = None,
                 wall: Callable[[], float] | None = None) -> None:
        self._lock = threading.Lock()
        self._wall = wall or time.time
        self._path = Path(path) if path else None
        self._keys: dict[str, ApiKey] = {}
        if self._path is not None and self._path.exists():
            self._load()
        if initial:
            entry = ApiKey(key_id_of(initial), "API_KEY", _digest(initial), 0.0)
            self._keys.setdefault(entry.id, entry)

    # ------------------------------------------------------------- checking
    def verify(self, key: str) -> ApiKey | None:
        """The live key ``key`` is, or None (unknown, revoked or malformed). Constant-time in the digest."""
        with self._lock:
            entry = self._keys.get(key_id_of(key))
        if entry is None or not hmac.compare_digest(entry.digest, _digest(key)):
            return None
        return entry if entry.revoked_at is None else None

    def listing(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: (k.created_at, k.id))

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    # -------------------------------------------------------------- changes
    def create(self, name: str = "") -> tuple[ApiKey, str]:
        """A new key: (its entry, the key itself, shown once)."""
        with self._lock:
            if len(self._keys) >= MAX_KEYS:
                raise TooManyKeys(f"the cluster holds {MAX_KEYS} keys (revoked ones count); no more can be made")
            key_id = secrets.token_hex(6)
            while key_id in self._keys:
                key_id = secrets.token_hex(6)
            key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
            entry = ApiKey(key_id, name, _digest(key), round(self._wall(), 3))
            self._keys[key_id] = entry
            self._save()
        return entry, key

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (again: no change); None if unknown."""
        with self._lock:
            entry = self._keys.get(key_id)
            if entry is None:
                return None
            if entry.revoked_at is None:
                entry = self._keys[key_id] = replace(entry, revoked_at=round(self._wall(), 3))
                self._save()
            return entry

    def merge(self, entries: Iterable[ApiKey]) -> int:
        """Take in the peer's keys: new ones are added (within MAX_KEYS), revocations win.
        Returns how many entries changed here."""
        changed = 0
        with self._lock:
            for entry in entries:
                mine = self._keys.get(entry.id)
                if mine is None:
                    if len(self._keys) >= MAX_KEYS:
                        log.warning("api keys: the peer's key %s is left out: %d keys held", entry.id, MAX_KEYS)
                        continue
                    self._keys[entry.id] = entry
                    changed += 1
                elif mine.digest == entry.digest and entry.revoked_at is not None and (
                        mine.revoked_at is None or entry.revoked_at < mine.revoked_at):
                    self._keys[entry.id] = replace(mine, revoked_at=entry.revoked_at)
                    changed += 1
            if changed:
                self._save()
        return changed

    def to_json(self) -> list[dict]:
        """Every entry with its digest (for the peer and the file; never for clients)."""
        with self._lock:
            return [asdict(k) for k in self._keys.values()]

    # ---------------------------------------------------------- persistence
    def _load(self) -> None:
        try:
            items = json.loads(self._path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("api keys: %s could not be read (%s); starting from the keys the peer has", self._path, exc)
            return
        for item in items if isinstance(items, list) else []:
            entry = ApiKey.from_json(item)
            if entry is not None and len(self._keys) < MAX_KEYS:
                self._keys[entry.id] = entry

    def _save(self) -> None:
        """Replace the file atomically (lock held): a crash leaves the old list or the new one."""
        if self._path is None:
            return
        temporary = self._path.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            json.dump([asdict(k) for k in self._keys.values()], handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._path)
        directory = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
