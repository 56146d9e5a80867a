"""A journal that cannot write fails loudly (issue 19 item 5): a failed commit (a full disk, a
writer that raises or dies or hangs) is a 503 ``journal_unavailable`` within JOURNAL_WAIT_SECONDS,
the node's memory goes back to what the file holds, ``/health`` says so, and the writer takes
writes again once the file is read back. Nodes through the Flask test client, as test_durable."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from nodeapp.store.journal import Counters
from tests.test_api import assert_error, claim, complete, enqueue, sha512_result
from tests.test_durable import AUTH, close, node

def journal_of(app):
    return app.extensions["nodeapp"].node.tasks.journal


def in_thread(call, seconds: float):
    """``call()``'s value, or AssertionError if it has not returned within ``seconds`` (a hang)."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"no answer within {seconds:g}s: the request hangs"
    return out[0]


def wait_for_health(client, status: int, seconds: float = 10):
    """``GET /health`` once it answers ``status``."""
    deadline = time.monotonic() + seconds
    while (health := client.get("/health")).status_code != status:
        assert time.monotonic() < deadline, f"/health did not answer {status} within {seconds:g}s"
        time.sleep(0.02)
    return health


def fill_disk(journal, spare_pages: int = 12) -> None:
    """Cap the file a few pages above its size now: SQLite's ``max_page_count``, as a full disk."""
    with journal._io:
        pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
        journal._conn.execute(f"PRAGMA max_page_count = {pages + spare_pages}")


def free_disk(journal) -> None:
    with journal._io:
        journal._conn.execute("PRAGMA max_page_count = 1073741823")


def intake_full(journal) -> None:
    """The intake takes no more tasks, as when no intake file can be made on a full disk: its
    current file is used up and new ones would be made where none can be (the OSError a full disk
    gives), so an enqueue waits for SQLite's commit, as with JOURNAL_SYNC=always."""
    intake = journal._intake
    intake._current.end = intake.file_bytes
    intake._spare = None
    intake._made = lambda: None  # what it answers when the file cannot be made (the files there are still read)


def counts(client) -> tuple[int, int, int, int]:
    stats = client.get("/stats").get_json()
    return stats["queued"], stats["running"], stats["completed"], stats["enqueued"]


def test_disk_full_a_503_and_memory_agrees_with_the_file(tmp_path):
    app, client = node(tmp_path, lease_seconds=60)
    held = enqueue(client, b"held")
    assert [t["id"] for t in claim(client, AUTH, "w1", max_tasks=1)] == [held]
    fill_disk(journal_of(app))
    # The intake full too, as a full disk leaves it once its current file is used up: each enqueue
    # waits for its own SQLite commit. (Else the 201s went on until the writer's next commit, up
    # to 100 ms later: the loop below could end first, and did once in a full run. A failure
    # behind tasks acknowledged from the intake: tests/test_intake.py.)
    intake_full(journal_of(app))
    accepted, answers = {}, []
    for i in range(200):  # 3 KiB bodies: a page or so each, until the file may not grow
        body = os.urandom(3000)
        key = {"Idempotency-Key": f"key-{i}"}
        response = client.put("/enqueue?iterations=1", data=body, headers=key)
        answers.append(response.status_code)
        if response.status_code != 201:
            break
        accepted[response.get_json()["id"]] = body
    assert_error(response, 503, "journal_unavailable")
    assert answers.count(201) == len(accepted) >= 2  # the file did take some before it was full
    # The refused task is nowhere in memory: the queue is what got a 201, and the lease held survives.
    assert counts(client) == (len(accepted), 1, 0, len(accepted) + 1)
    assert client.get("/health").status_code == 200  # read back at once: the node takes writes again
    free_disk(journal_of(app))
    again = client.put("/enqueue?iterations=1", data=b"resent", headers=key)  # the key of a 503 was not kept
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    accepted[again.get_json()["id"]] = b"resent"
    leased = claim(client, AUTH, "w2", max_tasks=1000)
    assert sorted(t["id"] for t in leased) == sorted(accepted)
    assert complete(client, AUTH, "w1", [(held, sha512_result(b"held", 1))]) == 1
    assert complete(client, AUTH, "w2", [(i, sha512_result(b, 1)) for i, b in accepted.items()]) == len(accepted)
    before = counts(client)
    close(app)

    app, client = node(tmp_path)
    assert counts(client) == before == (0, 0, len(accepted) + 1, len(accepted) + 1)
    for task_id, body in accepted.items():
        assert client.get(f"/status/{task_id}").get_json()["result"] == sha512_result(body, 1)
    close(app)


class FailingCommit:
    """The journal's connection, whose next commit raises ``error`` (once): a ``COMMIT``, or the
    one statement that is an enqueue's whole transaction."""

    def __init__(self, conn, error: BaseException) -> None:
        self._conn, self.error = conn, error

    def execute(self, sql, *args):
        if (sql == "COMMIT" or sql.startswith("INSERT INTO tasks")) and self.error is not None:
            error, self.error = self.error, None
            raise error
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_an_error_not_from_sqlite_is_a_503_and_the_writer_goes_on(tmp_path):
    app, client = node(tmp_path, journal_wait_seconds=30)
    first = enqueue(client)
    journal = journal_of(app)
    journal._conn = FailingCommit(journal._conn, RuntimeError("injected: not an SQLite error"))
    intake_full(journal)
    started = time.monotonic()
    response = in_thread(lambda: client.put("/enqueue?iterations=1", data=b"lost"), 20)
    assert_error(response, 503, "journal_unavailable")
    assert time.monotonic() - started < 10  # failed at once, not after JOURNAL_WAIT_SECONDS
    assert counts(client)[:2] == (1, 0) and journal.failures == 1
    second = enqueue(client)  # the same writer takes writes again
    assert journal._thread.is_alive() and client.get("/health").get_json()["journal"] == "ok"
    close(app)
    app, client = node(tmp_path)
    assert sorted(t["id"] for t in claim(client, AUTH, "w", max_tasks=10)) == sorted([first, second])
    close(app)


class WriterKilled(BaseException):
    """Escapes every ``except Exception``: ends the writer thread as a defect in its loop would."""


SYNCS = pytest.mark.parametrize("sync", ["off", "batch"])  # a request may make its own commit; or never


class DyingCommit:
    """A ``_commit`` that holds the writer until ``release`` is set, then ends its thread."""

    def __init__(self) -> None:
        self.release, self.entered = threading.Event(), threading.Event()

    def __call__(self, records, lsn=None):
        self.entered.set()
        self.release.wait(30)
        raise WriterKilled()


@SYNCS
def test_a_dead_writer_is_seen_answered_503_and_restarted(tmp_path, sync):
    app, client = node(tmp_path, journal_sync=sync, journal_wait_seconds=5)
    first = enqueue(client)
    journal = journal_of(app)
    writer, real_commit = journal._thread, journal._commit
    journal._commit = dying = DyingCommit()
    if sync == "off":
        intake_full(journal)
    journal.write([Counters({})])  # the writer thread takes it (nobody waits for it) and holds on
    assert dying.entered.wait(10)
    answer: list = []
    waiting = threading.Thread(target=lambda: answer.append(client.put("/enqueue?iterations=1", data=b"lost")))
    waiting.start()  # its record waits behind the commit in progress
    deadline = time.monotonic() + 10
    while not journal._pending:
        assert time.monotonic() < deadline, "the request's record never reached the journal"
        time.sleep(0.01)
    journal._commit = real_commit
    started = time.monotonic()
    dying.release.set()
    waiting.join(10)
    assert_error(answer[0], 503, "journal_unavailable")
    assert time.monotonic() - started < 5  # at once, not after JOURNAL_WAIT_SECONDS
    writer.join(5)
    assert not writer.is_alive()
    assert journal._thread is not writer and journal._thread.is_alive()  # a new writer, after the read-back
    assert counts(client)[:2] == (1, 0)

    # A writer that dies with no request waiting on it: /health says so before anyone writes.
    writer = journal._thread
    journal._conn = FailingCommit(journal._conn, WriterKilled())
    journal.write([Counters({})])
    writer.join(5)
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["journal"] == "failed"
    assert health.get_json()["status"] == "journal_unavailable"
    assert client.get("/stats").get_json()["journal"]["state"] == "failed"
    assert_error(in_thread(lambda: client.put("/enqueue?iterations=1", data=b"refused"), 10), 503,
                 "journal_unavailable")  # its change is undone with the read-back; the writer restarts
    second = enqueue(client)
    assert client.get("/health").status_code == 200 and journal.failures == 2
    close(app)
    app, client = node(tmp_path)
    assert sorted(t["id"] for t in claim(client, AUTH, "w", max_tasks=10)) == sorted([first, second])
    close(app)


@SYNCS
def test_a_stuck_commit_is_a_503_after_journal_wait_seconds(tmp_path, sync):
    """The request whose thread makes the stuck commit (``off``: the first, made in its own
    thread) waits for the disk; every other one is answered within JOURNAL_WAIT_SECONDS."""
    app, client = node(tmp_path, journal_sync=sync, journal_wait_seconds=0.5)
    enqueue(client)
    journal = journal_of(app)
    if sync == "off":
        intake_full(journal)
    release, entered = threading.Event(), threading.Event()
    real_commit = journal._commit

    def stuck(records, lsn=None):  # a disk that does not answer, until released
        entered.set()
        release.wait(30)
        return real_commit(records, lsn)

    journal._commit = stuck
    first: list = []
    making = threading.Thread(target=lambda: first.append(client.put("/enqueue?iterations=1", data=b"making")))
    making.start()
    assert entered.wait(10)
    started = time.monotonic()
    assert_error(in_thread(lambda: client.put("/enqueue?iterations=1", data=b"late"), 10), 503,
                 "journal_unavailable")
    assert 0.5 <= time.monotonic() - started < 5
    # The commit began at most a moment before the request's wait: it is stuck from then on.
    health = wait_for_health(client, 503)
    assert health.get_json()["journal"] == "stuck" and client.get("/stats").get_json()["journal"]["state"] == "stuck"
    journal._commit = real_commit
    release.set()
    making.join(10)
    assert first[0].status_code == (201 if sync == "off" else 503)
    wait_for_health(client, 200)
    # Both late commits did land: the tasks they answered 503 for are queued, in memory as in the file.
    enqueue(client)
    assert counts(client)[0] == 4
    close(app)
    app, client = node(tmp_path)
    assert counts(client)[0] == 4
    close(app)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root only, where mounting is allowed): a disk that really fills up."""
    path = tmp_path / "tiny"
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and a mount permission)")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_really_full_disk_a_503_and_memory_agrees_with_the_file(tiny_disk):
    app, client = node(tiny_disk)
    accepted = {}
    for _ in range(1000):  # 3 KiB bodies until the tmpfs is full
        body = os.urandom(3000)
        response = client.put("/enqueue?iterations=1", data=body)
        if response.status_code != 201:
            break
        accepted[response.get_json()["id"]] = body
    assert_error(response, 503, "journal_unavailable")
    assert len(accepted) >= 2 and counts(client) == (len(accepted), 0, 0, len(accepted))
    assert subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)]).returncode == 0  # room again
    extra = enqueue(client, b"after")
    accepted[extra] = b"after"
    leased = claim(client, AUTH, "w", max_tasks=1000)
    assert sorted(t["id"] for t in leased) == sorted(accepted)
    assert complete(client, AUTH, "w", [(i, sha512_result(b, 1)) for i, b in accepted.items()]) == len(accepted)
    close(app)
    app, client = node(tiny_disk)
    assert counts(client) == (0, 0, len(accepted), len(accepted))
    for task_id, body in accepted.items():
        assert client.get(f"/status/{task_id}").get_json()["result"] == sha512_result(body, 1)
    close(app)
