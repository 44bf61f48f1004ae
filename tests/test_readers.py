"""The engine reads every Esri-written fixture tile for tile, and what it returns equals what
independent readers return (tpkutils, MapProxy, a spec-only .tpkx parser)."""
from __future__ import annotations

import io
import shutil
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import read_all_tiles  # noqa: E402
from independent_readers import (  # noqa: E402
    mapproxy_compact_get,
    mapproxy_compact_tiles,
    parse_v2_bundle,
    tpkutils_tiles,
    tpkx_tiles,
    v2_folder_tiles,
)

from export_map_server_cache.core.grid.tiling_scheme import StorageFormat  # noqa: E402
from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402

TPK = "arcmap-10.3-states_filled.tpk"
TPKX = "arcgis-pro-wgs84.tpkx"
V1 = "arcgis-server-10.1-compact-v1"
V2 = "esri-sample-compact-v2"

EXPECTED_LEVELS = {
    TPK: {0: 1, 1: 1, 2: 2, 3: 4, 4: 16},
    TPKX: {0: 2, 1: 6, 2: 15, 3: 45, 4: 153, 5: 561},
    V1: {2: 70},
    V2: {0: 1, 1: 4, 2: 16},
}
EXPECTED_TOTAL = {TPK: 24, TPKX: 782, V1: 70, V2: 21}


def _decodes(data: bytes) -> bool:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.size[0] > 0


@pytest.mark.parametrize("name", [TPK, TPKX, V1, V2])
def test_fixture_tile_counts_per_level_and_every_tile_decodes(fixtures_dir, name):
    tiles = read_all_tiles(fixtures_dir / name)
    assert len(tiles) == EXPECTED_TOTAL[name]
    assert dict(Counter(level for level, _, _ in tiles)) == EXPECTED_LEVELS[name]
    for key, data in tiles.items():
        assert _decodes(data), key


def test_fixture_schemes(fixtures_dir):
    """What the engine makes of each fixture's tiling scheme (conf.xml / root.json)."""
    expectations = {
        TPK: (StorageFormat.COMPACT, 256, "PNG8", 3857),
        TPKX: (StorageFormat.COMPACT_V2, 512, "PNG", 4326),
        V1: (StorageFormat.COMPACT, 256, "PNG24", 4326),
        V2: (StorageFormat.COMPACT_V2, 256, "JPEG", 3857),
    }
    for name, (storage, size, fmt, epsg) in expectations.items():
        source = open_cache(str(fixtures_dir / name))
        try:
            scheme = source.scheme
            assert scheme.storage_format is storage, name
            assert (scheme.tile_cols, scheme.tile_rows) == (size, size), name
            assert scheme.tile_format == fmt, name
            sr = scheme.spatial_reference
            assert epsg in (sr.latest_wkid, sr.wkid), name
            assert source.name == name.removesuffix(".tpk").removesuffix(".tpkx")
            assert source.is_package == name.endswith((".tpk", ".tpkx"))
        finally:
            source.close()
    source = open_cache(str(fixtures_dir / V1))
    try:
        assert (source.scheme.origin_x, round(source.scheme.origin_y, 6)) == (-400.0, 400.0)
        assert source.layout.bundle_keys(2, None) == [(0x900, 0xD00)]
    finally:
        source.close()


def test_tpk_equals_tpkutils(fixtures_dir):
    ours = read_all_tiles(fixtures_dir / TPK)
    theirs = tpkutils_tiles(fixtures_dir / TPK)
    # Web Mercator 256 px: tpkutils' zoom is the LevelID, its y the ArcGIS row.
    assert theirs == ours


def test_v1_folder_equals_mapproxy(fixtures_dir):
    ours = read_all_tiles(fixtures_dir / V1)
    alllayers = fixtures_dir / V1 / "_alllayers"
    assert mapproxy_compact_tiles(alllayers, 1) == ours
    # MapProxy reports a slot of the same bundle that ArcGIS left empty as missing.
    row, col = 0x900 + 5, 0xD00 + 5
    assert (2, row, col) not in ours
    assert mapproxy_compact_get(alllayers, 1, (2, row, col)) is None


def test_v2_folder_equals_mapproxy_and_spec_parser(fixtures_dir):
    ours = read_all_tiles(fixtures_dir / V2)
    alllayers = fixtures_dir / V2 / "_alllayers"
    assert mapproxy_compact_tiles(alllayers, 2) == ours
    assert v2_folder_tiles(alllayers) == ours


def test_v2_sample_with_dead_space_reads_the_indexed_records(fixtures_dir):
    """The sample's L02 bundle has dead bytes before its records (spec §3.5); the engine must
    follow the index, not assume records start at 131,140."""
    data = (fixtures_dir / V2 / "_alllayers" / "L02" / "R0000C0000.bundle").read_bytes()
    expected = {(2, r, c): d for (r, c), d in parse_v2_bundle(data, 0, 0).items()}
    ours = {k: v for k, v in read_all_tiles(fixtures_dir / V2).items() if k[0] == 2}
    assert ours == expected
    assert len(expected) == 16


def test_tpkx_equals_spec_parser(fixtures_dir):
    ours = read_all_tiles(fixtures_dir / TPKX)
    assert tpkx_tiles(fixtures_dir / TPKX) == ours


def test_folder_above_layers(fixtures_dir, tmp_path):
    """ArcGIS Server's arcgiscache/<Service>/Layers: the user may pick the service folder."""
    service = tmp_path / "Svc"
    shutil.copytree(fixtures_dir / V2, service / "Layers")
    source = open_cache(str(service))
    try:
        assert source.name == "Svc"
        assert source.scheme.storage_format is StorageFormat.COMPACT_V2
    finally:
        source.close()
    assert read_all_tiles(service) == read_all_tiles(fixtures_dir / V2)
    # The Layers folder itself and its conf.xml name the same cache.
    for path in (service / "Layers", service / "Layers" / "conf.xml"):
        source = open_cache(str(path))
        try:
            assert source.name == "Svc"
        finally:
            source.close()


def test_capital_c_conf_xml(fixtures_dir, tmp_path):
    """The 10.1 cache names its file `Conf.xml`; the folder and the file path both open."""
    names = {p.name for p in (fixtures_dir / V1).iterdir()}
    assert "Conf.xml" in names and "conf.xml" not in names
    by_file = read_all_tiles(fixtures_dir / V1 / "Conf.xml")
    assert by_file == read_all_tiles(fixtures_dir / V1)
    assert len(by_file) == 70
    # Also above a Layers folder.
    shutil.copytree(fixtures_dir / V1, tmp_path / "Svc10" / "Layers")
    assert read_all_tiles(tmp_path / "Svc10") == by_file


def _rebuild_zip(source: Path, target: Path, rename, compress_type: int) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            new.writestr(zipfile.ZipInfo(rename(info.filename), info.date_time), data,
                         compress_type=compress_type)


def test_tpk_with_other_root_folder_name(fixtures_dir, tmp_path):
    """tpkutils' alt_root_name.tpk shows ArcMap may use another root than Layers (spec §6.1)."""
    target = tmp_path / "alt_root.tpk"
    _rebuild_zip(fixtures_dir / TPK, target,
                 lambda n: n.replace("/Layers/", "/My Root/").replace(
                     "/Layers.lyr", "/My Root.lyr"),
                 zipfile.ZIP_STORED)
    with zipfile.ZipFile(target) as archive:
        assert not any("Layers" in n for n in archive.namelist())
        assert "v101/My Root/conf.xml" in archive.namelist()
    tiles = read_all_tiles(target)
    assert tiles == read_all_tiles(fixtures_dir / TPK)
    assert tiles == tpkutils_tiles(target)
    assert len(tiles) == 24


def test_tpkx_with_deflated_members(fixtures_dir, tmp_path):
    """Readers accept DEFLATED members (spec §10) although writers must store."""
    target = tmp_path / "deflated.tpkx"
    _rebuild_zip(fixtures_dir / TPKX, target, lambda n: n, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(target) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    tiles = read_all_tiles(target)
    assert tiles == tpkx_tiles(target) == read_all_tiles(fixtures_dir / TPKX)
    assert len(tiles) == 782


def test_tpk_with_deflated_members(fixtures_dir, tmp_path):
    target = tmp_path / "deflated.tpk"
    _rebuild_zip(fixtures_dir / TPK, target, lambda n: n, zipfile.ZIP_DEFLATED)
    assert read_all_tiles(target) == read_all_tiles(fixtures_dir / TPK)
