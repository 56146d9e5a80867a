"""The task function against vectors made with `openssl dgst -sha512 -binary` in a shell loop."""

import re

import pytest

from tests.digests import sha512_chain
from workerapp.compute import compute, measure_hash_rate

VECTORS = [
    (b"", 1, "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
             "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"),
    (b"", 2, "826df068457df5dd195b437ab7e7739ff75d2672183f02bb8e1089fabcf97bd9"
             "dc80110cf42dbc7cff41c78ecb68d8ba78abe6b5178dea3984df8c55541bf949"),
    (b"abc", 1, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
    (b"abc", 2, "373a9f3a902cf561003b513c94c5164ba4af135cbc4eb4d856b89ea5609523f1"
                "30bbe5e453e6c645b2765a265aaeb1390c82c913130870636cd0c8ecf980d851"),
    (b"hello world", 1000, "bcdb2ea1ef9de9ecd39c4d0455fb1b0ae545f70616c1269a9e0a86a3ae3b524c"
                           "d1d6b6bb5f185919f6de27150592e502e968f2f44f38678a5e0dd0a50f81606d"),
]


@pytest.mark.parametrize("data,iterations,expected", VECTORS)
def test_known_vectors(data, iterations, expected):
    assert compute(data, iterations) == expected


def test_result_is_the_lowercase_hex_of_the_chained_sha512():
    result = compute(b"\x00\xff" * 100, 7)
    assert result == sha512_chain(b"\x00\xff" * 100, 7) and re.fullmatch("[0-9a-f]{128}", result)


@pytest.mark.parametrize("iterations", [0, -1])
def test_rejects_fewer_than_one_iteration(iterations):
    with pytest.raises(ValueError):
        compute(b"x", iterations)


def test_measured_hash_rate_is_plausible():
    assert 10_000 < measure_hash_rate(0.02) < 100_000_000
