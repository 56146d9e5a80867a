"""A faulty engine for tests only: switched on by ``TM_TEST_FAULT``, never by a setting.

- ``flip:1/50``: in every run of 50 engine calls (a short task is one call, a long one a call
  per slice or segment), one call, chosen at random, flips one bit of its chain at a random
  iteration, so its digest and every later mark are wrong: a core that computes wrongly now and
  then.
- ``hostile``: every call returns random bytes: a worker image that posts wrong results.

``TM_TEST_FAULT_SEED`` seeds the choices (default: random). The wrapped engine reports its own
name, as a broken machine would.
"""

from __future__ import annotations

import os
import random
import re
import threading
from collections.abc import Callable, Mapping

ENV, SEED_ENV = "TM_TEST_FAULT", "TM_TEST_FAULT_SEED"
_FLIP = re.compile(r"flip:1/([0-9]{1,6})")
ComputeFn = Callable[[bytes, int], str]


class Fault:
    """Which calls go wrong: every one (``hostile``) or one in each run of ``every``."""

    def __init__(self, every: int | None, seed: int | None = None) -> None:
        self.every = every  # None: hostile
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._calls = 0
        self._chosen = 0
        self.flipped = 0

    def _next_is_faulty(self) -> bool:
        with self._lock:
            if self.every is None:
                return True
            if self._calls % self.every == 0:
                self._chosen = self._calls + self._rng.randrange(self.every)
            faulty = self._calls == self._chosen
            self._calls += 1
            self.flipped += faulty
            return faulty

    def _wrong(self, compute: ComputeFn, data: bytes, iterations: int) -> str:
        """A chain with one bit flipped at a random iteration (hostile: random bytes)."""
        with self._lock:
            if self.every is None:
                return self._rng.randbytes(64).hex()
            at, bit = self._rng.randint(1, iterations), self._rng.randrange(512)
        digest = bytearray(bytes.fromhex(compute(data, at)))
        digest[bit // 8] ^= 1 << (bit % 8)
        return digest.hex() if at == iterations else compute(bytes(digest), iterations - at)

    def wrap(self, compute: ComputeFn) -> ComputeFn:
        def faulty(data: bytes, iterations: int) -> str:
            return self._wrong(compute, data, iterations) if self._next_is_faulty() else compute(data, iterations)
        return faulty

    def wrap_many(self, compute_many):
        """The same for an engine's ``compute_many`` (each chain of a call counts as a call)."""
        if compute_many is None:
            return None

        def faulty(jobs: list[tuple[bytes, int]]) -> list[str]:
            wrong = [self._next_is_faulty() for _ in jobs]
            digests = compute_many(jobs)
            return [self._wrong(lambda d, n: compute_many([(d, n)])[0], data, n) if bad else digest
                    for (data, n), digest, bad in zip(jobs, digests, wrong)]
        return faulty


def test_fault(environ: Mapping[str, str] = os.environ) -> Fault | None:
    """The fault ``TM_TEST_FAULT`` asks for, or None (unset or empty).

    Raises:
        ValueError: the value is neither ``hostile`` nor ``flip:1/N``.
    """
    text = environ.get(ENV, "").strip()
    if not text:
        return None
    seed = environ.get(SEED_ENV)
    seed_value = int(seed) if seed and seed.strip().isdigit() else None
    if text == "hostile":
        return Fault(None, seed_value)
    match = _FLIP.fullmatch(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"{ENV}={text!r}: expected 'hostile' or 'flip:1/N' (N >= 1)")
    return Fault(int(match.group(1)), seed_value)
