"""Worker slots lent between the two nodes, and how loans end when a node dies or is cut off.

Each loan has an id. The lender keeps it ``ttl`` seconds (LOAN_TTL_SECONDS) after the borrower
last renewed it, then takes the slot back. The borrower renews all its loans on each scaler run
(``POST /renew_quota``) and keeps using a loan only until ``KEEP`` × ``ttl`` after it *sent* the
last renewal that the lender answered: that moment is always before the lender's deadline, which
counts from when the renewal *arrived*. So a slot is never in use on both nodes, whatever the
network does; a dead or restarted borrower's loans come back to the lender within ``ttl``.

A node that starts with a peer does not know what an earlier run of it had lent. Until it has
heard from the peer (a renewal either way) or ``KEEP`` × ``ttl`` has passed (by then the peer has
let go of any loan it could not renew with us), it is *recovering*: it neither lends nor
launches, and it adopts the loans the peer says it still holds from it.

``LoanBook`` only keeps the figures; the ``WorkerPool`` holds its lock around every call and
decides what a lost loan does to its workers.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: The share of the lender's ttl for which a borrower keeps a loan after a renewal it sent.
KEEP = 2 / 3
#: Loan ids a renewal may name at once.
MAX_LOANS = 10_000
_LOAN_ID = re.compile(r"[0-9a-f]{1,64}")


def is_loan_id(value: Any) -> bool:
    return isinstance(value, str) and _LOAN_ID.fullmatch(value) is not None


def _ttl(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) and 0 < value <= 86400 else None


@dataclass(frozen=True)
class Grant:
    """A slot the peer lent: the loan's id and the lender's ttl."""

    loan: str
    ttl: float

    @classmethod
    def from_json(cls, data: Any) -> Grant | None:
        """The grant in a ``try_get_node_quota`` answer; None if refused or malformed."""
        if not (isinstance(data, dict) and data.get("granted") is True and is_loan_id(data.get("loan"))):
            return None
        ttl = _ttl(data.get("ttl"))
        return cls(data["loan"], ttl) if ttl else None


@dataclass(frozen=True)
class Renewal:
    """A ``renew_quota`` answer: of the loans named, those the lender still ``held`` (renewed
    for ``ttl``), and the loans the answering node has ``borrowed`` from the asking one."""

    held: list[str]
    ttl: float
    borrowed: list[str]

    @classmethod
    def from_json(cls, data: Any) -> Renewal | None:
        if not isinstance(data, dict):
            return None
        held, borrowed, ttl = data.get("held"), data.get("borrowed"), _ttl(data.get("ttl"))
        if not (ttl and isinstance(held, list) and isinstance(borrowed, list)
                and all(map(is_loan_id, held)) and all(map(is_loan_id, borrowed))):
            return None
        return cls(held, ttl, borrowed)

    def to_json(self) -> dict:
        return {"held": self.held, "ttl": self.ttl, "borrowed": self.borrowed}


class LoanBook:
    """Loans given (``lent``: id -> the lender's deadline), loans in use (``held``: id -> keep
    until) and loans to give back (``owed``: id -> keep until). Times are monotonic. Not
    thread-safe: its owner holds a lock."""

    def __init__(self, ttl: float, now: float, recovering: bool = False) -> None:
        self.ttl = ttl
        self.lent: dict[str, float] = {}
        self.held: dict[str, float] = {}
        self.owed: dict[str, float] = {}
        self._recovering_until = now + KEEP * ttl if recovering else None

    # ------------------------------------------------------------- lender
    def recovering(self, now: float) -> bool:
        if self._recovering_until is not None and now >= self._recovering_until:
            log.info("quota: nothing heard from the peer for %gs since start; lending and launching", KEEP * self.ttl)
            self._recovering_until = None
        return self._recovering_until is not None

    def lend(self, now: float) -> Grant:
        loan = uuid.uuid4().hex
        self.lent[loan] = now + self.ttl
        return Grant(loan, self.ttl)

    def peer_holds(self, loans: Iterable[str], now: float, room: int) -> list[str]:
        """The peer says it holds ``loans`` from us: renew those we know. While recovering, adopt
        up to ``room`` unknown ones (an earlier run of this node lent them). Returns those held."""
        adopt = self._recovering_until is not None
        if adopt:
            self._recovering_until = None
        held = []
        for loan in loans:
            if loan in self.lent or (adopt and room > 0):
                if loan not in self.lent:
                    room -= 1
                    log.info("quota: loan %s adopted (lent before this node restarted)", loan)
                self.lent[loan] = now + self.ttl
                held.append(loan)
        return held

    def returned(self, loan: str | None) -> bool:
        """A loan comes back; without an id (SPEC's bare ``return_quota``) the one nearest its end."""
        if loan is None and self.lent:
            loan = min(self.lent, key=self.lent.__getitem__)
        return self.lent.pop(loan, None) is not None

    # ----------------------------------------------------------- borrower
    def take(self, grant: Grant, asked_at: float) -> None:
        self.held[grant.loan] = asked_at + KEEP * grant.ttl

    def owe(self) -> None:
        """A borrowed slot is free: the loan nearest its end is to be given back."""
        if self.held:
            loan = min(self.held, key=self.held.__getitem__)
            self.owed[loan] = self.held.pop(loan)

    def renewed(self, asked: Iterable[str], renewal: Renewal, sent_at: float) -> list[str]:
        """Apply the lender's answer to a renewal of ``asked`` sent at ``sent_at``; returns the
        loans it no longer holds, now dropped here too."""
        held, lost = set(renewal.held), []
        for loan in asked:
            if loan not in self.held:
                continue  # given back or lapsed meanwhile
            if loan in held:
                self.held[loan] = max(self.held[loan], sent_at + KEEP * renewal.ttl)
            else:
                del self.held[loan]
                lost.append(loan)
        return lost

    # ---------------------------------------------------------------- both
    def expire(self, now: float) -> list[str]:
        """Drop lent loans past their deadline and owed ones past their end; returns the held
        loans that lapsed (not renewed in time), now dropped."""
        for loan in [k for k, deadline in self.lent.items() if deadline <= now]:
            del self.lent[loan]
            log.warning("quota: loan %s to the peer expired (not renewed for %gs); the slot is ours again",
                        loan, self.ttl)
        for loan in [k for k, until in self.owed.items() if until <= now]:
            del self.owed[loan]  # the lender has dropped it too by now: nothing to give back
        lapsed = [k for k, until in self.held.items() if until <= now]
        for loan in lapsed:
            del self.held[loan]
        return lapsed
