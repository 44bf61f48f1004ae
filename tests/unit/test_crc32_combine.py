"""crc32_combine against zlib: the CRC-32 of A+B from the CRCs of A and B and B's length, for
random splits of random data (seeded, so a failure repeats) and the edge cases."""
from __future__ import annotations

import random
import zlib

import pytest

from export_map_server_cache.core.formats.crc32_combine import crc32_combine

EDGE_LENGTHS = [0, 1, 2, 3, 4, 7, 8, 255, 256, 4095, 4096, 65537]


def _check(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@pytest.mark.parametrize("seed", range(40))
def test_combining_two_parts_gives_the_crc_of_the_whole(seed):
    rng = random.Random(seed)
    whole = rng.randbytes(rng.choice([rng.randrange(0, 64), rng.randrange(0, 70_000)]))
    cut = rng.randrange(0, len(whole) + 1)
    _check(whole[:cut], whole[cut:])


@pytest.mark.parametrize("length_a", EDGE_LENGTHS)
@pytest.mark.parametrize("length_b", EDGE_LENGTHS)
def test_edge_lengths_on_either_side(length_a, length_b):
    rng = random.Random(length_a * 100_003 + length_b)
    _check(rng.randbytes(length_a), rng.randbytes(length_b))


def test_combining_is_associative_over_many_parts():
    rng = random.Random(7)
    parts = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(25)]
    crc = 0  # the CRC-32 of nothing
    for part in parts:
        crc = crc32_combine(crc, zlib.crc32(part), len(part))
    assert crc == zlib.crc32(b"".join(parts))


def test_long_zero_runs_match_zlib():
    """Lengths far beyond the data used above exercise every bit of the length."""
    for length in (1 << 20, (1 << 20) + 12_345):
        zeros = bytes(length)
        _check(b"head", zeros)
