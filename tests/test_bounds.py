"""Bounds in bytes, from the settings schema: idempotency keys (IDEMPOTENCY_KEYS_BYTES) and the
bodies of failed and cancelled tasks kept for retry (KEPT_BODIES_BYTES)."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from nodeapp import create_app
from nodeapp.store.idempotency import KEY_OVERHEAD, IdempotencyKeys, KeyEntry
from nodeapp.store.records import Submission, WrongState
from nodeapp.store.tasks import TaskStore
from tests.conftest import TOKEN
from tests.helpers import Clock, FakeLauncher


def entry(n: int) -> KeyEntry:
    return KeyEntry(f"{n:032x}", 1, hashlib.sha512(b"%d" % n).digest())


def test_keys_are_bounded_in_bytes_oldest_first():
    clock = Clock()
    limit = 100 * (255 + KEY_OVERHEAD)
    keys = IdempotencyKeys(3600, clock, max_bytes=limit)
    for n in range(1000):
        keys.put(f"{n:0255d}", entry(n))
        assert keys.bytes <= limit
    assert len(keys) == 100 and keys.get(f"{999:0255d}") == entry(999) and keys.get(f"{899:0255d}") is None
    clock.now += 3601  # expired keys go too, and give their bytes back
    keys.put("k", entry(1))
    assert len(keys) == 1 and keys.bytes == len("k") + KEY_OVERHEAD


def test_the_estimate_covers_what_a_key_really_costs():
    keys = IdempotencyKeys(3600, Clock(), max_bytes=2**40)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(5000):  # the key's string and its entry (id, digest) are made inside: they stay too
        keys.put(f"{n:0255d}", entry(n))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used <= keys.bytes, (used, keys.bytes)


def test_a_node_takes_both_bounds_from_its_settings():
    app = create_app({"cluster_token": TOKEN, "node_name": "n", "idempotency_keys_bytes": 2 * 1024 * 1024,
                      "kept_bodies_bytes": 10}, launcher=FakeLauncher())
    tasks = app.extensions["nodeapp"].node.tasks
    assert tasks.kept_bodies_bytes == 10 and tasks.idempotency_keys_bytes == 2 * 1024 * 1024


def test_stats_show_what_the_keys_take_against_the_setting():
    limit = 1024 * 1024
    app = create_app({"cluster_token": TOKEN, "node_name": "n", "idempotency_keys_bytes": limit},
                     launcher=FakeLauncher())
    tasks, client = app.extensions["nodeapp"].node.tasks, app.test_client()
    assert client.get("/stats").get_json()["idempotency_keys"] == {"kept": 0, "bytes": 0, "max_bytes": limit,
                                                                  "dropped": 0}
    cost = 255 + KEY_OVERHEAD
    fit = limit // cost
    for n in range(fit + 5):  # 5 more than fit: the 5 oldest are dropped before their time
        body = b"%d" % n
        tasks.submit_many([Submission(body, 1, hashlib.sha512(body).digest(), key=f"{n:0255d}")])
        if n == 9:
            assert client.get("/stats").get_json()["idempotency_keys"] == {
                "kept": 10, "bytes": 10 * cost, "max_bytes": limit, "dropped": 0}
    assert client.get("/stats").get_json()["idempotency_keys"] == {"kept": fit, "bytes": fit * cost,
                                                                  "max_bytes": limit, "dropped": 5}


def test_kept_bodies_are_bounded_by_the_setting():
    clock = Clock()
    store = TaskStore(kept_bodies_bytes=10, monotonic=clock, wall=clock)
    ids = [store.submit_many([Submission(body, 1, hashlib.sha512(body).digest())])[0].id
           for body in (b"123456", b"abcdef")]
    for task_id in ids:
        store.cancel(task_id)
    assert store.retry(ids[1]).state == "queued"  # the newest body is kept
    with pytest.raises(WrongState, match="KEPT_BODIES_BYTES"):
        store.retry(ids[0])  # 6 + 6 bytes > 10: the oldest was dropped
