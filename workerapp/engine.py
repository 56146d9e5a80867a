"""Which code computes a task's hash chain: a kernel of the C extension, or the hashlib loop.

``workerapp._native`` (built from ``workerapp/_sha512chain.c`` by ``pip install`` when a C
compiler is there) runs the iterations after the first in C, without the GIL, with one of its
kernels (``_native.KERNELS``, those this CPU has, best first): ``avx512`` (eight chains at once
in 512-bit vector lanes), ``avx2`` (four chains in 256-bit lanes), ``sha512ce`` (one chain with
the SHA-512 instructions of arm64 CPUs that have them) or ``scalar`` (one chain, plain C).
``select_engine`` uses the best kernel when the extension imports and agrees with the hashlib
loop on a check vector; otherwise, or when ``TM_HASH_ENGINE=python``, the worker uses the
hashlib loop of ``workerapp.compute``. ``TM_HASH_ENGINE=avx2`` (say) forces a kernel. The choice
is logged once, when the worker starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from workerapp.compute import compute

log = logging.getLogger(__name__)

#: The environment variable that forces an engine: ``auto`` (default), ``native`` (the C
#: extension's best kernel), a kernel of it (``avx512``, ``avx2``, ``sha512ce``, ``scalar``) or ``python``.
ENV = "TM_HASH_ENGINE"
KERNELS = ("avx512", "avx2", "sha512ce", "scalar")
CHOICES = ("auto", "native", *KERNELS, "python")
#: The self-check: native and Python must give the same digest for this before native is used.
CHECK_VECTOR = (b"scalable task manager", 1000)

ComputeMany = Callable[[list[tuple[bytes, int]]], list[str]]


class EngineUnavailable(RuntimeError):
    """``TM_HASH_ENGINE`` forced the C extension or one of its kernels, which cannot be used here."""


def compute_native(data: bytes, iterations: int, kernel: str | None = None) -> str:
    """``compute`` with the iterations after the first done by ``workerapp._native`` (one chain:
    ``kernel``'s code for one, the best when None)."""
    from workerapp._native import chain  # after the first call, a lookup in sys.modules

    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    return chain(hashlib.sha512(data).digest(), iterations - 1, kernel).hex()


def compute_many_native(jobs: list[tuple[bytes, int]], kernel: str | None = None) -> list[str]:
    """``compute_native`` of each ``(data, iterations)``, the chains run together in the vector
    lanes of ``kernel`` (the best of ``workerapp._native.KERNELS`` when None)."""
    from workerapp._native import chains

    if any(iterations < 1 for _, iterations in jobs):
        raise ValueError("iterations must be >= 1")
    digests = chains([hashlib.sha512(data).digest() for data, _ in jobs], [n - 1 for _, n in jobs], kernel)
    return [digest.hex() for digest in digests]


@dataclass(frozen=True)
class Engine:
    """name: ``native`` or ``python``; compute: the task function (picklable, module-level);
    parallel: True if threads running ``compute`` use several cores (it releases the GIL);
    note: why this engine, for the log; compute_many: several chains at once, when the engine
    does that faster than one after the other; width: how many chains ``compute_many`` runs at
    once (its vector lanes); kernel: the C kernel, "" for the hashlib loop."""

    name: str
    compute: Callable[[bytes, int], str]
    parallel: bool
    note: str
    compute_many: ComputeMany | None = None
    width: int = 1
    kernel: str = ""


PYTHON = Engine("python", compute, False, "hashlib loop")


def native_engine(kernel: str, lanes: int) -> Engine:
    """The C extension with ``kernel``, which runs ``lanes`` chains at once."""
    many = partial(compute_many_native, kernel=kernel) if lanes > 1 else None
    note = "C extension workerapp._native, " + (
        f"{kernel} kernel: {lanes} chains at once in vector lanes" if lanes > 1 else f"{kernel} kernel: one chain")
    return Engine("native", partial(compute_native, kernel=kernel), True, note, many, lanes, kernel)


def _native_problem(kernel: str | None = None) -> str | None:
    """None if the extension imports, has ``kernel`` (any when None) and passes the self-check
    with it, else what is wrong."""
    try:
        import workerapp._native as native
    except ImportError as exc:
        return f"workerapp._native is not built ({exc})"
    if kernel is not None and kernel not in getattr(native, "KERNELS", ()):
        return f"this CPU (or this build of workerapp._native) has no {kernel} kernel"
    data, iterations = CHECK_VECTOR
    expected = compute(data, iterations)
    jobs = [(data + bytes([i]), iterations + i) for i in range(9)]  # fills 8 lanes, then the scalar tail
    try:
        if compute_native(data, iterations, kernel) != expected:
            return "workerapp._native failed its self-check (its digest differs from hashlib's)"
        if compute_many_native(jobs, kernel) != [compute(d, n) for d, n in jobs]:
            return "workerapp._native failed its self-check (several chains at once)"
    except Exception as exc:  # e.g. a build older than this code (another signature): not usable
        return f"workerapp._native failed its self-check ({type(exc).__name__}: {exc})"
    return None


def select_engine(environ: Mapping[str, str] = os.environ) -> Engine:
    """The engine ``TM_HASH_ENGINE`` asks for (``auto`` if unset), logged once.

    Raises:
        ValueError: TM_HASH_ENGINE is not one of ``CHOICES``.
        EngineUnavailable: the C extension or a kernel of it was forced but cannot be used.
    """
    wanted = environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        raise ValueError(f"{ENV}={wanted!r}: expected one of {', '.join(CHOICES)}")
    if wanted == "python":
        log.info("hash engine: python (%s, forced by %s=python)", PYTHON.note, ENV)
        return PYTHON
    kernel = wanted if wanted in KERNELS else None
    problem = _native_problem(kernel)
    if problem is None:
        import workerapp._native as native

        kernel = kernel or native.KERNELS[0]
        engine = native_engine(kernel, native.LANES[kernel])
        log.info("hash engine: native (%s%s)", engine.note, f", forced by {ENV}={wanted}" if wanted in KERNELS else "")
        return engine
    if wanted != "auto":
        raise EngineUnavailable(f"{ENV}={wanted}, but {problem}")
    log.warning("hash engine: python (%s): %s", PYTHON.note, problem)
    return PYTHON
