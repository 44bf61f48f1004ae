"""One contract for every storage format's bundle reader and writer (Exploded, Compact V1,
Compact V2): what is written reads back, an indexed reader locates each record, a tile removed
is gone, an aborted bundle leaves nothing. The exporter relies on exactly this."""
from __future__ import annotations

import struct

import pytest

from export_map_server_cache.core.formats.bundle import BundleReader, BundleWriter
from export_map_server_cache.core.formats.file_store import DirStore
from export_map_server_cache.core.formats.layout import Layout
from export_map_server_cache.core.formats.storage_formats import LAYOUTS, open_writer
from export_map_server_cache.core.grid.tiling_scheme import PACKET_SIZE, StorageFormat

LEVEL = 3
BROW, BCOL = PACKET_SIZE, 2 * PACKET_SIZE
PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff\xe0"


def _tile(row: int, col: int) -> bytes:
    """Distinct bytes per tile, PNG and JPEG alike (the exploded format names files by kind)."""
    signature = JPEG if (row + col) % 2 else PNG
    return signature + struct.pack("<II", row, col) * (1 + (row * 7 + col) % 50)


TILES = {(BROW + r, BCOL + c): _tile(BROW + r, BCOL + c)
         for r, c in [(0, 0), (0, 1), (0, 127), (5, 3), (64, 64), (127, 0), (127, 127)]}


@pytest.fixture(params=[StorageFormat.EXPLODED, StorageFormat.COMPACT, StorageFormat.COMPACT_V2],
                ids=["exploded", "compact_v1", "compact_v2"])
def storage(request) -> StorageFormat:
    return request.param


def _write(storage: StorageFormat, alllayers, tiles: dict, removed=(), brow=BROW, bcol=BCOL,
           abort=False) -> BundleWriter:
    writer = open_writer(storage, alllayers, LEVEL, brow, bcol, "spec")
    assert isinstance(writer, BundleWriter)
    for row, col in sorted(tiles):
        writer.add(row, col, tiles[(row, col)])
    for key in removed:
        writer.remove(*key)
    if abort:
        writer.abort()
    else:
        writer.commit()
    return writer


def _layout(storage: StorageFormat, alllayers) -> Layout:
    """A fresh layout: layouts remember the folders they listed."""
    return LAYOUTS[storage](DirStore(alllayers), "")


def _read_all(layout: Layout, brow=BROW, bcol=BCOL) -> dict:
    reader = layout.open_bundle(LEVEL, brow, bcol)
    if reader is None:
        return {}
    assert isinstance(reader, BundleReader)
    try:
        return {key: reader.read(*key) for key in reader.present()}
    finally:
        reader.close()


def test_what_is_written_reads_back(storage, tmp_path):
    writer = _write(storage, tmp_path, TILES)
    assert writer.count == len(TILES)
    layout = _layout(storage, tmp_path)
    assert layout.storage is storage
    assert LEVEL in layout.levels()
    assert layout.bundle_keys(LEVEL, None) == [(BROW, BCOL)]
    assert _read_all(layout) == TILES
    reader = layout.open_bundle(LEVEL, BROW, BCOL)
    try:
        assert reader.present() == sorted(TILES)
    finally:
        reader.close()
    assert layout.open_bundle(LEVEL, 0, 0) is None
    assert layout.member_paths(LEVEL, BROW, BCOL)


def test_an_indexed_reader_locates_each_record(storage, tmp_path):
    _write(storage, tmp_path, TILES)
    reader = _layout(storage, tmp_path).open_bundle(LEVEL, BROW, BCOL)
    try:
        assert reader.indexed is (storage is not StorageFormat.EXPLODED)
        if not reader.indexed:
            return
        assert reader.present() == sorted(TILES)  # locate answers for the tiles listed
        for (row, col), data in TILES.items():
            offset, size = reader.locate(row, col)
            assert size == len(data)
            assert reader.pread(offset, size) == data
            assert struct.unpack("<I", reader.pread(offset - 4, 4))[0] == size
    finally:
        reader.close()


def test_records_copied_as_runs_read_back(storage, tmp_path):
    """A writer that takes records gets them as the source holds them (size prefix + bytes)."""
    _write(storage, tmp_path / "a", TILES)
    writer = open_writer(storage, tmp_path / "b", LEVEL, BROW, BCOL, "spec")
    source = _layout(storage, tmp_path / "a").open_bundle(LEVEL, BROW, BCOL)
    try:
        assert source.present() == sorted(TILES)
        if not (source.indexed and writer.takes_records):
            assert storage is StorageFormat.EXPLODED
            writer.abort()
            return
        for row, col in sorted(TILES):
            offset, size = source.locate(row, col)
            writer.add_records(source.pread(offset - 4, size + 4), [(row, col, 4, size)])
        writer.commit()
    finally:
        source.close()
    assert _read_all(_layout(storage, tmp_path / "b")) == TILES


def test_a_removed_tile_is_gone_and_the_others_stay(storage, tmp_path):
    _write(storage, tmp_path, TILES)
    gone = (BROW + 64, BCOL + 64)
    kept = {key: data for key, data in TILES.items() if key != gone}
    # compact bundles are written whole (the kept tiles again); exploded ones tile by tile
    _write(storage, tmp_path, kept, removed=[gone])
    assert _read_all(_layout(storage, tmp_path)) == kept


@pytest.mark.parametrize("storage", [StorageFormat.COMPACT, StorageFormat.COMPACT_V2],
                         ids=["compact_v1", "compact_v2"])
def test_an_aborted_bundle_leaves_nothing(storage, tmp_path):
    """Compact bundles appear whole or not at all (exploded tiles are files written one by one:
    a staged export, not the writer, undoes them)."""
    _write(storage, tmp_path, TILES)
    other = (BROW + PACKET_SIZE, BCOL)
    tiles = {(other[0] + 1, other[1] + 2): _tile(1, 2)}
    _write(storage, tmp_path, tiles, brow=other[0], bcol=other[1], abort=True)
    layout = _layout(storage, tmp_path)
    assert layout.bundle_keys(LEVEL, None) == [(BROW, BCOL)]
    assert _read_all(layout, *other) == {}
    assert _read_all(layout) == TILES
