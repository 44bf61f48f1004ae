"""Exploded caches as input: their tiles have no index, so package bundles are staged and
copied into the package when done. Checked with independent readers."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import read_all_tiles, tile_image, web_mercator_scheme, write_cache  # noqa: E402
from independent_readers import (  # noqa: E402
    mapproxy_compact_tiles,
    no_leftovers,
    tpkutils_tiles,
    tpkx_tiles,
)

from export_map_server_cache.core.exporter import Exporter, ExportOptions  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402
from export_map_server_cache.core.selection.tile_selection import Selection  # noqa: E402
from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402


@pytest.fixture(scope="module")
def exploded_cache(tmp_path_factory):
    """Two bundles' worth at level 8, PNG and JPEG tiles mixed (as a MIXED cache has them)."""
    folder = tmp_path_factory.mktemp("exploded") / "Mixed" / "Layers"
    scheme = web_mercator_scheme(levels=10, storage=StorageFormat.EXPLODED, tile_format="MIXED")
    tiles = write_cache(folder, scheme, {3: TileRange(0, 7, 0, 7),
                                         8: TileRange(120, 131, 60, 70)},
                        skip=[(8, 125, 65)])
    jpeg_key = (8, 130, 70)
    jpeg = tile_image(*jpeg_key, fmt="JPEG")
    row_folder = folder / "_alllayers" / "L08" / ("R%08x" % 130)
    (row_folder / ("C%08x.png" % 70)).unlink()
    (row_folder / ("C%08x.jpg" % 70)).write_bytes(jpeg)
    tiles[jpeg_key] = jpeg
    return folder, tiles


@pytest.mark.parametrize("storage, package", [
    (StorageFormat.COMPACT_V2, True), (StorageFormat.COMPACT, True),
    (StorageFormat.COMPACT_V2, False), (StorageFormat.COMPACT, False),
    (StorageFormat.EXPLODED, False),
])
def test_exploded_source_exports_to_every_kind(exploded_cache, tmp_path, storage, package):
    folder, tiles = exploded_cache
    source = open_cache(str(folder))
    try:
        result = Exporter(source, source.scheme.levels, Selection(),
                          ExportOptions(tmp_path, storage, package=package, workers=4)).run()
    finally:
        source.close()
    assert result.tile_count == len(tiles)
    assert read_all_tiles(result.output_path) == tiles
    out = Path(result.output_path)
    if package and storage is StorageFormat.COMPACT_V2:
        assert tpkx_tiles(out) == tiles
    elif package:
        assert tpkutils_tiles(out) == tiles
    elif storage is not StorageFormat.EXPLODED:
        version = 2 if storage is StorageFormat.COMPACT_V2 else 1
        assert mapproxy_compact_tiles(out / "_alllayers", version) == tiles
    assert no_leftovers(tmp_path) == []
