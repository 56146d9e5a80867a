"""The journal's intake files (``nodeapp/store/intake.py``, JOURNAL_SYNC=off): a task acknowledged
from them survives a kill -9 before SQLite has it, comes back once (never twice), a torn or damaged
write loses only itself (a whole batch, never part of one), the files are rotated and deleted as
SQLite catches up, and a commit that fails while the intake holds the tasks loses none of them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nodeapp.store import intake
from nodeapp.store import journal as journal_module
from nodeapp.store.journal import (
    DB_NAME, Accepted, Appended, Checkpointed, Completed, Counters, Failed, Journal, JournalError, Trimmed, erase,
)
from tests.helpers import wait_for
from tests.test_api import claim, complete, enqueue, sha512_result
from tests.test_durable import AUTH, close, node
from tests.test_journal_failure import FailingCommit, counts, intake_full, journal_of

ROOT = Path(__file__).resolve().parent.parent


def task(seq: int, body: bytes = b"body", **fields) -> Accepted:
    return Accepted(seq, f"{seq:032x}", seq % 5 + 1, body, 1000.0 + seq, **fields)


def sqlite_seqs(data_dir: Path) -> set[int]:
    """The tasks SQLite holds in ``data_dir`` (read-only: nothing is recovered or written)."""
    with sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True) as conn:
        return {seq for (seq,) in conn.execute("SELECT seq FROM tasks")}


def intake_files(data_dir: Path) -> list[str]:
    """The intake files in ``data_dir``, by name."""
    return sorted(p.name for p in data_dir.glob("intake-*.log"))


# ------------------------------------------------------------------------------------ the frames
def test_a_frame_gives_back_every_field_of_every_task():
    records = [task(1), task(2, b"", priority=9, not_before=5.5, deadline=7.25, owner="key-\u00e9"),
               task(3, bytes(range(256)) * 40, priority=0, owner=None)]
    found, skipped = intake.decode(intake.encode(records) + intake.encode([task(4)]), Accepted)
    assert found == records + [task(4)] and skipped == 0


def test_a_torn_frame_is_dropped_whole_and_the_frames_before_it_kept():
    first, batch = intake.encode([task(1)]), intake.encode([task(2), task(3), task(4)])
    for cut in range(1, len(batch)):  # a write cut anywhere: none of its tasks, all of the one before
        found, skipped = intake.decode(first + batch[:cut], Accepted)
        assert found == [task(1)] and skipped == cut - batch[:cut].count(0)  # zeros are never-written room


def test_a_damaged_frame_is_skipped_and_the_frames_after_it_read():
    frames = [intake.encode([task(seq, b"x" * 50)]) for seq in (1, 2, 3)]
    for offset in range(len(frames[1])):  # any byte of the middle frame changed
        damaged = bytearray(frames[1])
        damaged[offset] ^= 0x5A
        found, skipped = intake.decode(frames[0] + bytes(damaged) + frames[2], Accepted)
        assert found == [task(1, b"x" * 50), task(3, b"x" * 50)] and skipped > 0, offset


def test_frame_size_is_the_length_of_the_frame():
    for records in ([task(1)], [task(2, b"", owner="\u00e9t\u00e9")], [task(seq, b"x" * seq) for seq in range(1, 30)]):
        assert intake.frame_size(records) == len(intake.encode(records))


def test_zeros_are_room_never_written_to_not_damage():
    """Room reserved by a request that died before it copied its frame reads as zeros, as does the
    end of a file: skipped without a note, the frames around it read."""
    data = intake.encode([task(1)]) + bytes(300) + intake.encode([task(2)]) + bytes(5000)
    assert intake.decode(data, Accepted) == ([task(1), task(2)], 0)


def test_a_body_holding_the_magic_bytes_does_not_confuse_the_reader():
    body = intake.MAGIC * 20
    frames = intake.encode([task(1, body)]) + intake.encode([task(2, body)])
    assert intake.decode(frames, Accepted) == ([task(1, body), task(2, body)], 0)
    assert intake.decode(b"junk" + frames[5:], Accepted)[0] == [task(2, body)]  # the first torn at its head


def test_a_frame_of_changes_gives_back_every_record_in_order_among_the_tasks():
    changes = [Completed(1, "ab" * 64, 5.5, True), Completed(2, "cd" * 64, 6.0), Failed(3, "cancelled \u00e9", 7.0, True),
               Checkpointed(4, 1000, "ef" * 64), Trimmed(5), Counters({"completed": 2, "failed": 1}, 9),
               Counters({"enqueued": 3})]
    data = (intake.encode([task(1)]) + intake.changes_frame(7, journal_module._changes_to_json(changes))
            + intake.encode([task(2)]))
    found, skipped = intake.decode(data, Accepted, journal_module._changes_from_json)
    assert found == [task(1), journal_module.Changes(7, changes), task(2)] and skipped == 0
    assert intake.decode(data, Accepted)[0] == [task(1), task(2)]  # a reader of tasks alone leaves them out


@pytest.mark.parametrize("payload", [b"not json", b'[["C", 1, "r"]]', b'[["X", 1]]', b'[["C", "1", "r", 1.0, null]]',
                                     b'[["F", 1, "why", 2.0, "yes"]]', b'[["N", {"a": "b"}, null]]', b'{"C": 1}'])
def test_a_frame_of_changes_that_is_not_what_the_journal_writes_is_skipped_as_damaged(payload):
    data = intake.changes_frame(1, payload) + intake.encode([task(1)])
    found, skipped = intake.decode(data, Accepted, journal_module._changes_from_json)
    assert found == [task(1)] and skipped > 0


def test_a_torn_frame_of_changes_is_dropped_whole():
    frame = intake.changes_frame(3, journal_module._changes_to_json([Completed(1, "r", 1.0), Failed(2, "x", 2.0)]))
    for cut in range(1, len(frame)):
        found, _ = intake.decode(intake.encode([task(1)]) + frame[:cut], Accepted, journal_module._changes_from_json)
        assert found == [task(1)]


# -------------------------------------------------------------------------- the journal with it
@pytest.fixture
def slow_sqlite(monkeypatch):
    """SQLite is brought up to date an hour after an acknowledged enqueue (unless something else
    commits): what it holds when the node dies is what was there before."""
    monkeypatch.setattr(journal_module, "INTAKE_DELAY", 3600.0)


def opened(path: Path) -> tuple[Journal, object]:
    journal = Journal(path)
    recovered = journal.load()
    journal.start()
    return journal, recovered


def acknowledge(journal: Journal, records: list[Accepted]) -> None:
    """As an enqueue does: queue the records, then wait until they are durable."""
    appended = journal.write(records, waited=True)
    assert type(appended) is Appended  # the intake's way, not SQLite's
    journal.wait(appended)


KILLED = """
import os, signal, sys
from nodeapp.store import journal as journal_module
from nodeapp.store.journal import Accepted, Completed, Failed, Journal
journal_module.INTAKE_DELAY = 3600.0  # SQLite is not brought up to date before the kill
journal = Journal(sys.argv[1])
journal.load()
journal.start()
for seq in range(1, 51):
    journal.wait(journal.write([Accepted(seq, f"t{seq}", seq, b"b%d" % seq, float(seq))], waited=True))
journal.wait(journal.write([Accepted(seq, f"t{seq}", 1, b"", 0.0) for seq in range(51, 61)], waited=True))  # a batch
journal.write([Completed(2, "r2", 2.0)]).wait()  # not to the intake: the writer's SQLite commit carries 1-60 in
for seq in range(61, 71):
    journal.wait(journal.write([Accepted(seq, f"t{seq}", 1, b"late", float(seq))], waited=True))
journal.wait(journal.write([Completed(3, "r3", 3.0, True), Completed(65, "r65", 4.0)], waited=True))  # a result, as a worker's
journal.wait(journal.write([Failed(4, "cancelled by a client", 5.0, True)], waited=True))  # a cancel
print("durable", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_keeps_every_task_acknowledged_from_the_intake_once(tmp_path):
    run = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == -9 and run.stdout.strip() == "durable", run.stderr
    # 61-70, the results of 3 and 65 and the cancel of 4 were only in the intake when it died
    assert sqlite_seqs(tmp_path) == set(range(1, 61))

    def as_before(recovered) -> None:
        assert [t.seq for t in recovered.queued] == [seq for seq in range(1, 71) if seq not in (2, 3, 4, 65)]
        assert [(t.seq, t.result, t.done_at, t.checked) for t in recovered.completed] == [
            (2, "r2", 2.0, None), (3, "r3", 3.0, True), (65, "r65", 4.0, None)]
        assert [(t.seq, t.reason, t.cancelled) for t in recovered.failed] == [(4, "cancelled by a client", True)]
        assert recovered.accepted_since_counters == 70 and recovered.last_seq == 70

    journal, recovered = opened(tmp_path)
    as_before(recovered)
    late = recovered.queued[-1]
    assert (late.id, late.iterations, late.body, late.enqueued_at) == ("t70", 1, b"late", 70.0)
    assert sqlite_seqs(tmp_path) == set(range(1, 71))  # committed as the journal opened
    journal.close()
    assert intake_files(tmp_path) == []  # SQLite holds everything: the files are gone
    journal, recovered = opened(tmp_path)  # once, not twice
    as_before(recovered)
    journal.close()


def test_tasks_sqlite_already_holds_are_not_read_back_twice(tmp_path, slow_sqlite):
    journal, _ = opened(tmp_path)
    acknowledge(journal, [task(1), task(2)])
    journal.wait(journal.write([Completed(1, "r1", 5.0), Counters({"completed": 1})], waited=True))  # to the intake
    journal.write([Completed(2, "r2", 6.0), Counters({"completed": 2})]).wait()  # SQLite has 1 and 2, both results
    journal.wait(journal.write([Failed(1, "not applied twice", 7.0)], waited=True))  # (a made-up change, after it)
    acknowledge(journal, [task(3)])
    assert sqlite_seqs(tmp_path) == {1, 2} and len(intake_files(tmp_path)) == 1
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tmp_path.iterdir():  # the files as a kill -9 leaves them
        if path.is_file() and path.name != "node.lock":
            (copy / path.name).write_bytes(path.read_bytes())
    journal.close()
    crashed, recovered = opened(copy)
    assert [t.seq for t in recovered.queued] == [3] and [t.seq for t in recovered.completed] == [2]
    assert [(t.seq, t.reason) for t in recovered.failed] == [(1, "not applied twice")]  # once, after r1
    assert recovered.counters["completed"] == 2  # the older frame of changes was not applied again over it
    assert recovered.accepted_since_counters == 3  # as many as were accepted: none counted twice
    crashed.close()


def test_the_files_are_rotated_and_deleted_as_sqlite_catches_up(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "INTAKE_DELAY", 0.0)  # a commit (and a look at the file) per append or so
    journal, _ = opened(tmp_path)
    journal._intake.file_bytes = 4096
    seen: set[str] = set()
    threads, per_thread = 4, 150

    def client(k: int) -> None:
        for i in range(per_thread):
            with lock:  # seqs in order, as the store's lock keeps them
                seq = next(counter)
                appended = journal.write([task(seq, os.urandom(100))], waited=True)
            journal.wait(appended)
            seen.update(intake_files(tmp_path))

    lock, counter = threading.Lock(), iter(range(1, threads * per_thread + 1))
    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert journal._intake._next >= 20 and len(seen) >= 3  # 600 x ~200 bytes through files of 4 KiB
    wait_for(lambda: len(sqlite_seqs(tmp_path)) == threads * per_thread, what="SQLite up to date")
    journal.wait(journal.write([Completed(1, "r", 1.0)], waited=True))  # a commit after it: the old files go
    assert len(intake_files(tmp_path)) <= 2  # the current one and the next
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [t.seq for t in recovered.queued] == list(range(2, threads * per_thread + 1))
    journal.close()


def test_with_no_room_in_the_intake_an_enqueue_waits_for_sqlite_instead(tmp_path, slow_sqlite):
    journal, _ = opened(tmp_path)
    intake_full(journal)  # no new file can be made (as on a full disk)
    appended = journal.write([task(1)], waited=True)
    assert type(appended) is not Appended
    journal.wait(appended)  # returns only once SQLite has it, an hour early
    assert sqlite_seqs(tmp_path) == {1}
    journal.close()


def test_stats_count_the_enqueues_made_durable_in_the_intake_and_those_that_waited_for_sqlite(tmp_path):
    app, client = node(tmp_path)
    for i in range(3):
        enqueue(client, f"body {i}".encode())  # the first carries the new counters to SQLite
    assert client.get("/stats").get_json()["journal"]["intake"] == {"appends": 2, "fallbacks": 0}
    intake_full(journal_of(app))
    enqueue(client, b"no room")
    assert client.get("/stats").get_json()["journal"]["intake"] == {"appends": 2, "fallbacks": 1}
    close(app)


def test_a_copy_into_a_file_closed_meanwhile_waits_for_sqlite_instead(tmp_path, slow_sqlite):
    journal, _ = opened(tmp_path)
    appended = journal.write([task(1)], waited=True)
    appended.file.map.close()  # as a reset after a failure would, between the reservation and the copy
    journal.wait(appended)
    assert sqlite_seqs(tmp_path) == {1} and journal._intake.fallbacks == 1
    journal.close()


def test_the_intake_is_read_back_whatever_the_policy_now(tmp_path, slow_sqlite):
    """A node restarted with JOURNAL_SYNC=always finds what it acknowledged with off."""
    journal, _ = opened(tmp_path)
    acknowledge(journal, [task(1), task(2)])
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tmp_path.iterdir():
        if path.is_file() and path.name != "node.lock":
            (copy / path.name).write_bytes(path.read_bytes())
    journal.close()
    always = Journal(copy, sync="always")
    assert [t.seq for t in always.load().queued] == [1, 2]
    always.start()
    assert type(always.write([task(3)], waited=True)) is not Appended  # it appends to no intake itself
    always.close()
    assert intake_files(copy) == [] and sqlite_seqs(copy) == {1, 2, 3}


# ----------------------------------------------------------------------------- through a node
def test_a_failed_commit_loses_no_task_acknowledged_from_the_intake(tmp_path, slow_sqlite):
    """SQLite fails (an I/O error) with tasks only the intake holds: they stay queued through the
    read-back and reach SQLite with the next commit; after a restart they are there once."""
    app, client = node(tmp_path, lease_seconds=60)
    journal = journal_of(app)
    bodies = {enqueue(client, f"acknowledged {i}".encode()): f"acknowledged {i}".encode() for i in range(5)}
    assert len(sqlite_seqs(tmp_path)) == 1  # the first enqueue took the new counters to SQLite; not the others
    journal._conn = FailingCommit(journal._conn, sqlite3.OperationalError("injected: disk I/O error"))
    with pytest.raises(JournalError):
        journal.write([Completed(999, "r", 1.0)]).wait()  # the writer's commit, carrying them, fails
    assert journal.state() == "failed"
    answer = client.put("/enqueue?iterations=1", data=b"after")  # reads the file back first: a 503 for it
    assert answer.status_code == 503 and journal.state() == "ok"
    assert counts(client)[0] == 5 and sorted(t["id"] for t in claim(client, AUTH, "w1", max_tasks=10)) == sorted(bodies)
    assert complete(client, AUTH, "w1", [(i, sha512_result(b, 1)) for i, b in bodies.items()]) == 5
    close(app)
    app, client = node(tmp_path)
    assert counts(client) == (0, 0, 5, 5)
    for task_id, body in bodies.items():
        assert client.get(f"/status/{task_id}").get_json()["result"] == sha512_result(body, 1)
    close(app)
    assert intake_files(tmp_path) == []



def crash_copy(data_dir: Path) -> Path:
    """The files of ``data_dir`` as a kill -9 leaves them, in a new directory."""
    copy = data_dir / "copy"
    copy.mkdir()
    for path in data_dir.iterdir():
        if path.is_file() and path.name != "node.lock":
            (copy / path.name).write_bytes(path.read_bytes())
    return copy


def test_a_repaired_file_takes_back_from_the_intake_the_tasks_its_damage_lost(tmp_path, monkeypatch):
    """SQLite held every task and a damaged page loses some of them below its highest seq; the
    intake file still holds them (it goes only once sealed), so all come back, in order, once."""
    monkeypatch.setattr(journal_module, "INTAKE_DELAY", 0.0)
    journal, _ = opened(tmp_path)
    for start in range(1, 3001, 500):
        acknowledge(journal, [task(seq, os.urandom(200)) for seq in range(start, start + 500)])
    wait_for(lambda: len(sqlite_seqs(tmp_path)) == 3000, what="SQLite caught up")
    journal._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the main file
    copy = crash_copy(tmp_path)
    journal.close()
    assert len(intake_files(copy)) == 1
    db = copy / DB_NAME
    with open(db, "r+b") as f:
        f.seek(db.stat().st_size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)  # a page in the middle of the table
    crashed, recovered = opened(copy)
    assert any("could not be read" in note for note in recovered.skipped)
    assert [t.seq for t in recovered.queued] == list(range(1, 3001))
    wait_for(lambda: sqlite_seqs(copy) == set(range(1, 3001)), what="the lost rows back in SQLite")
    crashed.close()
    assert intake_files(copy) == []
    again, recovered = opened(copy)
    assert [t.seq for t in recovered.queued] == list(range(1, 3001))
    again.close()


def test_erase_counts_the_tasks_only_the_intake_holds(tmp_path, slow_sqlite):
    journal, _ = opened(tmp_path)
    acknowledge(journal, [task(1), task(2)])
    journal.write([Completed(1, "r1", 5.0)]).wait()  # the writer's commit. SQLite: 1 completed, 2 queued
    acknowledge(journal, [task(3), task(4)])  # the intake only
    copy = crash_copy(tmp_path)
    journal.close()
    assert erase(copy) == {"queued": 3, "results": 1, "failed": 0}
    assert list(copy.iterdir()) == [copy / "node.lock"]


class CommitFailsOnce:
    """An SQLite connection whose next COMMIT fails (a full disk), as ``_connect`` gives it."""

    def __init__(self, conn) -> None:
        self._conn, self.failed = conn, False

    def execute(self, sql, *args):
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("injected: database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_a_read_back_whose_commit_fails_still_starts_and_goes_into_sqlite_with_the_first_commit(
        tmp_path, slow_sqlite, monkeypatch):
    journal, _ = opened(tmp_path)
    acknowledge(journal, [task(1), task(2), task(3)])
    journal.wait(journal.write([Completed(1, "r1", 5.0, True)], waited=True))
    copy = crash_copy(tmp_path)
    journal.close()
    connect = Journal._connect
    wrapped = []
    monkeypatch.setattr(Journal, "_connect", lambda self: wrapped.append(CommitFailsOnce(connect(self))) or wrapped[-1])
    crashed, recovered = opened(copy)
    assert wrapped[0].failed and sqlite_seqs(copy) == set()  # the node has them; SQLite not yet
    assert [t.seq for t in recovered.queued] == [2, 3] and [(t.seq, t.checked) for t in recovered.completed] == [(1, True)]
    wait_for(lambda: sqlite_seqs(copy) == {1, 2, 3}, what="the first commit")  # made at once after the start
    crashed.close()
    assert intake_files(copy) == []
    monkeypatch.setattr(Journal, "_connect", connect)
    again, recovered = opened(copy)
    assert [t.seq for t in recovered.queued] == [2, 3] and [(t.seq, t.result) for t in recovered.completed] == [(1, "r1")]
    again.close()
