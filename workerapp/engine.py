"""Which code computes a task's hash chain: the C extension or the hashlib loop.

``workerapp._native`` (built from ``workerapp/_sha512chain.c`` by ``pip install`` when a C
compiler is there) runs the iterations after the first in C, without the GIL. ``select_engine``
uses it when it imports and agrees with the hashlib loop on a check vector; otherwise, or when
``TM_HASH_ENGINE=python``, the worker uses the hashlib loop of ``workerapp.compute``. The choice
is logged once, when the worker starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from workerapp.compute import compute

log = logging.getLogger(__name__)

#: The environment variable that forces an engine: ``auto`` (default), ``native`` or ``python``.
ENV = "TM_HASH_ENGINE"
CHOICES = ("auto", "native", "python")
#: The self-check: native and Python must give the same digest for this before native is used.
CHECK_VECTOR = (b"scalable task manager", 1000)


class EngineUnavailable(RuntimeError):
    """``TM_HASH_ENGINE=native`` was asked for, but the extension is missing or wrong."""


def compute_native(data: bytes, iterations: int) -> str:
    """``compute`` with the iterations after the first done by ``workerapp._native``."""
    from workerapp._native import chain  # after the first call, a lookup in sys.modules

    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    return chain(hashlib.sha512(data).digest(), iterations - 1).hex()


def compute_many_native(jobs: list[tuple[bytes, int]]) -> list[str]:
    """``compute_native`` of each ``(data, iterations)``, the chains run together: four at a time
    in AVX2 vector lanes where the CPU has them (``workerapp._native.SIMD``)."""
    from workerapp._native import chains

    if any(iterations < 1 for _, iterations in jobs):
        raise ValueError("iterations must be >= 1")
    digests = chains([hashlib.sha512(data).digest() for data, _ in jobs], [n - 1 for _, n in jobs])
    return [digest.hex() for digest in digests]


@dataclass(frozen=True)
class Engine:
    """name: ``native`` or ``python``; compute: the task function (picklable, module-level);
    parallel: True if threads running ``compute`` use several cores (it releases the GIL);
    note: why this engine, for the log; compute_many: several tasks at once, when the engine
    does that faster than one after the other."""

    name: str
    compute: Callable[[bytes, int], str]
    parallel: bool
    note: str
    compute_many: Callable[[list[tuple[bytes, int]]], list[str]] | None = None


PYTHON = Engine("python", compute, False, "hashlib loop")


def _native_problem() -> str | None:
    """None if the extension imports and passes the self-check, else what is wrong."""
    try:
        import workerapp._native  # noqa: F401
    except ImportError as exc:
        return f"workerapp._native is not built ({exc})"
    data, iterations = CHECK_VECTOR
    expected = compute(data, iterations)
    if compute_native(data, iterations) != expected:
        return "workerapp._native failed its self-check (its digest differs from hashlib's)"
    if getattr(workerapp._native, "SIMD", "") and compute_many_native([(data, iterations)] * 3) != [expected] * 3:
        return "workerapp._native failed its self-check (several chains at once)"
    return None


def select_engine(environ: Mapping[str, str] = os.environ) -> Engine:
    """The engine ``TM_HASH_ENGINE`` asks for (``auto`` if unset), logged once.

    Raises:
        ValueError: TM_HASH_ENGINE is not one of auto, native, python.
        EngineUnavailable: native was forced but cannot be used.
    """
    wanted = environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        raise ValueError(f"{ENV}={wanted!r}: expected one of {', '.join(CHOICES)}")
    if wanted == "python":
        log.info("hash engine: python (%s, forced by %s=python)", PYTHON.note, ENV)
        return PYTHON
    problem = _native_problem()
    if problem is None:
        import workerapp._native

        simd = getattr(workerapp._native, "SIMD", "")
        engine = Engine("native", compute_native, True, "C extension workerapp._native"
                        + (f", {simd} for several chains at once" if simd else ""),
                        compute_many_native if simd else None)
        log.info("hash engine: native (%s)", engine.note)
        return engine
    if wanted == "native":
        raise EngineUnavailable(f"{ENV}=native, but {problem}")
    log.warning("hash engine: python (%s): %s", PYTHON.note, problem)
    return PYTHON
