"""The journal on its own: what it writes comes back after a close, a kill -9, a torn WAL or a
damaged file; one process per DATA_DIR; group commit; bounded size."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nodeapp.store import journal as journal_module
from nodeapp.store.checkpoints import Checkpoint
from nodeapp.store.journal import (
    DB_NAME, Accepted, Checkpointed, Completed, Counters, DataDirInUse, Failed, Journal, JournalError, Trimmed,
    erase,
)
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def opened(path, **kwargs) -> tuple[Journal, object]:
    journal = Journal(path, **kwargs)
    recovered = journal.load()
    journal.start()
    return journal, recovered


def accepted(seq: int, body: bytes = b"body") -> Accepted:
    return Accepted(seq, f"task-{seq}", seq % 7 + 1, body, 1000.0 + seq)


def test_everything_written_comes_back_after_close(tmp_path):
    journal, recovered = opened(tmp_path)
    assert (recovered.queued, recovered.completed, recovered.failed, recovered.counters) == ([], [], [], {})
    journal.write([accepted(seq) for seq in range(1, 7)] + [Counters({"enqueued": 6})]).wait()
    journal.write([Completed(2, "r2", 2000.0), Completed(4, "r4", 1999.0),
                   Counters({"enqueued": 6, "completed": 1}), Counters({"enqueued": 6, "completed": 2})]).wait()
    journal.write([Failed(3, "lease expired 5 times", 2001.0), Failed(6, "cancelled by a client", 2002.0, True),
                   Counters({"failed": 1})]).wait()
    journal.write([Trimmed(4)]).wait()
    journal.close()

    journal, recovered = opened(tmp_path)
    assert [t.id for t in recovered.queued] == ["task-1", "task-5"]  # submission order
    assert [(t.iterations, t.body, t.enqueued_at) for t in recovered.queued] == [(2, b"body", 1001.0), (6, b"body", 1005.0)]
    assert [(t.id, t.result, t.done_at, t.body) for t in recovered.completed] == [("task-2", "r2", 2000.0, None)]
    assert [(t.id, t.reason, t.body, t.cancelled) for t in recovered.failed] == [
        ("task-3", "lease expired 5 times", None, False), ("task-6", "cancelled by a client", None, True)]
    assert recovered.counters == {"enqueued": 6, "completed": 2, "failed": 1}  # the newest values of each
    assert recovered.last_seq == 6
    assert recovered.skipped == []
    journal.close()


def test_completed_oldest_first_and_empty_body_kept(tmp_path):
    journal, _ = opened(tmp_path)
    journal.write([accepted(1, b""), accepted(2), accepted(3)]).wait()
    journal.write([Completed(3, "c", 10.0), Completed(2, "b", 20.0)]).wait()
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [t.seq for t in recovered.completed] == [3, 2]
    assert recovered.queued[0].body == b""
    journal.close()


def test_done_tasks_drop_their_body(tmp_path):
    journal, _ = opened(tmp_path)
    journal.write([accepted(1, b"x" * 10_000), accepted(2, b"y" * 10_000)]).wait()
    journal.write([Completed(1, "r", 5.0), Failed(2, "why", 6.0)]).wait()
    journal.close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM tasks WHERE body IS NOT NULL").fetchone() == (0,)


def test_last_seq_survives_trimming_of_the_newest_task(tmp_path):
    journal, _ = opened(tmp_path)
    journal.write([accepted(1), accepted(2), Completed(2, "r", 1.0), Trimmed(2)]).wait()
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [t.seq for t in recovered.queued] == [1]
    assert recovered.last_seq == 2  # a new task must not take seq 2 again
    journal.close()


def test_last_seq_survives_trimming_of_the_newest_task_in_a_later_commit_and_run(tmp_path):
    """An enqueue's commit writes no ``last_seq``: the trim that deletes the newest row does,
    from what the journal read back at start and wrote since."""
    journal, _ = opened(tmp_path)
    journal.write([accepted(1), accepted(2)]).wait()
    journal.close()
    journal, recovered = opened(tmp_path)
    assert recovered.last_seq == 2
    journal.write([accepted(3)]).wait()
    journal.write([Completed(2, "r", 1.0), Completed(3, "r", 1.0)]).wait()
    journal.write([Trimmed(3), Trimmed(2)]).wait()
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [t.seq for t in recovered.queued] == [1] and recovered.completed == []
    assert recovered.last_seq == 3
    journal.close()


def test_the_newest_checkpoint_of_a_queued_task_comes_back_and_ends_with_the_task(tmp_path):
    journal, _ = opened(tmp_path)
    journal.write([Accepted(seq, f"task-{seq}", 1000, b"body", 1.0) for seq in (1, 2, 3, 4)]).wait()
    journal.write([Checkpointed(1, 300, "a" * 128), Checkpointed(1, 600, "b" * 128), Checkpointed(2, 100, "c" * 128),
                   Checkpointed(3, 200, "d" * 128), Checkpointed(4, 400, "e" * 128)]).wait()
    journal.write([Checkpointed(2, 50, "f" * 128),  # behind the one kept (a reordered write): ignored
                   Completed(3, "r", 5.0), Failed(4, "cancelled by a client", 6.0, True)]).wait()
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [(t.seq, t.checkpoint) for t in recovered.queued] == [
        (1, Checkpoint(600, "b" * 128)), (2, Checkpoint(100, "c" * 128))]
    assert [t.checkpoint for t in recovered.completed + recovered.failed] == [None, None]
    journal.write([Checkpointed(3, 700, "a" * 128)]).wait()  # a late one for a completed task: not kept
    journal.close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("SELECT seq FROM tasks WHERE ckpt_done IS NOT NULL ORDER BY seq").fetchall() == [(1,), (2,)]


def test_a_damaged_checkpoint_is_dropped_and_its_task_kept(tmp_path):
    journal, _ = opened(tmp_path)
    journal.write([accepted(1), accepted(2), Checkpointed(1, 1, "a" * 128), Checkpointed(2, 1, "not hex")]).wait()
    journal.close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE tasks SET ckpt_done = 'x' WHERE seq = 1")
    journal, recovered = opened(tmp_path)
    assert [(t.seq, t.checkpoint) for t in recovered.queued] == [(1, None), (2, None)]
    journal.close()


def test_a_file_of_the_first_version_gets_the_checkpoint_columns(tmp_path):
    with sqlite3.connect(tmp_path / DB_NAME) as conn:  # as the first version wrote it
        conn.executescript("""
            CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, iterations INTEGER NOT NULL,
                enqueued_at REAL NOT NULL, body BLOB, state INTEGER NOT NULL DEFAULT 0, result TEXT,
                done_at REAL, reason TEXT);
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
            INSERT INTO tasks (seq, id, iterations, enqueued_at, body) VALUES (1, 'old', 1000, 1.0, x'00');
            PRAGMA user_version = 1;""")
    journal, recovered = opened(tmp_path)
    assert [(t.id, t.checkpoint) for t in recovered.queued] == [("old", None)]
    journal.write([Checkpointed(1, 500, "a" * 128)]).wait()
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [(t.id, t.checkpoint) for t in recovered.queued] == [("old", Checkpoint(500, "a" * 128))]
    journal.close()


@pytest.mark.parametrize("sync, level", [("batch", 2), ("always", 2), ("off", 1)])
def test_sync_policy_sets_sqlite_synchronous(tmp_path, sync, level):
    journal, _ = opened(tmp_path, sync=sync, batch_ms=2)
    assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == level  # FULL = 2, NORMAL = 1
    assert journal._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    journal.write([accepted(1)]).wait()
    assert journal.info()["sync"] == sync and journal.info()["durable"] is True
    journal.close()


def test_bad_sync_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sync must be one of batch, always, off"):
        Journal(tmp_path, sync="sometimes")


@pytest.fixture
def short_lock_wait(monkeypatch):
    monkeypatch.setattr(journal_module, "LOCK_WAIT", 0.3)


def test_second_user_of_a_data_dir_is_refused_with_one_line(tmp_path, short_lock_wait):
    journal, _ = opened(tmp_path)
    with pytest.raises(DataDirInUse) as refused:
        Journal(tmp_path)
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path) in message and f"pid {os.getpid()}" in message
    journal.close()
    Journal(tmp_path).close()  # free again once closed


def test_a_lock_let_go_within_the_wait_is_taken(tmp_path):
    first, _ = opened(tmp_path)
    threading.Timer(0.5, first.close).start()  # a node on its way out
    second, _ = opened(tmp_path)  # waits for it (LOCK_WAIT), then starts
    second.close()


def test_lock_held_by_another_process(tmp_path, short_lock_wait):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from nodeapp.store.journal import Journal; Journal(sys.argv[1]); "
                               "print('locked', flush=True); sys.stdin.read()", str(tmp_path)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirInUse, match=f"pid {holder.pid}"):
            Journal(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    Journal(tmp_path).close()  # the kernel released the lock with the process


KILLED_WRITER = """
import os, signal, sys
from nodeapp.store.journal import Journal, Accepted, Completed, Counters
journal = Journal(sys.argv[1], sync=sys.argv[2])
journal.load()
journal.start()
for seq in range(1, 101):
    journal.write([Accepted(seq, f"t{seq}", 1, b"b" * 100, float(seq)), Counters({"enqueued": seq})]).wait()
    if seq % 3 == 0:
        journal.write([Completed(seq, f"r{seq}", float(seq))]).wait()
print("durable", flush=True)
journal.write([Accepted(101, "not-waited", 1, b"", 0.0)])  # may or may not make it
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("sync", ["batch", "always", "off"])
def test_kill_9_keeps_every_acknowledged_record(tmp_path, sync):
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path), sync], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -9 and run.stdout.strip() == "durable", run.stderr
    assert Path(f"{tmp_path / DB_NAME}-wal").exists()  # no clean close happened
    journal, recovered = opened(tmp_path)
    queued = {t.seq for t in recovered.queued} - {101}
    assert queued == {seq for seq in range(1, 101) if seq % 3}
    assert {t.result for t in recovered.completed} == {f"r{seq}" for seq in range(3, 101, 3)}
    assert recovered.counters["enqueued"] == 100
    assert recovered.skipped == []
    journal.close()


def crashed_copy(journal: Journal, target: Path) -> Path:
    """The files of an open journal as a crash would leave them (the WAL not checkpointed)."""
    target.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{journal.path}{suffix}", target / f"{DB_NAME}{suffix}")
    return target


def test_torn_last_write_in_the_wal_is_skipped_and_logged(tmp_path, caplog):
    journal, _ = opened(tmp_path / "live")
    journal._conn.execute("PRAGMA wal_autocheckpoint=0")  # keep every frame in the WAL for the test
    for seq in range(1, 11):
        journal.write([accepted(seq)]).wait()
    before_last = Path(f"{journal.path}-wal").stat().st_size
    journal.write([accepted(seq, b"z" * 20_000) for seq in range(11, 14)]).wait()  # several frames
    copy = crashed_copy(journal, tmp_path / "crashed")
    journal.close()
    wal = copy / f"{DB_NAME}-wal"
    size = wal.stat().st_size
    with open(wal, "r+b") as f:
        f.truncate(before_last + (size - before_last) // 2)  # the last commit cut halfway

    caplog.set_level(logging.WARNING, logger="nodeapp.store.journal")
    journal, recovered = opened(copy)
    assert [t.seq for t in recovered.queued] == list(range(1, 11))
    assert len(recovered.skipped) == 1 and "unfinished" in recovered.skipped[0]
    assert "the last write was unfinished" in caplog.text
    journal.write([accepted(11)]).wait()  # and it goes on writing
    journal.close()
    journal, recovered = opened(copy)
    assert [t.seq for t in recovered.queued] == list(range(1, 12))
    journal.close()


def filled(path: Path, count: int) -> None:
    journal, _ = opened(path)
    for start in range(1, count + 1, 500):
        journal.write([accepted(seq, os.urandom(200)) for seq in range(start, min(count + 1, start + 500))]).wait()
    journal.write([Counters({"enqueued": count})]).wait()
    journal.close()  # checkpointed: everything is in the main file


def test_a_repaired_file_keeps_each_tasks_priority_times_and_owner(tmp_path):
    """The rows copied out of a damaged file keep every column a task came back with, not only
    the first version's: a queued task keeps its priority, not_before, deadline and owner."""
    journal, _ = opened(tmp_path)
    for start in range(1, 3001, 500):
        journal.write([Accepted(seq, f"task-{seq}", 1, os.urandom(200), 1000.0 + seq, seq % 10, 5000.0 + seq,
                                9000.0 + seq, f"key{seq % 3}") for seq in range(start, start + 500)]).wait()
    journal.close()
    db = tmp_path / DB_NAME
    with open(db, "r+b") as f:
        f.seek(db.stat().st_size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)
    journal, recovered = opened(tmp_path)
    assert 2000 < len(recovered.queued) < 3000 and any("could not be read" in n for n in recovered.skipped)
    for task in recovered.queued:
        assert (task.priority, task.not_before, task.deadline, task.owner) == (
            task.seq % 10, 5000.0 + task.seq, 9000.0 + task.seq, f"key{task.seq % 3}"), task
    journal.close()


def test_damaged_page_skips_its_rows_and_keeps_the_rest(tmp_path, caplog):
    filled(tmp_path, 3000)
    db = tmp_path / DB_NAME
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)  # one page in the middle of the table, garbage
    caplog.set_level(logging.WARNING, logger="nodeapp.store.journal")
    journal, recovered = opened(tmp_path)
    seqs = [t.seq for t in recovered.queued]
    assert 2000 < len(seqs) < 3000
    assert seqs == sorted(seqs) and seqs[0] == 1 and seqs[-1] == 3000
    assert any("skipped unreadable task rows" in note for note in recovered.skipped)
    assert "could not be read" in caplog.text
    assert recovered.last_seq == 3000 and recovered.counters == {"enqueued": 3000}
    assert list(tmp_path.glob(f"{DB_NAME}.damaged-*"))  # kept for a person to look at
    journal.write([accepted(3001)]).wait()
    journal.close()
    journal, again = opened(tmp_path)
    assert [t.seq for t in again.queued] == seqs + [3001] and again.skipped == []
    journal.close()


def test_truncated_file_keeps_what_is_before_the_cut(tmp_path):
    filled(tmp_path, 3000)
    db = tmp_path / DB_NAME
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size * 2 // 3 // 4096 * 4096)
    journal, recovered = opened(tmp_path)
    seqs = [t.seq for t in recovered.queued]
    assert 0 < len(seqs) < 3000 and seqs == list(range(1, len(seqs) + 1))
    assert recovered.skipped
    journal.close()


def test_garbage_file_starts_empty(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not a database " * 500)
    journal, recovered = opened(tmp_path)
    assert recovered.queued == [] and recovered.skipped
    journal.write([accepted(1)]).wait()
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [t.seq for t in recovered.queued] == [1]
    journal.close()


def test_concurrent_writers_share_commits(tmp_path):
    journal, _ = opened(tmp_path, sync="batch", batch_ms=5)
    threads, per_thread = 8, 100

    def writer(k: int) -> None:
        for i in range(per_thread):
            journal.write([accepted(k * per_thread + i + 1)]).wait()

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert journal.records_written == threads * per_thread
    assert journal.commits < threads * per_thread / 2  # group commit: many records per transaction
    journal.close()


def test_write_blocks_while_the_writer_is_behind(tmp_path):
    journal = Journal(tmp_path, max_pending=2)
    journal.load()
    gate, commit = threading.Event(), journal._commit
    journal._commit = lambda records, lsn=None: (gate.wait(), commit(records, lsn))[1]  # a slow disk
    journal.write([accepted(1), accepted(2)])
    wait_for(lambda: journal._pending == 0, what="the writer to take the first records")
    journal.write([accepted(3), accepted(4)])  # max_pending records wait now
    done = threading.Event()
    blocked = threading.Thread(target=lambda: (journal.write([accepted(5)]).wait(), done.set()))
    blocked.start()
    assert not done.wait(0.2) and blocked.is_alive()
    gate.set()
    assert done.wait(30)
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [t.seq for t in recovered.queued] == [1, 2, 3, 4, 5]
    journal.close()


def test_a_failed_commit_refuses_writes_until_the_file_is_read_back(tmp_path):
    journal, _ = opened(tmp_path)
    journal.write([accepted(1)]).wait()
    with pytest.raises(JournalError, match="journal write failed"):
        journal.write([accepted(1)]).wait()  # the same seq twice: the commit fails as a whole
    assert journal.state() == "failed" and "UNIQUE" in journal.failure
    with pytest.raises(JournalError, match="refuses writes"):  # its owner's memory is ahead of the file
        journal.write([accepted(2)])
    assert [t.seq for t in journal.reload().queued] == [1]  # what the file holds, to put memory back to
    assert journal.state() == "ok" and journal.reload() is None
    journal.write([accepted(2)]).wait()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.write([accepted(3)])
    journal, recovered = opened(tmp_path)
    assert [t.seq for t in recovered.queued] == [1, 2]
    journal.close()


def test_close_commits_what_waits(tmp_path):
    journal, _ = opened(tmp_path, sync="batch", batch_ms=50)
    commits = [journal.write([accepted(seq)]) for seq in range(1, 50)]
    journal.close()
    assert all(c.done and c.error is None for c in commits)
    assert not Path(f"{journal.path}-wal").exists() or Path(f"{journal.path}-wal").stat().st_size == 0


def test_size_stays_bounded_under_steady_load(tmp_path):
    """Tasks accepted, completed, and trimmed beyond a retention of 1,000: the file stops growing
    (the WAL grows to SQLite's checkpoint size, ~4 MB, then is reused)."""
    journal, _ = opened(tmp_path, sync="off")
    retention, sizes, seq = 1000, [], 0
    for _ in range(30):
        batch = []
        for _ in range(1000):
            seq += 1
            batch += [accepted(seq, b"b" * 100), Completed(seq, "r" * 128, float(seq))]
            if seq > retention:
                batch.append(Trimmed(seq - retention))
        journal.write(batch).wait()
        sizes.append(journal.size_bytes())
    journal.close()
    # Past the WAL's checkpoint size the file stops growing. The WAL may still take in one more
    # transaction's pages once (its size after a checkpoint is the largest it needed: the rows'
    # layout decides when), so the slack is one batch: what the first batch added.
    step = sizes[1] - sizes[0]
    assert len(set(sizes[-8:])) == 1 and max(sizes[20:]) <= max(sizes[:20]) + step, sizes
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (retention,)


def test_erase_counts_what_it_deletes(tmp_path):
    journal, _ = opened(tmp_path)
    journal.write([accepted(seq) for seq in range(1, 8)]).wait()
    journal.write([Completed(1, "a" * 128, 5.0), Completed(2, "b" * 128, 5.0), Failed(3, "why", 6.0),
                   Failed(4, "cancelled by a client", 6.0, True)]).wait()
    journal.close()
    assert erase(tmp_path) == {"queued": 3, "results": 2, "failed": 2}


def test_erase_deletes_the_journal_unless_a_node_uses_it(tmp_path):  # erase does not wait
    journal, _ = opened(tmp_path)
    journal.write([accepted(1)]).wait()
    with pytest.raises(DataDirInUse):
        erase(tmp_path)
    journal.close()
    (tmp_path / "history.json").write_text("{}")  # the chart's samples go with it, when named
    (tmp_path / "other").write_text("{}")
    assert erase(tmp_path, also=("history.json",)) == {"queued": 1, "results": 0, "failed": 0}
    assert not list(tmp_path.glob(f"{DB_NAME}*")) and not (tmp_path / "history.json").exists()
    assert (tmp_path / "other").exists()
    assert erase(tmp_path) is None and erase(tmp_path / "missing") is None
    journal, recovered = opened(tmp_path)
    assert recovered.queued == []
    journal.close()


@pytest.mark.parametrize("sqlite_version", [None, (3, 31, 0)])  # UPDATE ... FROM, or a statement per row before 3.33
def test_many_results_in_one_commit_each_land_on_their_own_row(tmp_path, monkeypatch, sqlite_version):
    if sqlite_version:
        monkeypatch.setattr(journal_module.sqlite3, "sqlite_version_info", sqlite_version)
    journal, _ = opened(tmp_path)
    journal.write([accepted(seq) for seq in range(1, 301)]).wait()
    checked = {0: None, 1: True, 2: False}
    journal.write([Completed(seq, f"{seq:0128x}", 2000.0 + seq, checked[seq % 3]) for seq in range(300, 50, -2)]).wait()
    journal.close()
    journal, recovered = opened(tmp_path)
    assert [(t.seq, t.result, t.done_at, t.checked, t.body) for t in recovered.completed] == [
        (seq, f"{seq:0128x}", 2000.0 + seq, checked[seq % 3], None) for seq in range(52, 301, 2)]
    assert [t.seq for t in recovered.queued] == [seq for seq in range(1, 301) if seq < 52 or seq % 2]
    journal.close()
