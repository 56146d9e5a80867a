"""The batch wire format (tmcommon/batchwire.py): round trips and the first bad task named."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tmcommon import batchwire
from tmcommon.batchwire import BatchFormatError, BatchTask

keys = st.none() | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255)
tasks = st.lists(st.builds(BatchTask, st.binary(max_size=300), st.integers(1, 2**63), keys), max_size=30)


@given(tasks)
def test_every_batch_decodes_to_what_was_encoded(batch):
    data = batchwire.encode(batch)
    assert list(batchwire.decode(data)) == batch
    assert len(data) == 8 + sum(batchwire.encoded_size(len(t.body), t.key) for t in batch)


def test_binary_bodies_travel_without_bloat():
    body = bytes(range(256)) * 4
    data = batchwire.encode([(body, 1)])
    assert len(data) == 8 + batchwire.TASK_OVERHEAD + len(body)
    assert data.endswith(body)


@given(tasks.filter(bool), st.data())
def test_a_cut_batch_is_refused_never_misread(batch, data):
    encoded = batchwire.encode(batch)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(BatchFormatError):
        list(batchwire.decode(encoded[:cut]))


def test_errors_name_the_first_bad_task():
    good = batchwire.encode([(b"a", 1), (b"b", 2)])
    with pytest.raises(BatchFormatError) as cut:
        list(batchwire.decode(good[:-1]))
    assert cut.value.index == 1 and str(cut.value).startswith("task 1: ")
    with pytest.raises(BatchFormatError) as extra:
        list(batchwire.decode(good + b"x"))
    assert extra.value.index is None and "1 bytes follow" in str(extra.value)
    with pytest.raises(BatchFormatError) as magic:
        batchwire.declared_count(b"JSON" + good[4:])
    assert "TMB1" in str(magic.value)
    bad_key = struct.pack(">4sIQH", b"TMB1", 1, 1, 2) + b"\x01b" + struct.pack(">I", 0)  # a control character
    with pytest.raises(BatchFormatError) as key:
        list(batchwire.decode(bad_key))
    assert key.value.index == 0 and "key" in str(key.value)
