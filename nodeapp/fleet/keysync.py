"""Both nodes hold the same client keys: each change is sent to the peer at once, the two lists
are exchanged every KEY_SYNC_SECONDS (so a node that was down or restarted catches up), and a
key this node does not know makes it ask the peer first (at most once a REFRESH_SECONDS)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from nodeapp.store.apikeys import ApiKey, KeyRing

#: Seconds between two exchanges of the key lists (a scheduler job).
KEY_SYNC_SECONDS = 5.0
#: Shortest time between two look-ups at the peer caused by unknown keys.
REFRESH_SECONDS = 1.0


class KeySync:
    def __init__(self, ring: KeyRing, peer, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ring, self.peer = ring, peer
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last_refresh = -REFRESH_SECONDS

    def exchange(self) -> int | None:
        """Send this node's list to the peer and take in its list; returns how many entries
        changed here, None when the peer could not be asked."""
        if not self.peer.url:
            return None
        answer = self.peer.sync_keys(self.ring.to_json())
        if answer is None:
            return None
        return self.ring.merge(e for e in map(ApiKey.from_json, answer) if e is not None)

    def refresh(self) -> bool:
        """An unknown key arrived: ask the peer (rate-limited). True if something new came."""
        with self._lock:
            now = self._monotonic()
            if now - self._last_refresh < REFRESH_SECONDS:
                return False
            self._last_refresh = now
        return bool(self.exchange())
