"""Spot-checks across a journal failure (docs/durability.md, docs/verification.md): the results
held for a check when the memory is read back stay held and are settled (or, if the journal never
had their task, dropped), and results posted afterwards are still checked. Journals fail as in
test_journal_failure.py; nodes through the Flask test client."""

from __future__ import annotations

import sqlite3
import threading
import time

from nodeapp.store.journal import Counters
from tests.helpers import wait_for
from tests.test_api import assert_error, claim, complete, enqueue, sha512_result
from tests.test_durable import AUTH, close, node
from tests.test_journal_failure import DyingCommit, FailingCommit, WriterKilled, in_thread, intake_full, journal_of
from tests.test_verification import chain_with_marks
from tmcommon.marks import positions


def checked_node(tmp_path, **settings):
    """A journaled node that checks every result (VERIFY_ITERATIONS above every task here, no
    probation); a check runs only once the event returned is set."""
    app, client = node(tmp_path, verify_iterations=10**6, verify_probation=0, lease_seconds=60, **settings)
    checker = app.extensions["nodeapp"].node.checker
    gate, run = threading.Event(), checker._run
    checker._run = lambda check: gate.wait(30) and run(check)
    return app, client, gate


def status(client, task_id: str) -> dict:
    return client.get(f"/status/{task_id}").get_json()


def completed_with(client, task_id: str, body: bytes, iterations: int) -> bool:
    record = status(client, task_id)
    return record["state"] == "completed" and record["result"] == sha512_result(body, iterations)


def fail_next_commit(app, client) -> None:
    """The next commit fails (an I/O error; the intake's appends too); the enqueue that made it is answered 503."""
    journal = journal_of(app)
    failures = journal.failures
    journal._conn = FailingCommit(journal._conn, sqlite3.OperationalError("injected: disk I/O error"))
    intake_full(journal)
    assert_error(in_thread(lambda: client.put("/enqueue?iterations=1", data=b"lost"), 20), 503,
                 "journal_unavailable")
    assert journal.failures == failures + 1


def test_a_result_held_when_the_journal_fails_is_settled_and_later_results_are_still_checked(tmp_path):
    app, client, gate = checked_node(tmp_path)
    the_node = app.extensions["nodeapp"].node
    held = enqueue(client, b"held", 1000)
    claim(client, AUTH, "w1")
    assert complete(client, AUTH, "w1", [(held, sha512_result(b"held", 1000))]) == 1
    assert status(client, held).get("checking") is True
    fail_next_commit(app, client)
    record = status(client, held)
    assert (record["state"], record.get("checking")) == ("running", True)  # still held, its check still due
    gate.set()
    wait_for(lambda: status(client, held)["state"] == "completed", timeout=20, what="the held result settled")
    assert completed_with(client, held, b"held", 1000) and status(client, held)["spot_checked"] is True

    # After the failure, a right result is checked and accepted, a wrong one refused and its worker caught.
    right, wrong = enqueue(client, b"right", 1000), enqueue(client, b"wrong", 1000)
    assert [t["id"] for t in claim(client, AUTH, "w2", max_tasks=1)] == [right]
    assert [t["id"] for t in claim(client, AUTH, "w3", max_tasks=1)] == [wrong]
    assert complete(client, AUTH, "w2", [(right, sha512_result(b"right", 1000))]) == 1
    assert complete(client, AUTH, "w3", [(wrong, "00" * 64)]) == 1
    wait_for(lambda: the_node.checker.idle() and "w3" in the_node.quarantine, timeout=20, what="the checks")
    assert completed_with(client, right, b"right", 1000) and status(client, right)["spot_checked"] is True
    assert status(client, wrong)["state"] == "queued" and "w2" not in the_node.quarantine
    close(app)
    app, client = node(tmp_path)  # in the file as in memory
    assert completed_with(client, held, b"held", 1000) and completed_with(client, right, b"right", 1000)
    assert status(client, wrong)["state"] == "queued"
    close(app)


def test_a_result_held_when_its_completion_batch_is_refused_is_still_checked(tmp_path):
    """/complete brings a held result and an unchecked one (past VERIFY_MAX_PENDING) while the
    writer is dead: the write is refused (503), and the held one is handed to the checker anyway."""
    app, client, gate = checked_node(tmp_path, verify_max_pending=1500)
    gate.set()
    the_node = app.extensions["nodeapp"].node
    first, second = enqueue(client, b"first", 1000), enqueue(client, b"second", 1000)
    claim(client, AUTH, "w1", max_tasks=2)
    journal = journal_of(app)
    writer = journal._thread
    journal._conn = FailingCommit(journal._conn, WriterKilled())
    journal.write([Counters({})])
    writer.join(5)
    assert not writer.is_alive()
    results = [{"id": i, "result": sha512_result(b, 1000)} for i, b in [(first, b"first"), (second, b"second")]]
    assert_error(client.post("/complete", json={"worker_id": "w1", "results": results}, headers=AUTH), 503,
                 "journal_unavailable")
    wait_for(the_node.checker.idle, timeout=20, what="the check of the held result")
    assert completed_with(client, first, b"first", 1000) and status(client, first)["spot_checked"] is True
    assert status(client, second)["state"] == "queued"  # its completion was refused: it runs again
    assert [t["id"] for t in claim(client, AUTH, "w2")] == [second]
    assert complete(client, AUTH, "w2", [(second, sha512_result(b"second", 1000))]) == 1
    wait_for(lambda: completed_with(client, second, b"second", 1000), timeout=20, what="the second result")
    close(app)
    app, client = node(tmp_path)
    assert completed_with(client, first, b"first", 1000) and completed_with(client, second, b"second", 1000)
    close(app)


def test_a_result_held_for_a_task_the_journal_never_had_is_dropped_and_its_batch_settles(tmp_path):
    """A worker claims and completes a task whose acceptance is not durable yet; that commit
    fails: the task is gone, its held result with it, and the other result checked in the same
    batch is settled."""
    app, client, gate = checked_node(tmp_path)
    the_node = app.extensions["nodeapp"].node
    kept = enqueue(client, b"kept", 1000)
    journal = journal_of(app)
    real_commit = journal._commit
    journal._commit = dying = DyingCommit()
    journal.write([Counters({})])  # the writer takes it and holds on
    assert dying.entered.wait(10)
    intake_full(journal)  # the acceptance waits for SQLite's commit
    answer: list = []
    waiting = threading.Thread(target=lambda: answer.append(client.put("/enqueue?iterations=1000", data=b"gone")))
    waiting.start()
    deadline = time.monotonic() + 10
    while not journal._pending:
        assert time.monotonic() < deadline, "the acceptance never reached the journal"
        time.sleep(0.01)
    leased = [t["id"] for t in claim(client, AUTH, "w1", max_tasks=2)]
    assert len(leased) == 2 and leased[0] == kept  # the task not durable yet is leased too
    gone = leased[1]
    # one /complete: both checks are submitted together and settled in one batch, the lost task's first
    assert complete(client, AUTH, "w1", [(gone, sha512_result(b"gone", 1000)),
                                         (kept, sha512_result(b"kept", 1000))]) == 2
    journal._commit = real_commit
    dying.release.set()
    waiting.join(10)
    assert_error(answer[0], 503, "journal_unavailable")
    assert client.get(f"/status/{gone}").status_code == 404
    assert status(client, kept).get("checking") is True
    gate.set()
    wait_for(the_node.checker.idle, timeout=20, what="the batch of checks")
    assert completed_with(client, kept, b"kept", 1000) and status(client, kept)["spot_checked"] is True
    assert "w1" not in the_node.quarantine
    close(app)


def test_a_lease_resumed_from_a_checkpoint_is_checked_from_it_after_the_journal_fails(tmp_path):
    data, iterations, done = b"resumed", 60_000, 20_000
    app, client = node(tmp_path, lease_seconds=60)
    task = enqueue(client, data, iterations)
    claim(client, AUTH, "w1")
    client.post("/heartbeat", headers=AUTH, json={"worker_id": "w1", "task_ids": [task], "checkpoints": [
        {"id": task, "done": done, "digest": sha512_result(data, done)}]})
    close(app)
    app, client, gate = checked_node(tmp_path)  # restarted: the task is queued from its checkpoint
    gate.set()
    the_node = app.extensions["nodeapp"].node
    assert claim(client, AUTH, "w2")[0]["checkpoint"]["done"] == done
    fail_next_commit(app, client)  # the lease survives the read-back, with the checkpoint it began from
    result, marks = chain_with_marks(data, iterations)
    after = [mark for point, mark in zip(positions(iterations), marks, strict=True) if point > done]
    response = client.post("/complete", headers=AUTH, json={"worker_id": "w2", "results": [
        {"id": task, "result": result, "marks": after}]})
    assert response.get_json() == {"accepted": 1}
    wait_for(the_node.checker.idle, timeout=20, what="the check")
    assert "w2" not in the_node.quarantine and the_node.checker.counts().passed == 1
    assert completed_with(client, task, data, iterations) and status(client, task)["spot_checked"] is True
    close(app)


def test_a_worker_caught_after_a_failure_has_its_unchecked_results_from_before_it_taken_back(tmp_path):
    app, client, gate = checked_node(tmp_path, verify_max_pending=1500)
    the_node = app.extensions["nodeapp"].node
    checked, unchecked, wrong = (enqueue(client, body, 1000) for body in (b"checked", b"unchecked", b"wrong"))
    claim(client, AUTH, "w1", max_tasks=3)
    # the first check fills the backlog: the second result is accepted unchecked
    assert complete(client, AUTH, "w1", [(checked, sha512_result(b"checked", 1000)),
                                         (unchecked, sha512_result(b"unchecked", 1000))]) == 2
    assert status(client, unchecked)["spot_checked"] is False
    gate.set()
    wait_for(the_node.checker.idle, timeout=20, what="the first check")
    fail_next_commit(app, client)
    assert completed_with(client, unchecked, b"unchecked", 1000)  # read back: it no longer says it was unchecked
    assert complete(client, AUTH, "w1", [(wrong, "00" * 64)]) == 1
    wait_for(lambda: the_node.checker.idle() and "w1" in the_node.quarantine, timeout=20, what="the quarantine")
    assert [c.rerun for c in the_node.quarantine.newest()] == [1]
    assert status(client, unchecked)["state"] == "queued" and status(client, wrong)["state"] == "queued"
    assert completed_with(client, checked, b"checked", 1000)  # recomputed before it was accepted: it stays
    close(app)


def test_a_wrong_result_quarantines_its_worker_though_the_commit_of_its_batch_fails(tmp_path):
    """One worker posts a right and a wrong result together: their checks are settled together,
    and the commit of the right one fails. The memory goes back to the file, and the worker is
    quarantined all the same (its check stands); both tasks are then computed by another."""
    app, client, gate = checked_node(tmp_path)
    the_node = app.extensions["nodeapp"].node
    right, wrong = enqueue(client, b"right", 1000), enqueue(client, b"wrong", 1000)
    claim(client, AUTH, "w1", max_tasks=2)
    assert complete(client, AUTH, "w1", [(right, sha512_result(b"right", 1000)), (wrong, "00" * 64)]) == 2
    journal = journal_of(app)
    journal._conn = FailingCommit(journal._conn, sqlite3.OperationalError("injected: disk I/O error"))
    intake_full(journal)  # the settling waits for SQLite's commit (from the intake it could not fail)
    gate.set()
    wait_for(lambda: the_node.checker.idle() and journal.failures >= 1, timeout=20, what="the checks and their commit")
    assert "w1" in the_node.quarantine
    wait_for(lambda: {status(client, i)["state"] for i in (right, wrong)} == {"queued"}, timeout=20,
             what="both tasks queued again")
    assert sorted(t["id"] for t in claim(client, AUTH, "w2", max_tasks=2)) == sorted([right, wrong])
    assert complete(client, AUTH, "w2", [(right, sha512_result(b"right", 1000)),
                                          (wrong, sha512_result(b"wrong", 1000))]) == 2
    wait_for(lambda: completed_with(client, right, b"right", 1000) and completed_with(client, wrong, b"wrong", 1000),
             timeout=20, what="both right results")
    close(app)
