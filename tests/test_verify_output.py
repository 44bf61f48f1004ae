"""Verification after writing (issue 13, item 7): `verify_output` re-reads a written dataset
through the readers and fails with a clear message when a bundle holds other tile counts than
written, or when an index entry does not point at its tile's record."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import web_mercator_scheme, write_cache  # noqa: E402

from export_map_server_cache.core.errors import CacheError  # noqa: E402
from export_map_server_cache.core.export.bundle_result import BundleResult  # noqa: E402
from export_map_server_cache.core.export.verify import verify_output  # noqa: E402
from export_map_server_cache.core.exporter import Exporter, ExportOptions  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402
from export_map_server_cache.core.selection.tile_selection import Selection  # noqa: E402
from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402


@pytest.fixture
def output(tmp_path) -> Path:
    layers = tmp_path / "Src" / "Layers"
    write_cache(layers, web_mercator_scheme(), {3: TileRange(0, 7, 0, 7)})
    cache = open_cache(str(layers.parent))
    try:
        result = Exporter(cache, [3], Selection(),
                          ExportOptions(tmp_path / "out", StorageFormat.COMPACT_V2,
                                        workers=1)).run()
    finally:
        cache.close()
    assert result.verified == "Verified: 1 bundles re-read, tiles per level as written (L3: 64)."
    return result.output_path


def test_counts_checked(output):
    wrote = [BundleResult(3, 0, 0, tiles=64)]
    assert verify_output(output, wrote, exact=True).startswith("Verified: 1 bundles")
    with pytest.raises(CacheError, match="holds 64 tiles where the export wrote 65"):
        verify_output(output, [BundleResult(3, 0, 0, tiles=65)], exact=True)
    assert "at least as written" in verify_output(output, [BundleResult(3, 0, 0, tiles=63)],
                                                  exact=False)


def test_index_entry_off_its_record(output):
    bundle = output / "_alllayers" / "L03" / "R0000C0000.bundle"
    data = bytearray(bundle.read_bytes())
    entry = struct.unpack_from("<Q", data, 64)[0]  # tile (0, 0): offset in the low 40 bits
    struct.pack_into("<Q", data, 64, entry + 1)
    bundle.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="1 index entries of bundle R0000C0000 at level 3"):
        verify_output(output, [BundleResult(3, 0, 0, tiles=64)], exact=True)
