"""What the journal does with a torn or damaged file at start-up, so that the node still starts.

A torn last write sits at the end of the WAL: SQLite ignores frames after the last valid commit
by itself, and ``inspect_wal`` only measures what it ignored, for the log. A damaged database
file (a bad page, a truncated file) makes reads fail: ``move_aside`` keeps it for a person to
look at and ``salvage`` reads back every row still readable, skipping damaged ranges of seq.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24
#: Rows read per query while salvaging.
CHUNK = 256


@dataclass(frozen=True)
class WalTail:
    """The frames of the WAL that belong to its current generation (the header's salts)."""

    size: int = 0
    frames: int = 0
    torn_bytes: int = 0  # a partial frame at the end

    def describe(self, valid_frames: int) -> list[str]:
        """What SQLite dropped, given the count of frames it found valid."""
        dropped = max(0, self.frames - valid_frames)
        if not dropped and not self.torn_bytes:
            return []
        return [f"the last write was unfinished: skipped {dropped} WAL frame(s) and {self.torn_bytes} byte(s) "
                f"of a partial frame after the last complete commit ({valid_frames} frame(s) kept)"]


def inspect_wal(db_path: Path) -> WalTail:
    """Count the current frames of ``db_path``'s WAL (without checksums: SQLite checks those)."""
    wal = Path(f"{db_path}-wal")
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return WalTail()
    if len(data) < WAL_HEADER:
        return WalTail(len(data), 0, len(data))
    magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", data[:24])
    if magic not in WAL_MAGIC:
        return WalTail(len(data))
    page_size = 65536 if page_size == 1 else page_size
    frame_size = FRAME_HEADER + page_size
    frames, offset = 0, WAL_HEADER
    while offset + 16 <= len(data):
        if struct.unpack_from(">2I", data, offset + 8) != (salt1, salt2):
            break  # a frame of an earlier generation: the WAL was reset and reused
        if offset + frame_size > len(data):
            return WalTail(len(data), frames, len(data) - offset)
        frames += 1
        offset += frame_size
    return WalTail(len(data), frames, 0)


def move_aside(path: Path) -> Path:
    """Rename the damaged file and its WAL (kept for a person); returns the new name."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{aside}{suffix}")
    Path(f"{path}-shm").unlink(missing_ok=True)
    return aside


@dataclass
class Salvage:
    columns: tuple[str, ...] = ()  # of each row
    rows: list[tuple] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0
    notes: list[str] = field(default_factory=list)


def salvage(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> Salvage:
    """Every row of ``tasks`` (and ``counters``) still readable in the file at ``path``: its
    ``columns`` (the first one the seq), and those of ``optional`` the file has (an older
    version's lacks some)."""
    found = Salvage()
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        # Read a truncated file as far as it goes instead of refusing it as a whole.
        conn.execute("PRAGMA writable_schema=ON")
    except sqlite3.Error as exc:
        found.notes.append(f"nothing could be read ({exc})")
        return found
    try:
        present = {row[1] for row in _try(conn, "PRAGMA table_info(tasks)", ()) or ()}
        found.columns = (*columns, *(name for name in optional if name in present))
        found.rows, lost = _readable_rows(conn, ", ".join(found.columns))
        for first, last in lost:
            found.notes.append(f"skipped unreadable task rows, seq {first} to {last if last is not None else 'end'}")
        found.last_seq = max([row[0] for row in found.rows] + [last or first for first, last in lost] + [0])
        try:
            found.counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            for (value,) in conn.execute("SELECT value FROM meta WHERE name = 'last_seq'"):
                found.last_seq = max(found.last_seq, int(value))
        except sqlite3.Error as exc:
            found.notes.append(f"counters could not be read ({exc}); they restart from the tasks kept")
    finally:
        conn.close()
    return found


def _readable_rows(conn: sqlite3.Connection, columns: str) -> tuple[list[tuple], list[tuple[int, int | None]]]:
    """Rows in seq order; the ranges of seq that could not be read are returned as lost."""
    query = f"SELECT {columns} FROM tasks WHERE seq > ? ORDER BY seq LIMIT ?"
    rows: list[tuple] = []
    lost: list[tuple[int, int | None]] = []
    after = 0
    while True:
        chunk = _try(conn, query, (after, CHUNK)) or _try(conn, query, (after, 1))
        if chunk == []:
            return rows, lost
        if chunk:
            rows.extend(chunk)
            after = chunk[-1][0]
            continue
        # The row after ``after`` cannot be read: find the next seq from which reading works.
        following = _next_readable(conn, query, after)
        if following is None:
            lost.append((after + 1, None))
            return rows, lost
        lost.append((after + 1, following - 1))
        after = following - 1


def _next_readable(conn: sqlite3.Connection, query: str, after: int) -> int | None:
    """The smallest s > after + 1 from which a read succeeds, by doubling then bisecting;
    None if nothing readable follows."""
    low, step = after + 1, 1  # reading from ``low`` fails
    while step < 2**62:
        probe = low + step
        if _try(conn, query, (probe - 1, 1)) is not None:
            break
        step *= 2
    else:
        return None
    high = low + step  # reading from ``high`` works
    while high - low > 1:
        middle = (low + high) // 2
        if _try(conn, query, (middle - 1, 1)) is None:
            low = middle
        else:
            high = middle
    return high if _try(conn, query, (high - 1, 1)) else None  # [] = nothing after the damage


def _try(conn: sqlite3.Connection, query: str, args: tuple) -> list[tuple] | None:
    try:
        return conn.execute(query, args).fetchall()
    except sqlite3.DatabaseError:
        return None
