"""The download spool (core/sources/download_spool.py): what a killed run spooled is read back
intact, and nothing else: a record cut short, altered, outside the bundle or too large ends
what is read back, and the file is cut there so that new records follow the good ones."""
from __future__ import annotations

from pathlib import Path

from export_map_server_cache.core.grid.tiling_scheme import bundle_range
from export_map_server_cache.core.sources.download_spool import (
    MAGIC,
    RECORD_HEAD,
    DownloadSpool,
)

BUNDLE = bundle_range(128, 256)
CAP = 1 << 20
TILES = {(128 + n, 256 + 2 * n): bytes([n]) * (100 + n) for n in range(5)}


def _spooled(path: Path, absent=((200, 300),)) -> None:
    spool = DownloadSpool(path, BUNDLE, CAP)
    for key, data in TILES.items():
        spool.append(key, data)
    for key in absent:
        spool.append(key, None)
    spool.close()


def _read_back(path: Path) -> DownloadSpool:
    return DownloadSpool(path, BUNDLE, CAP)


def test_what_was_spooled_is_read_back(tmp_path):
    path = tmp_path / "L05-R0080C0100.tiles"
    _spooled(path)
    spool = _read_back(path)
    try:
        assert {key: spool.pread(*spool.tiles[key]) for key in spool.tiles} == TILES
        assert spool.absent == {(200, 300)}
        assert spool.has((200, 300)) and not spool.has((129, 256))
        assert spool.known == len(TILES) + 1
        spool.append((250, 260), b"more")  # appended after what was read back
    finally:
        spool.close()
    again = _read_back(path)
    assert again.pread(*again.tiles[250, 260]) == b"more" and len(again.tiles) == len(TILES) + 1
    again.close()


def test_an_anonymous_spool_reads_like_a_kept_one(tmp_path):
    spool = DownloadSpool(None, BUNDLE, CAP)
    for key, data in TILES.items():
        spool.append(key, data)
    assert {key: spool.pread(*spool.tiles[key]) for key in spool.tiles} == TILES
    offset, size = spool.tiles[128, 256]
    assert int.from_bytes(spool.pread(offset - 4, 4), "little") == size  # a size prefix
    spool.close()


def test_a_record_cut_short_by_a_kill_is_dropped(tmp_path):
    path = tmp_path / "cut.tiles"
    _spooled(path, absent=())
    whole = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])
    spool = _read_back(path)
    assert len(spool.tiles) == len(TILES) - 1
    last = len(TILES) - 1
    assert (128 + last, 256 + 2 * last) not in spool.tiles
    spool.close()
    assert path.stat().st_size == whole - (RECORD_HEAD + len(TILES[128 + last, 256 + 2 * last]))


def test_an_altered_record_ends_what_is_read_back(tmp_path):
    path = tmp_path / "altered.tiles"
    _spooled(path)
    data = bytearray(path.read_bytes())
    second = len(MAGIC) + RECORD_HEAD + 100 + RECORD_HEAD  # the second tile's first byte
    data[second] ^= 0xFF
    path.write_bytes(bytes(data))
    spool = _read_back(path)
    assert list(spool.tiles) == [(128, 256)] and not spool.absent
    spool.close()


def test_records_outside_the_bundle_or_too_large_are_not_taken(tmp_path):
    path = tmp_path / "other.tiles"
    elsewhere = DownloadSpool(path, bundle_range(0, 0), CAP)
    elsewhere.append((5, 5), b"tile of another bundle")
    elsewhere.close()
    spool = _read_back(path)
    assert spool.known == 0 and spool.size == len(MAGIC)
    spool.close()
    big = tmp_path / "big.tiles"
    _spooled(big)
    small_cap = DownloadSpool(big, BUNDLE, 101)  # the second tile (101 bytes) still fits
    assert len(small_cap.tiles) == 2
    small_cap.close()


def test_a_file_that_is_no_spool_is_emptied(tmp_path):
    path = tmp_path / "garbage.tiles"
    path.write_bytes(b"\0" * 1000)
    spool = _read_back(path)
    assert spool.known == 0
    spool.close()
    assert path.read_bytes() == MAGIC
