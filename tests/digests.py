"""A task's expected result, written out with hashlib alone (independent of workerapp's code)."""

from __future__ import annotations

import hashlib


def sha512_chain(data: bytes, iterations: int) -> str:
    """``sha512(data)``, then ``sha512`` of the raw digest ``iterations - 1`` more times, as hex."""
    digest = hashlib.sha512(data).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha512(digest).digest()
    return digest.hex()
