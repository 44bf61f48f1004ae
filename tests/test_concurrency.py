"""Exports with 16 workers over many bundles lose nothing and mix nothing up: every tile read
back (MapProxy and the engine's reader) is the source's tile at the same address, and no
temporary file or staging folder is left behind."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import read_all_tiles, web_mercator_scheme, write_cache  # noqa: E402
from independent_readers import (  # noqa: E402
    mapproxy_compact_tiles,
    no_leftovers,
    tpkx_tiles,
)

from export_map_server_cache.core.exporter import Exporter, ExportOptions  # noqa: E402
from export_map_server_cache.core.formats.conf_xml import write_conf_cdi  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402
from export_map_server_cache.core.selection.tile_selection import Selection  # noqa: E402
from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402

LEVEL = 10
BUNDLES = 6  # 6 x 6 bundles at level 10, rows/cols 128..895
WORKERS = 16

Tiles = dict[tuple[int, int, int], bytes]


def _window(bi: int, bj: int) -> TileRange:
    """A differently sized and placed block in every bundle, some touching the bundle edge."""
    brow, bcol = 128 * (bi + 1), 128 * (bj + 1)
    height, width = 8 + (bi * 3 + bj) % 9, 10 + (bj * 5 + bi) % 7
    top = 127 - height + 1 if (bi + bj) % 4 == 0 else (bi * 37 + bj * 11) % 100
    left = 127 - width + 1 if (bi * bj) % 5 == 1 else (bj * 53 + bi * 7) % 100
    return TileRange(brow + top, brow + top + height - 1, bcol + left, bcol + left + width - 1)


@pytest.fixture(scope="module")
def many_bundles(tmp_path_factory) -> tuple[Path, Tiles]:
    """A Compact V2 source with one block of tiles in each of 36 bundles at level 10."""
    base = tmp_path_factory.mktemp("concurrency")
    layers = base / "Many" / "Layers"
    scheme = web_mercator_scheme(storage=StorageFormat.COMPACT_V2)
    tiles: Tiles = {}
    extent = None
    for bi in range(BUNDLES):
        for bj in range(BUNDLES):
            window = _window(bi, bj)
            skip = [(LEVEL, window.row_min + 1, window.col_min + 2)]
            tiles.update(write_cache(layers, scheme, {LEVEL: window}, skip=skip))
            extent = scheme.range_extent(LEVEL, window).union(extent)
    (layers / "conf.cdi").write_bytes(write_conf_cdi(extent, scheme.spatial_reference))
    assert 4000 <= len(tiles) <= 10000
    assert len(set(tiles.values())) == len(tiles), "every source tile must be distinct"
    assert len({(r // 128, c // 128) for _, r, c in tiles}) == BUNDLES * BUNDLES
    return base / "Many", tiles


def _export(source_path: Path, target_dir: Path, storage: StorageFormat, package: bool):
    source = open_cache(str(source_path))
    try:
        return Exporter(source, [LEVEL], Selection(),
                        ExportOptions(target_dir, storage, package=package,
                                      workers=WORKERS)).run()
    finally:
        source.close()


@pytest.mark.parametrize("storage,version", [(StorageFormat.COMPACT_V2, 2),
                                             (StorageFormat.COMPACT, 1)])
def test_parallel_dataset_export(many_bundles, tmp_path, storage, version):
    source_path, tiles = many_bundles
    result = _export(source_path, tmp_path, storage, package=False)
    assert result.tile_count == len(tiles)
    assert result.levels[0].bundles == BUNDLES * BUNDLES
    assert no_leftovers(tmp_path) == []
    alllayers = result.output_path / "_alllayers"
    suffixes = {".bundle"} if version == 2 else {".bundle", ".bundlx"}
    files = list((alllayers / f"L{LEVEL:02d}").iterdir())
    assert {p.suffix for p in files} == suffixes
    assert len(files) == BUNDLES * BUNDLES * len(suffixes)
    assert mapproxy_compact_tiles(alllayers, version) == tiles
    assert read_all_tiles(result.output_path) == tiles


def test_parallel_tpkx_export(many_bundles, tmp_path):
    source_path, tiles = many_bundles
    result = _export(source_path, tmp_path, StorageFormat.COMPACT_V2, package=True)
    assert result.tile_count == len(tiles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Many.tpkx"]
    assert tpkx_tiles(result.output_path) == tiles
    assert read_all_tiles(result.output_path) == tiles


def test_parallel_export_into_existing_dataset(many_bundles, tmp_path):
    """A second parallel export into the same target (existing-cache path, staged) keeps every
    tile and leaves no staging folder."""
    source_path, tiles = many_bundles
    _export(source_path, tmp_path, StorageFormat.COMPACT_V2, package=False)
    source = open_cache(str(source_path))
    try:
        result = Exporter(source, [LEVEL], Selection(),
                          ExportOptions(tmp_path, StorageFormat.COMPACT_V2, workers=WORKERS)).run()
    finally:
        source.close()
    assert result.tile_count == len(tiles)
    assert no_leftovers(tmp_path) == []
    assert mapproxy_compact_tiles(result.output_path / "_alllayers", 2) == tiles


@pytest.mark.parametrize("package_storage", [StorageFormat.COMPACT_V2, StorageFormat.COMPACT])
def test_parallel_export_from_package_source(many_bundles, tmp_path, package_storage):
    """16 workers reading bundles out of one zip (.tpkx / .tpk) at the same time."""
    source_path, tiles = many_bundles
    package = _export(source_path, tmp_path / "pkg", package_storage, package=True).output_path
    for storage, version in ((StorageFormat.COMPACT, 1), (StorageFormat.COMPACT_V2, 2)):
        out = tmp_path / f"from-package-{version}"
        out.mkdir()
        result = _export(package, out, storage, package=False)
        assert result.output_path == out / "Many" / "Layers"
        assert result.tile_count == len(tiles)
        assert mapproxy_compact_tiles(result.output_path / "_alllayers", version) == tiles
        assert no_leftovers(out) == []
