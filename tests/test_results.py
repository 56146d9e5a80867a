"""merge_newest: two newest-first lists into the ``top`` newest, each id once."""

from __future__ import annotations

from nodeapp.store.results import merge_newest


def results(*pairs) -> list[dict]:
    return [{"id": task_id, "completed_at": at} for task_id, at in pairs]


def ids(merged: list[dict]) -> list[str]:
    return [r["id"] for r in merged]


def test_interleaves_by_time_and_stops_at_top():
    ours = results(("a", 9), ("b", 5), ("c", 1))
    theirs = results(("x", 8), ("y", 6), ("z", 2))
    assert ids(merge_newest(ours, theirs, 10)) == ["a", "x", "y", "b", "z", "c"]
    assert ids(merge_newest(ours, theirs, 3)) == ["a", "x", "y"]
    assert merge_newest(ours, theirs, 0) == []
    assert ids(merge_newest(ours, [], 2)) == ["a", "b"]


def test_an_id_on_both_sides_is_listed_once_and_ours_win_ties():
    ours = results(("a", 5), ("same", 3))
    theirs = results(("t", 5), ("same", 3))
    merged = merge_newest(ours, theirs, 10)
    assert ids(merged) == ["a", "t", "same"]
    assert merged[2] is ours[1]


def test_reads_no_further_than_it_needs():
    read = []

    def lazily(side: str, count: int):
        for n in range(count):
            read.append(side)
            yield {"id": f"{side}{n}", "completed_at": 1000 - n}

    assert ids(merge_newest(lazily("o", 1000), lazily("t", 1000), 4)) == ["o0", "t0", "o1", "t1"]
    assert len(read) <= 6  # a few items ahead on each side, not the 2,000


def test_a_custom_key_for_other_items():
    ours = [(9.0, "a", b"A"), (1.0, "b", b"B")]
    theirs = [(5.0, "c", b"C")]
    merged = merge_newest(ours, theirs, 3, key=lambda e: (e[0], e[1]))
    assert [e[2] for e in merged] == [b"A", b"C", b"B"]
