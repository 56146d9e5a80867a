"""Both nodes refuse a worker either of them caught with a wrong result (docs/verification.md).

A catch is sent to the peer at once (a thread of its own: the checker's thread does not wait on
the network), and the two lists are exchanged every ``SYNC_SECONDS``, so that a node that was
down, or restarted (quarantines are not journaled), learns them back from the other. The peer's
entries are quarantined here as if caught here: the worker may claim nothing more, its leases are
requeued and its unchecked results taken back (``Node.quarantine_from_peer``).
"""

from __future__ import annotations

import logging
import threading

from nodeapp.store.verification import Caught

log = logging.getLogger(__name__)

#: Seconds between two exchanges of the lists (a scheduler job).
SYNC_SECONDS = 5.0
#: The newest entries sent in an exchange, and the most a node takes in one.
EXCHANGED = 256


class QuarantineSync:
    def __init__(self, node, peer) -> None:
        self.node, self.peer = node, peer
        self._lock = threading.Lock()  # one exchange at a time

    def listed(self) -> list[dict]:
        """This node's newest entries, as sent."""
        return [caught.to_json() for caught in self.node.quarantine.newest(EXCHANGED)]

    def merge(self, entries: list[Caught]) -> int:
        """Quarantine here the peer's entries not known yet; returns how many."""
        peer = self.peer.url or "the peer"
        return sum(self.node.quarantine_from_peer(caught, peer) is not None
                   for caught in reversed(entries))  # oldest first, as they were caught

    def exchange(self) -> int | None:
        """Send this node's list and take in the peer's; how many were new here, None when the
        peer could not be asked."""
        if not self.peer.url:
            return None
        with self._lock:
            answer = self.peer.sync_quarantine(self.listed())
            if answer is None:
                return None
            return self.merge([c for c in map(Caught.from_json, answer[:EXCHANGED]) if c is not None])

    def caught(self, caught: Caught) -> None:
        """This node caught a worker: tell the peer now, without waiting for it."""
        if self.peer.url:
            threading.Thread(target=self._tell, name="quarantine-sync", daemon=True).start()

    def _tell(self) -> None:
        if self.exchange() is None:
            log.warning("quarantine: the peer could not be told now; it is told at the next exchange (%gs)",
                        SYNC_SECONDS)
