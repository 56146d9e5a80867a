"""Task ids (``nodeapp/store/ids.py``): uuid4's form, never repeated, drawn from the OS in batches."""

from __future__ import annotations

import uuid

from nodeapp.store.ids import TaskIds, uuid4_hexes
from nodeapp.store.records import is_task_id
from tests.helpers import in_threads


def test_ids_have_uuid4s_form_and_bits():
    for task_id in [TaskIds().take() for _ in range(600)]:  # past a batch of 256, twice
        assert is_task_id(task_id)
        parsed = uuid.UUID(hex=task_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == task_id


def test_the_bits_are_set_as_uuid4_sets_them():
    raw = bytes(range(16)) + b"\xff" * 16
    assert uuid4_hexes(raw) == [uuid.UUID(bytes=raw[:16], version=4).hex, uuid.UUID(bytes=raw[16:], version=4).hex]


def test_no_id_is_given_twice_across_threads():
    ids, source = [], TaskIds()

    def take() -> None:
        mine = [source.take() for _ in range(2000)]
        ids.extend(mine)

    in_threads(take, 8)
    assert len(ids) == len(set(ids)) == 16_000
