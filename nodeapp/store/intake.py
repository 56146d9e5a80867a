"""The journal's intake files: an accepted task made durable by one ``write()`` of its own.

With ``JOURNAL_SYNC=off`` an enqueue is answered once its tasks are appended to the current
``DATA_DIR/intake-<n>.log`` by the request's own thread: one system call into the OS's cache,
which a ``kill -9`` of the node does not undo. No other thread is woken and none is waited for.
The journal's writer brings SQLite up to date from memory a few milliseconds later, in batches,
in the order the changes happened. So SQLite holds every accepted task of a seq up to its
highest, and the intake files matter only for the tasks beyond it: at start (``Journal.load``)
and after a failed commit (``Journal.reload``) those are read back from here.

A file is one frame per write: ``MAGIC``, the payload's length and CRC-32, then the payload,
the tasks of one request (all of a batch or none: a torn frame fails its CRC and is skipped
whole; the reader then looks for the next ``MAGIC``). The writer rotates the current file when it
passes ``rotate_bytes`` and deletes a file once SQLite holds every task that can be in it and no
request is still writing to it, so the files stay small.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
import logging
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "intake-"
SUFFIX = ".log"
MAGIC = b"TMi1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
_COUNT = struct.Struct("<I")
#: seq, iterations, enqueued_at, priority, not_before, deadline (NaN: none), id, owner, body lengths
_TASK = struct.Struct("<qqdqddHHI")
_NONE = math.nan
#: The current file is rotated once it is this large.
ROTATE_BYTES = 4 * 1024 * 1024


def encode(records) -> bytes:
    """One frame holding ``records`` (``journal.Accepted``)."""
    parts = [_COUNT.pack(len(records))]
    for r in records:
        task_id, owner = r.id.encode(), (r.owner or "").encode()
        parts.append(_TASK.pack(r.seq, r.iterations, r.enqueued_at, r.priority,
                                _NONE if r.not_before is None else r.not_before,
                                _NONE if r.deadline is None else r.deadline,
                                len(task_id), len(owner), len(r.body)))
        parts += (task_id, owner, r.body)
    payload = b"".join(parts)
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode(data: bytes, make) -> tuple[list, int]:
    """Every record of the whole frames in ``data``, made by ``make(seq, id, iterations, body,
    enqueued_at, priority, not_before, deadline, owner)``; and the count of bytes skipped (torn or
    damaged frames)."""
    records, skipped, pos, end = [], 0, 0, len(data)
    while pos < end:
        start = data.find(MAGIC, pos)
        if start < 0:
            skipped += end - pos
            break
        skipped += start - pos
        pos = start
        if pos + _FRAME.size > end:
            skipped += end - pos
            break
        _, length, crc = _FRAME.unpack_from(data, pos)
        payload = data[pos + _FRAME.size:pos + _FRAME.size + length]
        frame = _frame_records(payload, make) if len(payload) == length and zlib.crc32(payload) == crc else None
        if frame is None:  # torn or damaged: look for the next frame after this magic
            skipped += len(MAGIC)
            pos += len(MAGIC)
            continue
        records += frame
        pos += _FRAME.size + length
    return records, skipped


def _frame_records(payload: bytes, make) -> list | None:
    try:
        (count,), pos, out = _COUNT.unpack_from(payload, 0), _COUNT.size, []
        for _ in range(count):
            seq, iterations, enqueued_at, priority, not_before, deadline, id_len, owner_len, body_len = \
                _TASK.unpack_from(payload, pos)
            pos += _TASK.size
            task_id = payload[pos:pos + id_len].decode()
            owner = payload[pos + id_len:pos + id_len + owner_len].decode() or None
            body = payload[pos + id_len + owner_len:pos + id_len + owner_len + body_len]
            pos += id_len + owner_len + body_len
            if len(body) != body_len:
                return None
            out.append(make(seq, task_id, iterations, body, enqueued_at, priority,
                            None if math.isnan(not_before) else not_before, None if math.isnan(deadline) else deadline,
                            owner))
        return out if pos == len(payload) else None
    except (struct.error, UnicodeDecodeError):
        return None


class IntakeFile:
    """One intake file, open for appending; ``users``: requests between ``pick`` and ``release``."""

    __slots__ = ("path", "fd", "users", "sealed_at")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.users = 0
        self.sealed_at: int | None = None  # rotated out: the highest seq queued when it was


class Intake:
    """The intake files of one journal (see the module docstring).

    ``pick`` is called under the journal's lock, in the same step that queues the records for
    the writer; ``append`` and ``release`` without it. Files are closed only when no request
    holds them (a closed descriptor's number could be reused by another file meanwhile).
    """

    def __init__(self, data_dir: Path, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.data_dir = data_dir
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Condition(threading.Lock())  # users, and ``drain``'s wait for them
        self._current: IntakeFile | None = None
        self._sealed: list[IntakeFile] = []
        self._next = 0
        self.appends = 0
        self.failed_appends = 0

    def paths(self) -> list[Path]:
        return sorted(self.data_dir.glob(f"{PREFIX}*{SUFFIX}"), key=_number)

    def read(self, make) -> tuple[list, list[str]]:
        """Every record in the files now (for ``load`` and ``reload``: no request is appending);
        and notes on what was skipped."""
        records, notes = [], []
        for path in self.paths():
            try:
                found, skipped = decode(path.read_bytes(), make)
            except OSError as exc:
                notes.append(f"intake file {path.name} could not be read: {exc}")
                continue
            records += found
            if skipped:
                notes.append(f"intake file {path.name}: {skipped} byte(s) of torn or damaged writes skipped")
        return records, notes

    def open(self, holds_up_to: int, appending: bool = True) -> None:
        """Seal the files already there at ``holds_up_to`` (the highest seq of what they hold: they
        go once SQLite holds that much); with ``appending``, start a new current file."""
        files = self.paths()
        self._next = max((_number(p) for p in files), default=-1) + 1
        for path in files:
            sealed = IntakeFile(path)
            sealed.sealed_at = holds_up_to
            self._sealed.append(sealed)
        if appending:
            self._current = self._new()

    def _new(self) -> IntakeFile:
        made = IntakeFile(self.data_dir / f"{PREFIX}{self._next}{SUFFIX}")
        self._next += 1
        return made

    def pick(self) -> IntakeFile:
        """(the journal's lock held) The file a request appends to; ``release`` it after."""
        current = self._current
        with self._lock:
            current.users += 1
        return current

    def append(self, file: IntakeFile, frame: bytes) -> bool:
        """Write ``frame`` in one system call; False if it is not all written (the caller waits
        for SQLite instead)."""
        try:
            ok = os.write(file.fd, frame) == len(frame)
        except OSError:
            ok = False
        if ok:
            self.appends += 1
        else:
            self.failed_appends += 1
        return ok

    def release(self, file: IntakeFile) -> None:
        with self._lock:
            file.users -= 1
            if not file.users:
                self._lock.notify_all()

    def rotate_if_large(self, swap_lock, queued_up_to) -> None:
        """If the current file is past ``rotate_bytes`` and none waits to be deleted, start a new
        one; the old one is sealed at ``queued_up_to()`` (the highest seq handed to requests that
        ``pick``), read under ``swap_lock`` (the lock ``pick`` is called under)."""
        if self._current is None or self._sealed:
            return
        try:
            if os.fstat(self._current.fd).st_size < self.rotate_bytes:
                return
            new = self._new()
        except OSError as exc:  # the current file goes on growing until a new one can be made
            log.warning("intake: could not start a new file: %s", exc)
            return
        with swap_lock:
            sealed, self._current = self._current, new
            sealed.sealed_at = queued_up_to()
        with self._lock:
            self._sealed.append(sealed)

    def drop_applied(self, applied_up_to: int) -> None:
        """Delete the sealed files whose every task SQLite holds (``applied_up_to``, its highest
        seq) and that no request still writes to."""
        with self._lock:
            done = [f for f in self._sealed if f.sealed_at <= applied_up_to and not f.users]
            self._sealed = [f for f in self._sealed if f not in done]
        for file in done:
            os.close(file.fd)
            with contextlib.suppress(OSError):
                file.path.unlink()

    def drain(self, timeout: float) -> bool:
        """Wait until no request is between ``pick`` and ``release``; False on timeout."""
        with self._lock:
            files = [f for f in (self._current, *self._sealed) if f is not None]
            return self._lock.wait_for(lambda: not any(f.users for f in files), timeout)

    def reset(self, holds_up_to: int, appending: bool = True) -> None:
        """After ``read``, for ``reload``: the files there now are sealed at ``holds_up_to`` and,
        with ``appending``, a new current one started (no request appends meanwhile)."""
        with self._lock:
            files, self._sealed, self._current = [self._current, *self._sealed], [], None
        for file in files:
            if file is not None:
                os.close(file.fd)
        self.open(holds_up_to, appending)

    def size_bytes(self) -> int:
        total = 0
        for path in self.paths():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def close(self, all_applied: bool) -> None:
        """Close the files; delete them if ``all_applied`` (SQLite holds every task) and no request holds one."""
        with self._lock:
            files = [f for f in (self._current, *self._sealed) if f is not None]
            if any(f.users for f in files):
                return
            self._current, self._sealed = None, []
        for file in files:
            os.close(file.fd)
            if all_applied:
                with contextlib.suppress(OSError):
                    file.path.unlink()


def _number(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX):-len(SUFFIX)])
    except ValueError:
        return -1

