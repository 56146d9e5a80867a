"""A node's journal in DATA_DIR: every accepted task, result, failure and trim, made durable.

SQLite (standard library) in WAL mode, one table row per task. Every record waiting when a
commit starts rides in it, in one transaction (group commit): a commit starts as soon as the
previous one ended, made by the request thread that waits for it when none is in progress (no
hand-off to another thread and back), else by the writer thread once the one in progress ends.
``write`` returns the ``Commit`` the records ride in, and the caller blocks on ``wait(commit)``
until they are durable as JOURNAL_SYNC promises:

``off`` (default)
    synchronous=NORMAL: a commit is written to the OS before the caller goes on, not fsynced
    (the WAL is fsynced at checkpoints, and the kernel writes it back within ~30 s). Survives
    ``kill -9`` or any crash of the node; a power cut or OS crash may lose the last commits
    (SQLite keeps the file consistent, it never corrupts it). A request's records (an
    enqueue's tasks; a worker's results, a cancel: any change that accepts no task) are copied
    to a mapped intake file by the caller's thread instead of waiting for a commit, and
    committed within ``INTAKE_DELAY`` (``nodeapp.store.intake``).
``always``
    synchronous=FULL: each commit is fsynced before its callers go on. Also survives a power cut
    or OS crash; each answer waits for an fsync.
``batch``
    as ``always``, with at most one commit every JOURNAL_BATCH_MS (made by the writer thread):
    fewer fsyncs, for disks that bill or cap them, and each answer waits up to that long more.

``load()`` rebuilds what the node had: queued tasks in submission order (leases are not
journaled: a task that was running is queued again, with the newest checkpoint written for it),
kept results and failures, counters. A
torn last write is dropped by SQLite itself; a damaged file is moved aside and every row still
readable is copied into a new one (``nodeapp.store.journal_repair``). Either way the node starts and
the log says what was skipped. A lock file stops a second process from using the same DATA_DIR.

A commit that fails (disk full, any exception in the writer, the writer thread gone) fails every
record waiting behind it too, and the journal refuses writes until its owner has read the file
back with ``reload()`` (and put its memory back to it: the tasks beyond SQLite in the intake
files included); ``wait`` gives up after ``wait_seconds``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import NamedTuple

from nodeapp.store import intake, journal_repair
from nodeapp.store.checkpoints import Checkpoint, is_digest

log = logging.getLogger(__name__)

SYNC_POLICIES = ("batch", "always", "off")
DB_NAME = "journal.db"
LOCK_NAME = "node.lock"
SCHEMA_VERSION = 1
QUEUED, COMPLETED, FAILED, CANCELLED = 0, 1, 2, 3
#: After a checkpoint the WAL is cut back to this size (SQLite otherwise keeps its high-water mark).
WAL_SIZE_LIMIT = 8 * 1024 * 1024
#: Seconds a node waits for DATA_DIR's lock before it refuses to start.
LOCK_WAIT = 5.0
#: Free pages (4 KiB) beyond which the writer gives space back to the file system.
VACUUM_FREE_PAGES = 2048
#: ``off``: tasks acknowledged from the intake files reach SQLite within this many seconds (or
#: once INTAKE_BATCH records wait), in one commit for all of them.
INTAKE_DELAY = 0.1
INTAKE_BATCH = 1024
#: Accepted tasks per INSERT statement (9 values each, well within SQLite's 32,766 variables).
ROWS_PER_INSERT = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,          -- submission order on this node
    id TEXT NOT NULL,
    iterations INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    body BLOB,                        -- dropped once the task is done
    state INTEGER NOT NULL DEFAULT 0, -- 0 queued, 1 completed, 2 failed, 3 cancelled
    result TEXT,
    done_at REAL,
    reason TEXT,
    ckpt_done INTEGER,                -- queued: the newest accepted checkpoint, if any
    ckpt_digest TEXT,
    priority INTEGER,                 -- 0 to 9 (NULL: 0)
    not_before REAL,                  -- wall clock, NULL: none
    deadline REAL,
    owner TEXT,                       -- the client key id that queued it
    checked INTEGER                   -- completed: 1 spot-checked, 0 accepted unchecked, NULL unknown
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
TASK_COLUMNS = "seq, id, iterations, enqueued_at, body, state, result, done_at, reason"
#: An accepted task's row, from an ``Accepted`` record (its fields in this order).
_INSERT_ACCEPTED = ("INSERT INTO tasks (seq, id, iterations, body, enqueued_at, priority, not_before, deadline, owner) "
                    "VALUES ")
_ACCEPTED_VALUES = "(?,?,?,?,?,nullif(?, 0),?,?,?)"
#: Columns added after the first version: added to an older file when it is opened.
ADDED_COLUMNS = {"ckpt_done": "INTEGER", "ckpt_digest": "TEXT", "priority": "INTEGER", "not_before": "REAL",
                 "deadline": "REAL", "owner": "TEXT", "checked": "INTEGER"}


class JournalError(RuntimeError):
    """A record could not be made durable (disk full, I/O error, journal closed)."""


class DataDirInUse(JournalError):
    """Another process holds DATA_DIR's lock."""


# ---------------------------------------------------------------- records
class Accepted(NamedTuple):
    seq: int
    id: str
    iterations: int
    body: bytes
    enqueued_at: float
    priority: int = 0
    not_before: float | None = None
    deadline: float | None = None
    owner: str | None = None


class Completed(NamedTuple):
    seq: int
    result: str
    completed_at: float
    checked: bool | None = None  # spot-checked before it was accepted (None: checks are off)


class Failed(NamedTuple):
    seq: int
    reason: str
    failed_at: float
    cancelled: bool = False  # ended by a client rather than by lost leases


class Checkpointed(NamedTuple):
    """The newest accepted checkpoint of a running task (written without waiting for it)."""

    seq: int
    done: int
    digest: str


class Trimmed(NamedTuple):
    """A kept result or failure dropped beyond RESULTS_RETENTION."""

    seq: int


class Counters(NamedTuple):
    """Counters of /stats at one moment, those that changed (the newest value written wins).

    ``seq``: the highest seq given out when they were read. A commit of accepted tasks alone
    writes no counters (its one statement is what an enqueue waits for): ``load`` counts the
    rows of a higher seq than the newest counters' (``Recovered.accepted_since_counters``), one
    task enqueued each."""

    values: dict[str, int]
    seq: int | None = None


Record = Accepted | Checkpointed | Completed | Failed | Trimmed | Counters


@dataclass(slots=True)
class StoredTask:
    seq: int
    id: str
    iterations: int
    enqueued_at: float
    body: bytes | None = None
    result: str | None = None
    done_at: float | None = None
    reason: str | None = None
    cancelled: bool = False
    checkpoint: Checkpoint | None = None  # queued: where the task had got to
    priority: int = 0
    not_before: float | None = None
    deadline: float | None = None
    owner: str | None = None
    checked: bool | None = None  # completed: spot-checked (``Completed.checked``)


@dataclass
class Recovered:
    """What ``Journal.load`` found."""

    queued: list[StoredTask] = field(default_factory=list)  # submission order
    completed: list[StoredTask] = field(default_factory=list)  # oldest completion first
    failed: list[StoredTask] = field(default_factory=list)  # failed or cancelled, oldest first
    counters: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0
    accepted_since_counters: int = 0  # rows of a higher seq than the newest counters' (see Counters)
    skipped: list[str] = field(default_factory=list)  # what could not be recovered, for the log
    epoch: str = ""  # the store's epoch in GET /results cursors: the same while this file lasts


class Commit:
    """The records one transaction makes durable. ``wait()`` blocks until it is committed.

    The waiters of one commit are woken as a chain: the writer releases a latch once, and each
    waiter that gets it passes it on. So ending a commit costs the writer one wake-up, however
    many requests wait on it (waking each from the writer made it lose the GIL and the CPU once
    per waiter on a busy machine: a third of its time in ``bench.journal``'s profile).
    """

    __slots__ = ("records", "error", "done", "lsn", "_latch")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.lsn: int | None = None  # the newest frame of changes in the intake among its records
        self.error: BaseException | None = None
        self.done = False
        self._latch = threading.Lock()
        self._latch.acquire()  # held until the commit ends

    def wait(self, timeout: float | None = None) -> None:
        """Return once the records are durable; raise ``JournalError`` if they cannot be."""
        if not self.done:
            if not self._latch.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                raise JournalError(f"the journal did not commit within {timeout:g}s")
            self._latch.release()  # to the next waiter
        if self.error is not None:
            raise JournalError(f"journal write failed: {self.error or type(self.error).__name__}") from self.error

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done = True
        self._latch.release()


class Appended(NamedTuple):
    """Records ``write`` handed to the intake: ``wait`` copies them to ``file`` at ``offset`` (or,
    if that fails, waits for ``commit``, the SQLite commit they also ride in). ``frame``: the
    frame of changes, made under the lock (its LSN is given there); None for accepted tasks,
    whose frame ``wait`` makes."""

    commit: Commit
    file: intake.IntakeFile
    offset: int
    records: list
    frame: bytes | None = None


class Changes(NamedTuple):
    """A frame of changes read back from the intake: its LSN and records."""

    lsn: int
    records: list


class Journal:
    """The journal of one node in ``data_dir``. Not usable by two processes at once.

    Why one class of this size (10 public methods): the group commit, the failure state that
    refuses writes until ``reload`` and the writer thread share one condition variable and one
    SQLite connection; the schema and its upgrades (``SCHEMA``), the repair of a damaged file
    (``journal_repair``), the intake files with their frames (``intake``) and the JSON of a frame
    of changes (the module's ``_changes_*``) are apart already. The read-back of the intake
    (``_with_intake``) stays: it writes and reads in one transaction on that connection, and
    sets the LSN state the writer continues from.

    Use: ``journal = Journal(dir)`` (takes the lock), ``recovered = journal.load()``, then
    ``journal.wait(journal.write([...], waited=True))`` (a request: the commit may be made by its
    own thread, or the intake used), or ``journal.write([...]).wait()`` (the writer thread makes
    it); the first write starts the writer thread; ``close()``.

    Args:
        data_dir: created if missing.
        sync: ``batch``, ``always`` or ``off`` (see the module docstring).
        batch_ms: ``batch``: the shortest time between two commits.
        max_pending: records waiting for the writer beyond which ``write`` blocks (back-pressure).
        wait_seconds: the longest ``wait`` (and ``write`` under back-pressure) waits for a commit.

    Raises:
        DataDirInUse: another process uses ``data_dir``.
    """

    def __init__(self, data_dir: str | os.PathLike, *, sync: str = "off", batch_ms: float = 5.0,
                 max_pending: int = 50_000, wait_seconds: float = 5.0) -> None:
        if sync not in SYNC_POLICIES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_POLICIES)}, got {sync!r}")
        self.data_dir = Path(data_dir)
        self.sync = sync
        self.batch_seconds = batch_ms / 1000.0 if sync == "batch" else 0.0
        self.max_pending = max_pending
        self.wait_seconds = wait_seconds
        self.path = self.data_dir / DB_NAME
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.data_dir / LOCK_NAME, LOCK_WAIT)
        self._conn: sqlite3.Connection | None = None
        self._wal_frames_valid = 0
        self._cond = threading.Condition()
        self._current = Commit()
        self._pending = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()  # the connection: the writer's, or ``reload``'s after a failure
        self._failure: str | None = None  # why writes are refused (until ``reload``)
        self._commit_started: float | None = None  # monotonic start of the commit in progress
        self._inflight: Commit | None = None  # the commit in progress
        self._blocked = 0  # writes waiting under back-pressure
        self._writer_ending = False  # the writer thread failed a commit and is ending
        #: A request thread makes the commit it waits for when none is in progress (no hand-off to
        #: the writer thread and back); not with ``batch``'s minimum spacing.
        self._inline = self.batch_seconds == 0
        #: ``off``: accepted tasks are durable once copied into an intake file (``intake``).
        self._intake = intake.Intake(self.data_dir)  # read at start whatever the policy
        self._appending = sync == "off"
        self._intake_seq = 0  # the highest seq handed to the intake
        self._lsn = 0  # the highest LSN given to a frame of changes
        self._applied_lsn = 0  # the LSN of the newest frame of changes SQLite holds (meta 'intake_lsn')
        self._due: float | None = None  # when the records waiting must be committed (None: none wait)
        self.failures = 0
        #: Called when the file cannot be read back after a failure (the serving process stops
        #: itself then, so that a new one starts from the file).
        self.on_lost: Callable[[], None] | None = None
        self.commits = 0
        self.records_written = 0
        self._highest_seq = 0  # the highest seq in the file, or deleted from it (meta 'last_seq')
        self.skipped: list[str] = []
        self.recovered: dict[str, int] = {}

    # ------------------------------------------------------------ recovery
    def load(self) -> Recovered:
        """Open the file and read back everything in it. Call once, before ``start``."""
        tail = journal_repair.inspect_wal(self.path)
        notes: list[str] = []
        rebuilt = False
        try:
            self._conn = self._connect()
            recovered = self._read()
        except sqlite3.DatabaseError as exc:
            if self._conn is not None:
                self._conn.close()
            notes += self._rebuild(exc)
            rebuilt = True
            self._conn = self._connect()
            recovered = self._read()
        else:
            notes += tail.describe(self._wal_frames_valid)
        if not recovered.epoch:  # a new file, or one rebuilt from a damaged one: cursors start again
            value = secrets.randbits(63)
            self._conn.execute("INSERT INTO meta VALUES ('epoch', ?)", (value,))
            recovered.epoch = f"{value:016x}"
        recovered, unwritten = self._with_intake(recovered, rebuilt)
        self._intake.open(recovered.last_seq, self._lsn, appending=self._appending)
        if unwritten is not None:  # into SQLite with the first commit (after which the files go)
            self._queue_replayed(unwritten)
            self._start()
        else:
            self._intake.drop_applied(self._highest_seq, self._applied_lsn)
        recovered.skipped = notes + recovered.skipped
        for note in recovered.skipped:
            log.warning("journal %s: %s", self.path, note)
        self.skipped = recovered.skipped
        self.recovered = {"queued": len(recovered.queued), "completed": len(recovered.completed),
                          "failed": len(recovered.failed)}
        log.info("journal %s: recovered %d queued, %d completed, %d failed (sync=%s)", self.path,
                 len(recovered.queued), len(recovered.completed), len(recovered.failed), self.sync)
        return recovered

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect in a new file only
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            # Before anything writes: how many WAL frames SQLite found valid (torn ones are not).
            self._wal_frames_valid = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            conn.execute(f"PRAGMA synchronous={'NORMAL' if self.sync == 'off' else 'FULL'}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self.path} was written by a newer version (schema {version})")
            if version < SCHEMA_VERSION:
                conn.executescript(SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            _add_missing_columns(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _read(self) -> Recovered:
        found = Recovered()
        bad = 0
        for row in self._conn.execute(f"SELECT {TASK_COLUMNS}, {', '.join(ADDED_COLUMNS)} FROM tasks ORDER BY seq"):
            task = _task_from_row(row)
            if task is None:
                bad += 1
                continue
            state = row[5]
            (found.queued if state == QUEUED else found.completed if state == COMPLETED else found.failed).append(task)
            found.last_seq = max(found.last_seq, task.seq)
        if bad:
            found.skipped.append(f"{bad} task row(s) with values of the wrong type were skipped")
        found.completed.sort(key=lambda t: (t.done_at, t.seq))
        found.failed.sort(key=lambda t: (t.done_at, t.seq))
        found.counters = {name: value for name, value in self._conn.execute("SELECT name, value FROM counters")
                          if isinstance(name, str) and isinstance(value, int)}
        for (value,) in self._conn.execute("SELECT value FROM meta WHERE name = 'last_seq'"):
            found.last_seq = max(found.last_seq, int(value))
        for (value,) in self._conn.execute("SELECT value FROM meta WHERE name = 'epoch'"):
            found.epoch = f"{int(value):016x}"
        counted = self._conn.execute("SELECT value FROM meta WHERE name = 'counters_seq'").fetchone()
        if counted is None:  # a new file; or one written before commits could leave the counters out
            self._conn.execute("INSERT INTO meta VALUES ('counters_seq', ?)", (found.last_seq,))
        else:
            found.accepted_since_counters = self._conn.execute(
                "SELECT COUNT(*) FROM tasks WHERE seq > ?", (int(counted[0]),)).fetchone()[0]
        self._highest_seq = found.last_seq
        return found

    def _with_intake(self, found: Recovered, rebuilt: bool = False) -> tuple[Recovered, Commit | None]:
        """What SQLite holds (``found``) and the intake beyond it: the accepted tasks of a higher
        seq than SQLite's highest, and the frames of changes of a higher LSN than the last one it
        holds, applied to SQLite in file order (the order they happened) and read back with it,
        in one transaction. ``rebuilt``: SQLite's file was repaired and may have lost rows below
        its highest seq too, so every task of the intake it does not hold comes back (one trimmed
        meanwhile would run again: at least once, as after any lost lease).

        Returns what the node has, and None; or, if that commit failed, the records still to
        commit (the node has them, read back inside the transaction)."""
        entries, notes = self._intake.read(Accepted, _changes_from_json)
        found.skipped += notes
        held = {seq for (seq,) in self._conn.execute("SELECT seq FROM tasks")} if rebuilt and entries else None
        applied_lsn = self._applied_lsn = self._stored_lsn()
        replay, accepted, changes, lsn = [], 0, 0, applied_lsn
        for entry in entries:
            if type(entry) is Accepted:
                if (entry.seq not in held) if held is not None else entry.seq > found.last_seq:
                    replay.append(entry)
                    accepted += 1
            elif entry.lsn > applied_lsn:
                replay += entry.records
                changes += 1
                lsn = max(lsn, entry.lsn)
        self._lsn = max(self._lsn, lsn, max((e.lsn for e in entries if type(e) is Changes), default=0))
        if not replay:
            return found, None
        log.info("journal %s: %d accepted task(s) and %d frame(s) of changes read back from the intake files",
                 self.path, accepted, changes)
        unwritten = Commit()
        unwritten.records, unwritten.lsn = replay, (lsn if changes else None)
        conn = self._conn
        # Dirty pages stay in memory until the COMMIT (not spilled to the WAL on the way), so a
        # full disk shows at the COMMIT, which is recovered from, not in a statement.
        conn.execute("PRAGMA cache_spill=OFF")
        conn.execute("BEGIN")
        try:
            self._write(conn, replay, self._highest_seq, unwritten.lsn)
            again = self._read()
            again.skipped = found.skipped
        except BaseException:
            conn.rollback()
            conn.execute("PRAGMA cache_spill=ON")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:  # full disk, I/O: the node has them; the next commit takes them
            conn.rollback()
            log.error("journal %s: the records read back from the intake could not be committed (%s); "
                      "they are committed with the next write", self.path, exc)
            self._highest_seq = found.last_seq
            return again, unwritten
        finally:
            conn.execute("PRAGMA cache_spill=ON")
        self._applied_lsn = max(applied_lsn, lsn)
        return again, None

    def _stored_lsn(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'intake_lsn'").fetchone()
        return int(row[0]) if row is not None else 0

    def _queue_replayed(self, unwritten: Commit) -> None:
        """(``_cond`` held, or no other thread yet) Commit what ``_with_intake`` could not, as soon
        as possible."""
        self._current.records.extend(unwritten.records)
        self._pending += len(unwritten.records)
        self._current.lsn = unwritten.lsn
        self._due = 0.0
        self._intake_seq = max([self._intake_seq, *(r.seq for r in unwritten.records if type(r) is Accepted)])

    def _rebuild(self, error: sqlite3.DatabaseError) -> list[str]:
        """The file cannot be read: move it aside and copy what is still readable into a new one."""
        aside = journal_repair.move_aside(self.path)
        # Checkpoints are not copied (a damaged file's tasks start from 0); the rest of a row is.
        kept = tuple(name for name in ADDED_COLUMNS if not name.startswith("ckpt_"))
        salvage = journal_repair.salvage(aside, tuple(TASK_COLUMNS.split(", ")), kept)
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            if salvage.rows:
                conn.executemany(f"INSERT INTO tasks ({', '.join(salvage.columns)}) "
                                 f"VALUES ({', '.join('?' * len(salvage.columns))})", salvage.rows)
            conn.executemany("INSERT INTO counters VALUES (?, ?)", salvage.counters.items())
            conn.execute("INSERT INTO meta VALUES ('last_seq', ?)", (salvage.last_seq,))
            conn.execute("COMMIT")
        finally:
            conn.close()
        return [f"the file could not be read ({error}); moved it to {aside.name} and kept "
                f"{len(salvage.rows)} readable task row(s)"] + salvage.notes

    # -------------------------------------------------------------- writing
    def start(self) -> None:
        """Start the writer thread (after ``load``); the first ``write`` does it too."""
        with self._cond:
            self._start()

    def _start(self) -> None:
        if self._conn is None:
            raise JournalError("load() the journal before writing to it")
        if (self._thread is None or not self._thread.is_alive()) and not self._closing:
            self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
            self._thread.start()

    def write(self, records: list[Record], *, waited: bool = False) -> Commit | Appended:
        """Queue ``records`` for the next commit, in order, and return that commit.

        Does not wait for durability (call ``wait()`` on the result), so it may be called under
        the caller's own lock to keep records in the order the changes happened. Blocks only
        while ``max_pending`` records wait for the writer. ``waited``: the caller will call
        ``wait(commit)``, which may make the commit itself (else the writer thread makes it);
        with ``off``, accepted tasks alone are returned as ``Appended``: ``wait`` copies them to
        an intake file, and the writer commits them to SQLite within ``INTAKE_DELAY``.

        Raises:
            JournalError: the journal is closed, or failed and not ``reload``-ed since.
        """
        with self._cond:
            self._check_open()
            if self._thread is None:
                self._start()
            elif not self._thread.is_alive():
                self._fail_locked("the journal writer thread is gone")
                self._check_open()
            while self._pending >= self.max_pending and not self._closing and self._failure is None:
                self._blocked += 1
                try:
                    self._cond.wait(self.wait_seconds)
                finally:
                    self._blocked -= 1
            self._check_open()
            commit = self._current
            commit.records.extend(records)
            self._pending += len(records)
            appended = self._to_intake(commit, records) if waited and self._appending and records else None
            if appended is not None:
                if self._due is None:
                    self._due = time.monotonic() + INTAKE_DELAY
                    self._cond.notify_all()  # the writer's timer starts
                elif self._pending >= INTAKE_BATCH:
                    self._cond.notify_all()
                return appended
            self._due = 0.0
            if not (waited and self._inline and self._inflight is None):
                self._cond.notify_all()  # the writer's turn; else the caller's ``wait`` commits it itself
            return commit

    def _to_intake(self, commit: Commit, records: list[Record]) -> Appended | None:
        """(``_cond`` held, ``records`` queued in ``commit``) Room in the intake for ``records``:
        accepted tasks alone go as they are; other changes (results, cancels, ...) in a frame of
        changes with the next LSN, unless a task is accepted among them (a retry: it waits for
        SQLite). None if there is no room."""
        if all(type(r) is Accepted for r in records):
            room = self._intake.reserve(intake.frame_size(records), self._intake_seq, self._lsn)
            if room is None:
                return None
            self._intake_seq = records[-1].seq  # records come in seq order
            return Appended(commit, *room, records)
        if any(type(r) is Accepted for r in records):
            return None
        payload = _changes_to_json(records)
        room = self._intake.reserve(intake.changes_frame_size(payload), self._intake_seq, self._lsn + 1)
        if room is None:
            return None
        self._lsn += 1
        commit.lsn = self._lsn
        return Appended(commit, *room, records, intake.changes_frame(self._lsn, payload))

    def _check_open(self) -> None:
        if self._closing:
            raise JournalError("the journal is closed")
        if self._failure is not None:
            raise JournalError(f"the journal refuses writes since a failure ({self._failure}) until the node "
                               "has read it back")

    def wait(self, commit: Commit | Appended | None) -> None:
        """Wait until ``commit`` (what ``write`` returned) is durable, for at most ``wait_seconds``.

        Raises:
            JournalError: the commit failed; or it is not done in time (the writer is stuck, or
                gone: then the journal fails, as for a failed write).
        """
        if commit is None:
            return
        if type(commit) is Appended:
            appended = self._intake.append(commit.file, commit.offset, commit.frame or intake.encode(commit.records))
            self._intake.release(commit.file)
            if appended:
                return
            with self._cond:  # not written (disk full?): durable once SQLite has it, then
                self._due = 0.0
                if not (self._inline and self._inflight is None):
                    self._cond.notify_all()  # else this thread makes the commit, just below
            commit = commit.commit
        if self._inline and not commit.done:
            with self._cond:  # no commit in progress: make this one here, without the writer thread
                mine = self._take() if (self._inflight is None and commit is self._current
                                        and self._failure is None and not self._closing) else None
            if mine is not None:
                self._make(mine)
        try:
            commit.wait(self.wait_seconds)
        except JournalError:
            if not commit.done:
                with self._cond:
                    if self._thread is not None and not self._thread.is_alive() and self._failure is None:
                        self._fail_locked("the journal writer thread is gone")
            raise

    @property
    def failure(self) -> str | None:
        """Why writes are refused now (a failed commit, a writer gone), or None."""
        return self._failure

    def state(self) -> str:
        """``ok``; ``failed`` (writes refused until ``reload``); ``stuck`` (a commit has taken longer
        than ``wait_seconds``, e.g. a disk that does not answer); ``closed``."""
        with self._cond:
            if self._closing:
                return "closed"
            if self._failure is not None or (self._thread is not None and not self._thread.is_alive()):
                return "failed"
            started = self._commit_started
            if started is not None and time.monotonic() - started > self.wait_seconds:
                return "stuck"
            return "ok"

    def reload(self) -> Recovered | None:
        """After a failure: read back what the file holds (the caller puts its memory back to
        it) and accept writes again, with a new writer thread if the old one is gone. None if
        the journal has not failed.

        Raises:
            JournalError: the file cannot be read back (the node should stop).
        """
        with self._cond:
            if self._failure is None:
                return None
            ending = self._writer_ending
        if ending and self._thread is not None:  # it failed a commit on its way out: let it go first
            self._thread.join(self.wait_seconds)
        with self._io:  # the writer is idle: it failed everything pending and refuses new records
            if not self._intake.drain(self.wait_seconds):  # the tasks acknowledged so far are all in the files
                raise JournalError("an append to the intake did not end; the journal is read back later")
            try:
                if self._conn.in_transaction:
                    self._conn.rollback()
                recovered, unwritten = self._with_intake(self._read())
                self._intake.reset(recovered.last_seq, self._lsn, appending=self._appending)
            except Exception as exc:
                log.critical("journal %s: could not be read back after a failure: %s", self.path, exc)
                if self.on_lost is not None:
                    self.on_lost()
                raise JournalError(f"the journal could not be read back after a failure: {exc}") from exc
        with self._cond:
            log.warning("journal %s: read back after a failure (%s): %d queued, %d completed, %d failed",
                        self.path, self._failure, len(recovered.queued), len(recovered.completed),
                        len(recovered.failed))
            self._failure = None
            self._writer_ending = False
            if unwritten is not None:  # acknowledged, not yet in SQLite: committed first
                self._queue_replayed(unwritten)
            self._start()
        return recovered

    def _fail_locked(self, reason: str, error: BaseException | None = None, failed: Commit | None = None) -> None:
        """(``_cond`` held) Refuse writes from now on; fail ``failed`` and every record still
        waiting (it comes after the failed ones, which may have been what made it valid)."""
        if self._failure is None:
            self._failure = reason
            self.failures += 1
            log.error("journal %s: refusing writes until the node reads it back: %s", self.path, reason)
        waiting, self._current = self._current, Commit()
        self._pending = 0
        self._due = None
        self._cond.notify_all()
        error = error or JournalError(reason)
        for commit in (failed, waiting):
            if commit is not None and not commit.done:
                commit._finish(error)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a defect of the loop itself: fail loudly, not by hanging
            log.exception("journal %s: the writer thread failed", self.path)
            with self._cond:
                self._commit_started = None
                self._fail_locked(f"the journal writer thread failed: {exc!r}", exc, self._inflight)

    def _loop(self) -> None:
        last_start = 0.0
        while True:
            with self._cond:
                while not self._closing:
                    if self._pending and self._inflight is None:
                        due = self._due if self._due is not None and self._pending < INTAKE_BATCH else 0.0
                        left = due - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)  # accepted tasks in the intake: a few more may come
                    else:
                        self._cond.wait()
                while self._closing and self._inflight is not None:
                    self._cond.wait()
                if not self._pending and self._inflight is None:
                    return
            # The next commit starts as soon as the last one ended; ``batch`` waits until
            # ``batch_ms`` after the last one started.
            delay = last_start + self.batch_seconds - time.monotonic()
            if delay > 0 and not self._closing:
                time.sleep(delay)
            with self._cond:
                if not self._pending or self._inflight is not None:
                    continue  # a request thread is making it (``wait``)
                commit = self._take()
                last_start = time.monotonic()
            self._make(commit)

    def _take(self) -> Commit:
        """(``_cond`` held, no commit in progress) Every record waiting, as the next commit."""
        commit = self._inflight = self._current
        self._current = Commit()
        self._pending = 0
        self._due = None
        self._commit_started = time.monotonic()
        if self._blocked:
            self._cond.notify_all()
        return commit

    def _make(self, commit: Commit) -> None:
        """Commit what ``_take`` took (the writer thread, or a request thread in ``wait``)."""
        try:
            with self._io:
                error = self._commit(commit.records, commit.lsn)
                if error is None:
                    self._intake.drop_applied(self._highest_seq, self._applied_lsn)
                    self._intake.prepare()
                    if self.commits % 256 == 0:
                        self._give_back_space()
        except BaseException as exc:  # not even a failed commit: a defect, or the thread is ending
            with self._cond:
                self._commit_started = self._inflight = None
                self._writer_ending = threading.current_thread() is self._thread
                self._fail_locked(f"the journal writer failed: {exc!r}", exc, commit)
            raise
        with self._cond:
            self._commit_started = self._inflight = None
            if error is not None:
                self._fail_locked(f"a commit of {len(commit.records)} record(s) failed: {error}", error, commit)
            elif self._pending or self._closing:
                self._cond.notify_all()  # what came meanwhile: the writer's turn
        if error is None:
            commit._finish()

    def _commit(self, records: list[Record], lsn: int | None = None) -> BaseException | None:
        """Write ``records`` in one transaction (with ``lsn``, the newest frame of changes among
        them); the error if it failed (rolled back), else None."""
        conn = self._conn
        try:
            highest = self._apply(conn, records, self._highest_seq, lsn)
        except Exception as exc:  # SQLite's (disk full, I/O) or any other: the commit failed
            try:
                if conn.in_transaction:
                    conn.rollback()
            except sqlite3.Error as again:
                log.error("journal %s: rollback failed: %s", self.path, again)
            log.error("journal %s: a commit of %d record(s) failed: %r", self.path, len(records), exc)
            return exc
        self.commits += 1
        self.records_written += len(records)
        self._highest_seq = highest
        if lsn is not None:
            self._applied_lsn = max(self._applied_lsn, lsn)
        return None

    @classmethod
    def _apply(cls, conn: sqlite3.Connection, records: list[Record], highest_seq: int, lsn: int | None = None) -> int:
        """Write ``records`` in one transaction; returns the highest seq the file has held.

        The highest seq given out is the highest row's, read back at start; it is written to
        ``meta`` only by a commit that deletes rows (one of them may be that row), so that an
        enqueue's commit is one statement and its transaction. ``lsn``: the newest frame of
        changes of the intake among the records, kept in ``meta`` ('intake_lsn')."""
        if lsn is None and len(records) <= ROWS_PER_INSERT and all(type(r) is Accepted for r in records):
            # Accepted tasks alone (an enqueue): one statement, its own transaction. Each
            # statement lets the GIL go and take it back; under load that costs a request more
            # than SQLite's work does.
            _insert_accepted(conn, records)
            return max([highest_seq, *(r.seq for r in records)])
        conn.execute("BEGIN")
        highest_seq = cls._write(conn, records, highest_seq, lsn)
        conn.execute("COMMIT")
        return highest_seq

    @staticmethod
    def _write(conn: sqlite3.Connection, records: list[Record], highest_seq: int, lsn: int | None) -> int:
        """(in a transaction) The statements of ``_apply``."""
        accepted, checkpointed, completed, failed, trimmed = [], [], [], [], []
        counters: dict[str, int] = {}
        counters_seq = None
        last_seq = 0
        for record in records:
            kind = type(record)
            if kind is Accepted:
                accepted.append(record)
                last_seq = max(last_seq, record.seq)
            elif kind is Checkpointed:
                checkpointed.append((record.done, record.digest, record.seq, record.done))
            elif kind is Completed:
                completed += (record.seq, record.result, record.completed_at,
                              None if record.checked is None else int(record.checked))
            elif kind is Failed:
                failed.append((CANCELLED if record.cancelled else FAILED, record.reason, record.failed_at, record.seq))
            elif kind is Trimmed:
                trimmed.append(record)
            else:
                counters.update(record.values)
                counters_seq = record.seq if record.seq is not None else counters_seq
        # For one task the order is always accepted -> checkpoints -> completed or failed ->
        # trimmed, so applying the kinds in that order is the same as applying the records one
        # by one (a checkpoint only ever moves forward, and only while the task is queued).
        for start in range(0, len(accepted), ROWS_PER_INSERT):  # not executemany: a GIL hand-off per row
            _insert_accepted(conn, accepted[start:start + ROWS_PER_INSERT])
        if checkpointed:
            conn.executemany(f"UPDATE tasks SET ckpt_done = ?, ckpt_digest = ? WHERE seq = ? AND state = {QUEUED} "
                             "AND coalesce(ckpt_done, 0) < ?", checkpointed)
        for start in range(0, len(completed), 4 * ROWS_PER_INSERT):  # as the INSERTs: a statement per 64 rows
            _update_completed(conn, completed[start:start + 4 * ROWS_PER_INSERT])
        if failed:
            conn.executemany("UPDATE tasks SET state = ?, reason = ?, done_at = ?, body = NULL, ckpt_done = NULL, "
                             "ckpt_digest = NULL WHERE seq = ?", failed)
        highest_seq = max(highest_seq, last_seq)
        if trimmed:
            conn.executemany("DELETE FROM tasks WHERE seq = ?", trimmed)
            conn.execute("INSERT INTO meta VALUES ('last_seq', ?) ON CONFLICT(name) DO UPDATE "
                         "SET value = max(value, excluded.value)", (highest_seq,))
        if counters:
            conn.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                             "SET value = excluded.value", counters.items())
        if counters_seq is not None:
            conn.execute("INSERT INTO meta VALUES ('counters_seq', ?) ON CONFLICT(name) DO UPDATE "
                         "SET value = excluded.value", (counters_seq,))
        if lsn is not None:
            conn.execute("INSERT INTO meta VALUES ('intake_lsn', ?) ON CONFLICT(name) DO UPDATE "
                         "SET value = max(value, excluded.value)", (lsn,))
        return highest_seq

    def _give_back_space(self) -> None:
        """Return free pages beyond VACUUM_FREE_PAGES to the file system (after a burst)."""
        try:
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free > VACUUM_FREE_PAGES:
                self._conn.execute(f"PRAGMA incremental_vacuum({free - VACUUM_FREE_PAGES // 2})").fetchall()
        except sqlite3.Error as exc:
            log.warning("journal %s: could not give back free space: %s", self.path, exc)

    # ---------------------------------------------------------------- admin
    def size_bytes(self) -> int:
        """The file, its WAL and the intake files on disk."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total + self._intake.size_bytes()

    def info(self) -> dict:
        """What /stats shows about the journal."""
        return {"durable": True, "data_dir": str(self.data_dir), "sync": self.sync,
                "batch_ms": self.batch_seconds * 1000, "bytes": self.size_bytes(), "commits": self.commits,
                "records": self.records_written, "recovered": self.recovered, "skipped_at_start": len(self.skipped),
                "state": self.state(), "failure": self._failure, "failures": self.failures,
                "intake": {"appends": self._intake.appends, "fallbacks": self._intake.fallbacks}}

    def close(self) -> None:
        """Commit what waits, checkpoint, close the file and release the lock. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.wait_seconds)
            if self._thread.is_alive():  # stuck in a commit: leave the file to the process's exit
                log.error("journal %s: the writer did not finish within %gs; not closed", self.path, self.wait_seconds)
                return
            self._thread = None
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("journal %s: checkpoint at close failed: %s", self.path, exc)
            self._conn.close()
            self._conn = None
        self._intake.close(all_applied=self._failure is None and not self._pending)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


#: The kinds of records in a frame of changes, by their tag in its JSON.
_CHANGE_TAGS = {Completed: "C", Failed: "F", Checkpointed: "P", Trimmed: "T", Counters: "N"}
_CHANGE_KINDS = {tag: kind for kind, tag in _CHANGE_TAGS.items()}


def _changes_to_json(records: list[Record]) -> bytes:
    """The payload of a frame of changes: each record as ``[tag, *fields]``."""
    return json.dumps([[_CHANGE_TAGS[type(r)], *r] for r in records], separators=(",", ":")).encode()


def _changes_from_json(lsn: int, payload: bytes) -> Changes | None:
    """A frame of changes read back, or None if its records are not what ``_changes_to_json``
    writes (then the frame counts as damaged)."""
    try:
        items = json.loads(payload)
        records = [_CHANGE_KINDS[item[0]](*item[1:]) for item in items]
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    if not all(_well_formed(r) for r in records):
        return None
    return Changes(lsn, records)


def _well_formed(record: Record) -> bool:
    kind, seq = type(record), record.seq
    if kind is Counters:
        return (isinstance(record.values, dict) and all(type(v) is int for v in record.values.values())
                and (seq is None or type(seq) is int))
    if type(seq) is not int:
        return False
    if kind is Completed:
        return isinstance(record.result, str) and type(record.completed_at) in (int, float) \
            and record.checked in (None, True, False)
    if kind is Failed:
        return isinstance(record.reason, str) and type(record.failed_at) in (int, float) and type(record.cancelled) is bool
    if kind is Checkpointed:
        return type(record.done) is int and isinstance(record.digest, str)
    return True  # Trimmed


def _update_completed(conn: sqlite3.Connection, values: list) -> None:
    """Rows completed (``values``: seq, result, done_at, checked of each, flat), in one UPDATE
    (``UPDATE ... FROM``, SQLite 3.33 and later: else one statement per row). SQLite looks each
    up by its seq (``SEARCH tasks USING INTEGER PRIMARY KEY``)."""
    if sqlite3.sqlite_version_info < (3, 33):
        rows = [values[i:i + 4] for i in range(0, len(values), 4)]
        conn.executemany(f"UPDATE tasks SET state = {COMPLETED}, result = ?, done_at = ?, checked = ?, body = NULL, "
                         "ckpt_done = NULL, ckpt_digest = NULL WHERE seq = ?", [(r, d, c, q) for q, r, d, c in rows])
        return
    conn.execute(f"UPDATE tasks SET state = {COMPLETED}, result = v.column2, done_at = v.column3, checked = v.column4, "
                 "body = NULL, ckpt_done = NULL, ckpt_digest = NULL "
                 f"FROM (VALUES {','.join(['(?,?,?,?)'] * (len(values) // 4))}) AS v WHERE tasks.seq = v.column1",
                 values)


def _insert_accepted(conn: sqlite3.Connection, accepted: list[Accepted]) -> None:
    """The rows of ``accepted`` (at most ROWS_PER_INSERT) in one INSERT statement."""
    conn.execute(_INSERT_ACCEPTED + ",".join([_ACCEPTED_VALUES] * len(accepted)),
                 [value for record in accepted for value in record])


def open_journal(config) -> Journal | None:
    """The journal that ``config`` (a NodeConfig) asks for, locked but not loaded; None without DATA_DIR."""
    if not config.data_dir:
        return None
    return Journal(config.data_dir, sync=config.journal_sync, batch_ms=config.journal_batch_ms,
                   wait_seconds=config.journal_wait_seconds)


def erase(data_dir: str | os.PathLike, also: Iterable[str] = ()) -> dict[str, int] | None:
    """Delete the journal in ``data_dir`` and the files named in ``also`` kept beside it (the
    chart's samples), to start empty; returns what the journal held, ``{"queued", "results", "failed"}`` (``failed``
    counts cancelled tasks too), or None if there was no journal.

    Raises:
        DataDirInUse: a node uses ``data_dir``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return None
    fd = _take_lock(data_dir / LOCK_NAME)
    try:
        held, last_seq = _held(data_dir / DB_NAME) if (data_dir / DB_NAME).is_file() else (None, 0)
        found = [p for p in data_dir.glob(f"{DB_NAME}*") if p.is_file()]  # with the WAL that reading left
        files = intake.paths(data_dir)
        beyond = set()  # tasks acknowledged from the intake that SQLite had not caught up with
        for path in files:
            with contextlib.suppress(OSError):
                beyond.update(r.seq for r in intake.decode(path.read_bytes(), Accepted)[0] if r.seq > last_seq)
        if beyond or (files and held is None):
            held = held or {"queued": 0, "results": 0, "failed": 0}
            held["queued"] += len(beyond)
        found += files
        for path in found + [p for name in also for p in data_dir.glob(f"{name}*") if p.is_file()]:
            path.unlink()
        return held
    finally:
        os.close(fd)


def _held(path: Path) -> tuple[dict[str, int], int]:
    """Tasks by state in the journal at ``path``, and the highest seq it holds (zeros if it
    cannot be read)."""
    held = {"queued": 0, "results": 0, "failed": 0}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
            last_seq = max([db.execute("SELECT coalesce(max(seq), 0) FROM tasks").fetchone()[0],
                            *(value for (value,) in db.execute("SELECT value FROM meta WHERE name = 'last_seq'"))])
    except sqlite3.Error:
        return held, 0
    names = {QUEUED: "queued", COMPLETED: "results", FAILED: "failed", CANCELLED: "failed"}
    for state, count in rows:
        held[names.get(state, "failed")] += count
    return held, last_seq


def check_free(data_dir: str | os.PathLike, wait: float = 0.0) -> None:
    """Raise ``DataDirInUse`` if another process holds ``data_dir`` after ``wait`` seconds (takes
    the lock and drops it)."""
    lock = Path(data_dir) / LOCK_NAME
    if lock.exists():
        os.close(_take_lock(lock, wait))


def _take_lock(path: Path, wait: float = 0.0) -> int:
    """Lock ``path`` (a file in DATA_DIR) for this process, trying for up to ``wait`` seconds:
    the worker process of a node killed a moment ago may still be on its way out."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES) or time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                raise DataDirInUse(f"DATA_DIR {path.parent} is in use by another node process"
                                   f"{f' (pid {holder})' if holder else ''}; one node per DATA_DIR") from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a file of an earlier version up to date (a version without them ignores the columns)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    for name, kind in ADDED_COLUMNS.items():
        if name not in present:
            conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")


def _task_from_row(row: tuple) -> StoredTask | None:
    """A row as read back, or None if a value has the wrong type (a damaged cell). A damaged
    checkpoint is dropped (the task starts from 0), not the task."""
    (seq, task_id, iterations, enqueued_at, body, state, result, done_at, reason, ckpt_done, ckpt_digest, priority,
     not_before, deadline, owner, checked) = row
    if not (isinstance(seq, int) and isinstance(task_id, str) and isinstance(iterations, int)
            and isinstance(enqueued_at, (int, float)) and state in (QUEUED, COMPLETED, FAILED, CANCELLED)):
        return None
    if state == QUEUED and not isinstance(body, bytes):
        return None
    if state == COMPLETED and not (isinstance(result, str) and isinstance(done_at, (int, float))):
        return None
    if state in (FAILED, CANCELLED) and not isinstance(done_at, (int, float)):
        return None
    checkpoint = None
    if (state == QUEUED and type(ckpt_done) is int and 0 < ckpt_done < iterations and isinstance(ckpt_digest, str)
            and is_digest(ckpt_digest)):
        checkpoint = Checkpoint(ckpt_done, ckpt_digest)
    return StoredTask(seq, task_id, iterations, float(enqueued_at), body if state == QUEUED else None,
                      result, done_at, reason if isinstance(reason, str) else None, state == CANCELLED, checkpoint,
                      priority if type(priority) is int and 0 <= priority <= 9 else 0, _time(not_before),
                      _time(deadline), owner if isinstance(owner, str) else None,
                      bool(checked) if state == COMPLETED and checked in (0, 1) else None)


def _time(value: object) -> float | None:
    """A stored time, or None (none, or a damaged cell)."""
    return float(value) if type(value) in (int, float) and math.isfinite(value) else None
