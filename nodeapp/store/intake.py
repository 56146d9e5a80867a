"""The journal's intake files: an accepted task, or another change, made durable by a copy into a
mapped file.

With ``JOURNAL_SYNC=off`` an enqueue is answered once its request's own thread has copied its
tasks into the current ``DATA_DIR/intake-<n>.log``, a file mapped into memory (``mmap``, shared):
the copy lands in the OS's page cache, which a ``kill -9`` of the node does not undo, as it does
not undo a ``write()``. Unlike a ``write()`` it is no system call: the thread keeps the GIL (under
load, each thread that lets the GIL go waits to get it back), wakes no other thread and waits
for none. The journal's writer brings SQLite up to date from memory within ``INTAKE_DELAY``
(100 ms), in batches, in the order the changes happened. So SQLite holds every accepted task of a seq up to
its highest, and the intake files matter only for the tasks beyond it: at start
(``Journal.load``) and after a failed commit (``Journal.reload``) those are read back from here.

Other changes a request waits for (a worker's results, a cancel) go in frames of changes
(``CHANGES_MAGIC``): the journal's JSON of the records under a log sequence number (LSN), given
in order; SQLite keeps the newest LSN it holds, and only the frames beyond it are read back.

A file is ``FILE_BYTES`` long, its blocks allocated when it is made (``posix_fallocate``: a copy
into the map never meets a full disk, which would be a SIGBUS). It holds one frame per request:
``MAGIC``, the payload's length and CRC-32, then the payload, the tasks of the request (all of a
batch or none: a torn frame fails its CRC and is skipped whole; the reader then looks for the next
``MAGIC``). Space is reserved under the journal's lock, in submission order, and copied into
after it; zeros are space reserved and never written to (a request that did not get its answer).
When a frame does not fit, the next file is taken (made ahead by the writer); a file is deleted
once SQLite holds every task and change that can be in it and no request is still copying into it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import struct
import threading
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "intake-"
SUFFIX = ".log"
MAGIC = b"TMi1"  # a frame of accepted tasks
CHANGES_MAGIC = b"TMc1"  # a frame of other changes (a result, a cancel, ...): its LSN, then JSON
_FRAME = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
_LSN = struct.Struct("<Q")
_COUNT = struct.Struct("<I")
#: seq, iterations, enqueued_at, priority, not_before, deadline (NaN: none), id, owner, body lengths
_TASK = struct.Struct("<qqdqddHHI")
_NONE = math.nan
#: Each intake file's size (allocated when it is made).
FILE_BYTES = 2 * 1024 * 1024


def frame_size(records) -> int:
    """The length of ``encode(records)``, without encoding them."""
    return (_FRAME.size + _COUNT.size
            + sum(_TASK.size + len(r.id.encode()) + len((r.owner or "").encode()) + len(r.body) for r in records))


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


def changes_frame(lsn: int, payload: bytes) -> bytes:
    """A frame of changes: ``payload`` (the journal's JSON of its records) under ``lsn``, the
    number SQLite keeps of the last such frame it holds."""
    body = _LSN.pack(lsn) + payload
    return _FRAME.pack(CHANGES_MAGIC, len(body), zlib.crc32(body)) + body


def changes_frame_size(payload: bytes) -> int:
    return _FRAME.size + _LSN.size + len(payload)


def decode(data: bytes, make, make_changes=None) -> tuple[list, int]:
    """Every record of the whole frames in ``data``, in order: accepted tasks made by ``make(seq,
    id, iterations, body, enqueued_at, priority, not_before, deadline, owner)``, and for each frame
    of changes ``make_changes(lsn, payload)`` (None: such frames are left out); and the count of
    bytes skipped (torn or damaged frames; zeros are space never written to, not counted)."""
    records, skipped, pos, end = [], 0, 0, len(data)
    while pos < end:
        start = _next_magic(data, pos)
        if start < 0:
            skipped += _written(data, pos, end)
            break
        skipped += _written(data, pos, start)
        pos = start
        if pos + _FRAME.size > end:
            skipped += _written(data, pos, end)
            break
        magic, length, crc = _FRAME.unpack_from(data, pos)
        payload = data[pos + _FRAME.size:pos + _FRAME.size + length]
        frame = None
        if len(payload) == length and zlib.crc32(payload) == crc:
            frame = _frame_records(payload, make) if magic == MAGIC else _frame_changes(payload, make_changes)
        if frame is None:  # torn or damaged: look for the next frame after this magic
            skipped += len(MAGIC)
            pos += len(MAGIC)
            continue
        records += frame
        pos += _FRAME.size + length
    return records, skipped


def _next_magic(data: bytes, pos: int) -> int:
    found = [i for i in (data.find(MAGIC, pos), data.find(CHANGES_MAGIC, pos)) if i >= 0]
    return min(found, default=-1)


def _frame_changes(payload: bytes, make_changes) -> list | None:
    if len(payload) < _LSN.size:
        return None
    if make_changes is None:
        return []
    made = make_changes(_LSN.unpack_from(payload)[0], payload[_LSN.size:])
    return None if made is None else [made]


def _written(data: bytes, start: int, end: int) -> int:
    """Bytes of ``data[start:end]`` that are not zeros."""
    return end - start - data.count(0, start, end)


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
    """One intake file: mapped when it is made here (``size``); else one found at start, to be
    read and deleted. ``end``: its space reserved so far; ``users``: requests copying into it."""

    __slots__ = ("path", "fd", "map", "end", "users", "sealed_at", "sealed_lsn")

    def __init__(self, path: Path, size: int = 0) -> None:
        self.path, self.fd, self.map, self.end, self.users = path, None, None, 0, 0
        self.sealed_at: int | None = None  # no longer current: the highest seq it may hold
        self.sealed_lsn = 0  # and the highest LSN of its frames of changes
        if size:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                os.posix_fallocate(fd, 0, size)
                self.map = mmap.mmap(fd, size)
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            self.fd = fd

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        if self.fd is not None:
            os.close(self.fd)
        self.map = self.fd = None


class Intake:
    """The intake files of one journal (see the module docstring).

    ``reserve`` is called under the journal's lock, in the same step that queues the records for
    the writer; ``append`` and ``release`` without it. A file is closed only when no request
    holds it (a copy into a closed map fails: that request waits for SQLite instead).
    """

    def __init__(self, data_dir: Path, file_bytes: int = FILE_BYTES) -> None:
        self.data_dir = data_dir
        self.file_bytes = file_bytes
        self._lock = threading.Condition(threading.Lock())  # users, file numbers; ``drain``'s wait
        self._current: IntakeFile | None = None
        self._spare: IntakeFile | None = None  # the next current one, made ahead by the writer
        self._sealed: list[IntakeFile] = []
        self._next = 0
        self._failing = False  # a file could not be made (logged once until one can)
        self.appends = 0  # frames copied (the figures are approximate: counted without a lock)
        self.fallbacks = 0  # requests that found no room, or whose copy failed: they waited for SQLite

    def paths(self) -> list[Path]:
        return paths(self.data_dir)

    def read(self, make, make_changes=None) -> tuple[list, list[str]]:
        """Every record in the files now, in order (``decode``; for ``load`` and ``reload``: no
        request is copying); and notes on what was skipped."""
        records, notes = [], []
        for path in self.paths():
            try:
                found, skipped = decode(path.read_bytes(), make, make_changes)
            except OSError as exc:
                notes.append(f"intake file {path.name} could not be read: {exc}")
                continue
            records += found
            if skipped:
                notes.append(f"intake file {path.name}: {skipped} byte(s) of torn or damaged writes skipped")
        return records, notes

    def open(self, holds_up_to: int, lsn_up_to: int = 0, appending: bool = True) -> None:
        """Seal the files already there at ``holds_up_to`` and ``lsn_up_to`` (the highest seq and
        LSN of what they hold: they go once SQLite holds that much); with ``appending``, start a
        new current file."""
        files = self.paths()
        self._next = max((_number(p) for p in files), default=-1) + 1
        for path in files:
            sealed = IntakeFile(path)
            sealed.sealed_at, sealed.sealed_lsn = holds_up_to, lsn_up_to
            self._sealed.append(sealed)
        if appending:
            self._current = self._made()

    def _made(self) -> IntakeFile | None:
        """A new file, or None if it cannot be made (a full disk: the requests wait for SQLite)."""
        with self._lock:
            number, self._next = self._next, self._next + 1
        try:
            made = IntakeFile(self.data_dir / f"{PREFIX}{number}{SUFFIX}", self.file_bytes)
        except OSError as exc:
            if not self._failing:
                log.warning("intake: could not make a file (%s); enqueues wait for SQLite until one can be made", exc)
            self._failing = True
            return None
        self._failing = False
        return made

    def reserve(self, size: int, queued_up_to: int, lsn_up_to: int = 0) -> tuple[IntakeFile, int] | None:
        """(the journal's lock held) Room for a frame of ``size`` bytes: the file and offset to
        copy it to (then ``release`` the file); None if there is none (a frame larger than a
        quarter of a file, or no file can be made). ``queued_up_to`` and ``lsn_up_to``: the
        highest seq and LSN reserved for so far, which a file left behind here may hold."""
        current = self._current
        if current is None:
            return None
        if size > self.file_bytes // 4:
            self.fallbacks += 1
            return None
        if current.end + size > self.file_bytes:
            spare, self._spare = self._spare, None
            new = spare or self._made()
            if new is None:
                self.fallbacks += 1
                return None
            current.sealed_at, current.sealed_lsn = queued_up_to, lsn_up_to
            with self._lock:
                self._sealed.append(current)
            self._current = current = new
        offset = current.end
        current.end += size
        with self._lock:
            current.users += 1
        return current, offset

    def append(self, file: IntakeFile, offset: int, frame: bytes) -> bool:
        """Copy ``frame`` to its reserved place; False if that failed (the caller waits for SQLite)."""
        try:
            file.map[offset:offset + len(frame)] = frame
        except (TypeError, ValueError, IndexError):  # a map closed meanwhile (a reset, a close)
            self.fallbacks += 1
            return False
        self.appends += 1
        return True

    def release(self, file: IntakeFile) -> None:
        with self._lock:
            file.users -= 1
            if not file.users:
                self._lock.notify_all()

    def prepare(self) -> None:
        """(the writer, after a commit) Make the next file once the current one is half full, so
        that a request seldom makes one itself."""
        current = self._current
        if self._spare is None and current is not None and current.end > self.file_bytes // 2:
            self._spare = self._made()

    def drop_applied(self, applied_up_to: int, lsn_applied: int = 0) -> None:
        """Delete the sealed files whose every record SQLite holds (``applied_up_to``, its highest
        seq, and ``lsn_applied``, the LSN of the last frame of changes it holds) and that no
        request still copies into."""
        with self._lock:
            done = [f for f in self._sealed
                    if f.sealed_at <= applied_up_to and f.sealed_lsn <= lsn_applied and not f.users]
            self._sealed = [f for f in self._sealed if f not in done]
        for file in done:
            file.close()
            with contextlib.suppress(OSError):
                file.path.unlink()

    def drain(self, timeout: float) -> bool:
        """Wait until no request is between ``reserve`` and ``release``; False on timeout."""
        with self._lock:
            files = [f for f in (self._current, *self._sealed) if f is not None]
            return self._lock.wait_for(lambda: not any(f.users for f in files), timeout)

    def reset(self, holds_up_to: int, lsn_up_to: int = 0, appending: bool = True) -> None:
        """After ``read``, for ``reload``: the files there now are sealed at ``holds_up_to`` and
        ``lsn_up_to`` and, with ``appending``, a new current one started (no request copies
        meanwhile)."""
        with self._lock:
            files = [self._current, self._spare, *self._sealed]
            self._sealed, self._current, self._spare = [], None, None
        for file in files:
            if file is not None:
                file.close()
        self.open(holds_up_to, lsn_up_to, appending)

    def size_bytes(self) -> int:
        total = 0
        for path in self.paths():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def close(self, all_applied: bool) -> None:
        """Close the files; delete them if ``all_applied`` (SQLite holds every task) and no request holds one."""
        with self._lock:
            files = [f for f in (self._current, self._spare, *self._sealed) if f is not None]
            if any(f.users for f in files):
                return
            self._current, self._spare, self._sealed = None, None, []
        for file in files:
            file.close()
            if all_applied:
                with contextlib.suppress(OSError):
                    file.path.unlink()


def paths(data_dir: Path) -> list[Path]:
    """The intake files in ``data_dir``, oldest first."""
    return sorted(Path(data_dir).glob(f"{PREFIX}*{SUFFIX}"), key=_number)


def _number(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX):-len(SUFFIX)])
    except ValueError:
        return -1

