"""What the engine writes is read back, tile for tile, by readers that share no code with it:
MapProxy (Compact V1, V2, ArcGIS exploded layout), tpkutils (.tpk), a spec-only .tpkx parser
and GDAL's ESRIC driver (Compact V2 datasets: pixels, overviews, CRS)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from osgeo import gdal

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import web_mercator_scheme, write_cache  # noqa: E402
from independent_readers import (  # noqa: E402
    exploded_keys,
    gdal_expected,
    gdal_tile,
    mapproxy_compact_get,
    mapproxy_compact_tiles,
    mapproxy_exploded_get,
    max_pixel_difference,
    no_leftovers,
    sample,
    tpkutils_tiles,
    tpkx_tiles,
    v2_folder_tiles,
)

from export_map_server_cache.core.exporter import Exporter, ExportOptions  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402
from export_map_server_cache.core.selection.tile_selection import Selection  # noqa: E402
from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402

gdal.UseExceptions()
GDAL_VERSION = int(gdal.VersionInfo("VERSION_NUM"))

FIXTURES = {
    "tpk": "arcmap-10.3-states_filled.tpk",
    "tpkx": "arcgis-pro-wgs84.tpkx",
    "v1": "arcgis-server-10.1-compact-v1",
    "v2": "esri-sample-compact-v2",
}
SOURCES = ["tpk", "tpkx", "v1", "v2", "synth_png", "synth_jpeg"]
TARGETS = ["v2", "v1", "exploded", "tpk", "tpkx"]
STORAGE = {
    "v2": StorageFormat.COMPACT_V2,
    "tpkx": StorageFormat.COMPACT_V2,
    "v1": StorageFormat.COMPACT,
    "tpk": StorageFormat.COMPACT,
    "exploded": StorageFormat.EXPLODED,
}
# Level 9 window over four bundles (rows 120-135 x cols 250-265 crosses 128 and 256),
# plus coarser levels for GDAL overview checks; a few tiles left out on purpose.
SYNTH_WINDOWS = {
    7: TileRange(30, 33, 62, 66),
    8: TileRange(60, 67, 125, 132),
    9: TileRange(120, 135, 250, 265),
}
SYNTH_SKIP = [(9, 121, 251), (9, 130, 260), (9, 127, 255), (8, 64, 128), (7, 31, 63)]

Tiles = dict[tuple[int, int, int], bytes]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, fixtures_dir) -> dict[str, tuple[Path, Tiles]]:
    """Every source cache with its tiles as an independent reader sees them."""
    found: dict[str, tuple[Path, Tiles]] = {}
    tpk = fixtures_dir / FIXTURES["tpk"]
    found["tpk"] = (tpk, tpkutils_tiles(tpk))
    tpkx = fixtures_dir / FIXTURES["tpkx"]
    found["tpkx"] = (tpkx, tpkx_tiles(tpkx))
    v1 = fixtures_dir / FIXTURES["v1"]
    found["v1"] = (v1, mapproxy_compact_tiles(v1 / "_alllayers", 1))
    v2 = fixtures_dir / FIXTURES["v2"]
    found["v2"] = (v2, mapproxy_compact_tiles(v2 / "_alllayers", 2))
    base = tmp_path_factory.mktemp("sources")
    png = web_mercator_scheme(storage=StorageFormat.COMPACT_V2)
    found["synth_png"] = (base / "SynthPng", write_cache(
        base / "SynthPng" / "Layers", png, SYNTH_WINDOWS, skip=SYNTH_SKIP))
    jpeg = web_mercator_scheme(storage=StorageFormat.COMPACT, tile_format="JPEG")
    found["synth_jpeg"] = (base / "SynthJpeg", write_cache(
        base / "SynthJpeg" / "Layers", jpeg, SYNTH_WINDOWS, skip=SYNTH_SKIP))
    assert len(found["synth_png"][1]) == 20 + 64 + 256 - len(SYNTH_SKIP)
    return found


def export(source_path: Path, target_dir: Path, target: str):
    source = open_cache(str(source_path))
    try:
        result = Exporter(
            source, sorted(source.layout.levels()), Selection(),
            ExportOptions(target_dir, STORAGE[target], package=target in ("tpk", "tpkx")),
        ).run()
    finally:
        source.close()
    assert no_leftovers(target_dir) == []
    return result


def _name(source_path: Path) -> str:
    """The output name: the package stem or the dataset folder name (brief, Output layout)."""
    name = source_path.name
    return name.rsplit(".", 1)[0] if name.endswith((".tpk", ".tpkx")) else name


def _tile_ext(source_path: Path) -> str:
    source = open_cache(str(source_path))
    try:
        return "jpg" if source.scheme.tile_format == "JPEG" else "png"
    finally:
        source.close()


def test_sources_seen_alike_by_independent_readers(sources):
    assert {name: len(tiles) for name, (_, tiles) in sources.items()} == {
        "tpk": 24, "tpkx": 782, "v1": 70, "v2": 21, "synth_png": 335, "synth_jpeg": 335}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("source_name", SOURCES)
def test_export_read_back_by_independent_reader(sources, tmp_path, source_name, target):
    source_path, expected = sources[source_name]
    result = export(source_path, tmp_path, target)
    assert result.tile_count == len(expected)
    assert sum(level.tiles for level in result.levels) == len(expected)
    absent = SYNTH_SKIP if source_name.startswith("synth") else []
    if target in ("v2", "v1"):
        alllayers = result.output_path / "_alllayers"
        assert result.output_path == tmp_path / _name(source_path) / "Layers"
        version = 2 if target == "v2" else 1
        assert mapproxy_compact_tiles(alllayers, version) == expected
        if target == "v2":
            assert v2_folder_tiles(alllayers) == expected
        for key in absent:
            assert mapproxy_compact_get(alllayers, version, key) is None, key
        # A tile in a bundle that does not exist at all.
        assert mapproxy_compact_get(alllayers, version, (9, 5000, 5000)) is None
    elif target == "exploded":
        alllayers = result.output_path / "_alllayers"
        ext = _tile_ext(source_path)
        files = exploded_keys(alllayers)
        assert set(files) == set(expected)
        for key, data in expected.items():
            assert files[key].suffix == "." + ext
            assert mapproxy_exploded_get(alllayers, ext, key) == data, key
        for key in absent:
            assert mapproxy_exploded_get(alllayers, ext, key) is None, key
    elif target == "tpk":
        assert result.output_path == tmp_path / (_name(source_path) + ".tpk")
        assert tpkutils_tiles(result.output_path) == expected
    else:
        assert result.output_path == tmp_path / (_name(source_path) + ".tpkx")
        assert tpkx_tiles(result.output_path) == expected


GDAL_EPSG = {"tpk": "3857", "tpkx": "4326", "v1": "4326", "v2": "3857",
             "synth_png": "3857", "synth_jpeg": "3857"}


@pytest.mark.parametrize("source_name", SOURCES)
def test_gdal_reads_compact_v2_dataset(sources, tmp_path, source_name):
    """GDAL's ESRIC driver opens conf.xml, reports the CRS, and returns the source pixels at
    every exported level (GDAL overviews) and zeros where a tile is absent."""
    source_path, expected = sources[source_name]
    result = export(source_path, tmp_path, "v2")
    dataset = gdal.Open(str(result.output_path / "conf.xml"))
    assert dataset.GetDriver().ShortName == "ESRIC"
    srs = dataset.GetSpatialRef()
    assert srs is not None
    srs.AutoIdentifyEPSG()
    assert srs.GetAuthorityCode(None) == GDAL_EPSG[source_name]
    source = open_cache(str(source_path))
    scheme = source.scheme
    source.close()
    is_jpeg = scheme.tile_format == "JPEG"
    assert dataset.RasterCount == (3 if is_jpeg else 4)
    # the raster's grid is the finest level conf.xml lists (read here as plain XML), one
    # overview a coarser listed level
    listed = sorted(float(text) for text in re.findall(
        r"<Resolution>([^<]+)</Resolution>", (result.output_path / "conf.xml").read_text()))
    finest = listed[0]
    transform = dataset.GetGeoTransform()
    assert transform[0] == pytest.approx(scheme.origin_x) and transform[3] == pytest.approx(
        scheme.origin_y)
    assert transform[1] == pytest.approx(finest) and transform[5] == pytest.approx(-finest)
    width = 2 * abs(scheme.origin_x)
    assert dataset.RasterXSize == round(width / finest)
    assert dataset.GetRasterBand(1).GetOverviewCount() == len(listed) - 1
    size = scheme.tile_cols
    if size != 256 and GDAL_VERSION < 3080000:
        dataset = None  # noqa: F841 - closed now: the skip's traceback would keep it to the end
        pytest.skip(f"GDAL {gdal.__version__} hard-wires 256-px blocks (spec §4.2) and corrupts "
                    "its heap reading 512-px tiles: pixels are compared with GDAL 3.8 or newer "
                    "only")
    levels = sorted({key[0] for key in expected})
    picked = sample(expected, 3)
    assert {key[0] for key in picked} == set(levels)
    for key in picked:
        level, row, col = key
        level_width = int(round(width / scheme.lod(level).resolution))
        got = gdal_tile(dataset, level_width, row, col, size)
        assert got is not None, key
        image, box = got
        want = gdal_expected(expected[key], dataset.RasterCount, GDAL_VERSION).crop(box)
        difference = max_pixel_difference(image, want)
        assert difference == 0, f"{key}: GDAL pixels differ from the source by {difference}"
    for level, row, col in (SYNTH_SKIP if source_name.startswith("synth") else []):
        level_width = int(round(width / scheme.lod(level).resolution))
        image, _ = gdal_tile(dataset, level_width, row, col, size)
        assert image.getextrema() == ((0, 0),) * dataset.RasterCount, (level, row, col)


def test_gdal_opens_full_24_level_web_mercator_dataset(tmp_path):
    """A 24-level (0-23) ArcGIS Online scheme: GDAL cannot open level 23 through conf.xml
    (spec §9.2), so the dataset must still open and read right when only coarse levels hold
    tiles."""
    scheme = web_mercator_scheme(levels=24)
    tiles = write_cache(tmp_path / "World" / "Layers", scheme, {3: TileRange(2, 4, 1, 3)})
    result = export(tmp_path / "World", tmp_path / "out", "v2")
    dataset = gdal.Open(str(result.output_path / "conf.xml"))
    assert dataset is not None
    srs = dataset.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    assert srs.GetAuthorityCode(None) == "3857"
    for (level, row, col), data in tiles.items():
        image, box = gdal_tile(dataset, 256 * 2**level, row, col, 256)
        assert max_pixel_difference(image, gdal_expected(data, 4, GDAL_VERSION)) == 0
