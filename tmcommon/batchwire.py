"""The batch wire format of ``PUT /enqueue_batch`` (``application/x-tm-batch``), both ways.

Binary bodies travel as they are (no base64, no escaping). All integers are big-endian::

    batch = "TMB1" (4 bytes), count (uint32), then `count` tasks
    task  = iterations (uint64), key length (uint16, 0 = no key), key (ASCII),
            body length (uint32), body

So a task costs 14 bytes of framing plus its key. The node checks the values (iterations in
range, body size, key form) and names the first bad task by its 0-based index. Shared by the
node (``decode``) and the client (``encode``); imports nothing of the project.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

CONTENT_TYPE = "application/x-tm-batch"
MAGIC = b"TMB1"
_HEADER = struct.Struct(">4sI")
_ITERATIONS_KEY = struct.Struct(">QH")
_BODY_LENGTH = struct.Struct(">I")
#: Framing bytes per task, besides its key and body.
TASK_OVERHEAD = _ITERATIONS_KEY.size + _BODY_LENGTH.size
#: An idempotency key: 1 to 255 visible ASCII characters (``Idempotency-Key`` header, batch keys).
KEY_PATTERN = re.compile(r"[!-~]{1,255}")


class BatchTask(NamedTuple):
    body: bytes
    iterations: int
    key: str | None = None


class BatchFormatError(ValueError):
    """The bytes are not a well-formed batch; ``index`` is the task where it went wrong (or None)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"task {index}: {message}")
        self.index = index


def encode(tasks: Iterable[BatchTask | tuple]) -> bytes:
    """The batch of ``(body, iterations, key?)`` tasks, in order."""
    parts = [b""]
    count = 0
    for task in tasks:
        body, iterations, key = BatchTask(*task)
        raw_key = b"" if key is None else key.encode("ascii")
        parts += [_ITERATIONS_KEY.pack(iterations, len(raw_key)), raw_key, _BODY_LENGTH.pack(len(body)), body]
        count += 1
    parts[0] = _HEADER.pack(MAGIC, count)
    return b"".join(parts)


def encoded_size(body_length: int, key: str | None) -> int:
    """Bytes a task takes in a batch (to split a long list into batches under a size limit)."""
    return TASK_OVERHEAD + len(key or "") + body_length


def declared_count(data: bytes) -> int:
    """The task count of the header, or ``BatchFormatError``."""
    if len(data) < _HEADER.size:
        raise BatchFormatError(f"the batch is {len(data)} bytes, shorter than its 8-byte header")
    magic, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BatchFormatError(f"the batch must start with {MAGIC.decode()} ({CONTENT_TYPE}), got {magic!r}")
    return count


def decode(data: bytes) -> Iterator[BatchTask]:
    """The tasks of ``data`` in order; ``BatchFormatError`` at the first malformed one.

    A key that is not 1-255 visible ASCII characters is a format error; iterations and body
    sizes are the caller's to check.
    """
    count = declared_count(data)
    view = memoryview(data)
    at = _HEADER.size
    for index in range(count):
        if at + _ITERATIONS_KEY.size > len(data):
            raise BatchFormatError(f"the batch ends inside the task's header ({count} tasks declared)", index)
        iterations, key_length = _ITERATIONS_KEY.unpack_from(data, at)
        at += _ITERATIONS_KEY.size
        key = None
        if key_length:
            raw_key = bytes(view[at:at + key_length])
            at += key_length
            key = raw_key.decode("latin-1")
            if len(raw_key) < key_length or not KEY_PATTERN.fullmatch(key):
                raise BatchFormatError("the idempotency key must be 1 to 255 visible ASCII characters", index)
        if at + _BODY_LENGTH.size > len(data):
            raise BatchFormatError("the batch ends before the task's body length", index)
        (length,) = _BODY_LENGTH.unpack_from(data, at)
        at += _BODY_LENGTH.size
        if at + length > len(data):
            raise BatchFormatError(f"the body is declared as {length} bytes but the batch ends after "
                                   f"{len(data) - at}", index)
        yield BatchTask(bytes(view[at:at + length]), iterations, key)
        at += length
    if at != len(data):
        raise BatchFormatError(f"{len(data) - at} bytes follow the last of the {count} declared tasks")
