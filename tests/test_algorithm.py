"""`mapservercache:exportmapservercache` run through `processing.run`, checked from the outside.

Outputs are read back by a reader independent of the engine (cache_factory.read_output: MapProxy,
tpkutils, the spec-only parser, file names), which the engine's reader must agree with, and
compared byte for byte with the input; the expected tile sets of extents and areas of interest
are computed here from the tile math (spec §8.2) with coordinates transformed by pyproj, not by
the plugin.
"""
from __future__ import annotations

import io
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import (  # noqa: E402
    LEVEL0_RES,
    ORIGIN,
    read_all_tiles,
    read_output,
    snapshot,
    web_mercator_scheme,
    write_cache,
)
from recording import recording_feedback  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
Key = tuple[int, int, int]
EARTH_RADIUS = 6378137.0

# fixture -> (file or folder, tiles it holds)
FIXTURES = {
    "tpk-v1": ("arcmap-10.3-states_filled.tpk", 24),
    "tpkx-wgs84-512": ("arcgis-pro-wgs84.tpkx", 782),
    "server-v1-folder": ("arcgis-server-10.1-compact-v1", 70),
    "sample-v2-folder": ("esri-sample-compact-v2", 21),
}
# output kind -> (EXPORT_CACHE_TYPE, STORAGE_FORMAT_TYPE)
KINDS = {
    "dataset-v1": (0, 0),
    "dataset-v2": (0, 1),
    "dataset-exploded": (0, 2),
    "tpk": (1, 0),
    "tpkx": (1, 1),
}
STORAGE_TAGS = {
    0: "esriMapCacheStorageModeCompact<",
    1: "esriMapCacheStorageModeCompactV2<",
    2: "esriMapCacheStorageModeExploded<",
}


# --- helpers --------------------------------------------------------------------------------


def run_export(params: dict, feedback=None) -> dict:
    """processing.run with a small fixed worker count unless the test sets one."""
    import processing

    full = {"EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1,
            "NUM_OF_CACHING_SERVICE_INSTANCES": 2}
    full.update(params)
    return processing.run(ALG, full, feedback=feedback)


def output_path(target: Path, name: str, kind: str) -> Path:
    if kind == "tpk":
        return target / f"{name}.tpk"
    if kind == "tpkx":
        return target / f"{name}.tpkx"
    return target / name / "Layers"


def check_written_format(out: Path, kind: str) -> None:
    """The output really is the requested kind, judged from its files, not from the engine."""
    cache_type, storage = KINDS[kind]
    if cache_type == 1:
        assert zipfile.is_zipfile(out)
        with zipfile.ZipFile(out) as archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            assert all(i.compress_type == zipfile.ZIP_STORED for i in infos), names
            if kind == "tpk":
                assert "v101/Layers/conf.xml" in names
                assert "servicedescriptions/mapserver/mapserver.json" in names
                bundles = [n for n in names if n.endswith(".bundle")]
                assert bundles and all(n.startswith("v101/Layers/_alllayers/L") for n in bundles)
                assert {n[:-len(".bundle")] + ".bundlx" for n in bundles} <= set(names)
                conf = archive.read("v101/Layers/conf.xml").decode("utf-8")
                assert STORAGE_TAGS[0] in conf
            else:
                assert {"iteminfo.json", "root.json", "thumbnail.png"} <= set(names)
                bundles = [n for n in names if n.endswith(".bundle")]
                assert bundles and all(n.startswith("tile/L") for n in bundles)
                assert not [n for n in names if n.endswith(".bundlx")]
        return
    assert out.name == "Layers" and out.is_dir()
    conf = (out / "conf.xml").read_text("utf-8")
    assert STORAGE_TAGS[storage] in conf
    assert (out / "conf.cdi").is_file()
    suffixes = {p.suffix for p in (out / "_alllayers").rglob("*") if p.is_file()}
    if storage == 0:
        assert suffixes == {".bundle", ".bundlx"}
    elif storage == 1:
        assert suffixes == {".bundle"}
    else:
        assert suffixes and suffixes <= {".png", ".jpg"}


def web_mercator_span(level: int, tile_size: int = 256) -> float:
    return LEVEL0_RES / 2**level * tile_size


def tile_bounds(level: int, row: int, col: int) -> tuple[float, float, float, float]:
    """Web Mercator tile bounds from the cache_factory scheme (origin top-left, 256 px)."""
    span = web_mercator_span(level)
    xmin = -ORIGIN + col * span
    ymax = ORIGIN - row * span
    return xmin, ymax - span, xmin + span, ymax


def overlaps(level: int, row: int, col: int, rect: tuple[float, float, float, float]) -> bool:
    """Positive-area overlap; a hundredth of a pixel absorbs float noise, so tiles that only
    touch the rectangle along an edge do not count."""
    tol = LEVEL0_RES / 2**level / 100
    xmin, ymin, xmax, ymax = tile_bounds(level, row, col)
    return (min(xmax, rect[2]) - max(xmin, rect[0]) > tol
            and min(ymax, rect[3]) - max(ymin, rect[1]) > tol)


def to_mercator(lon_min, lat_min, lon_max, lat_max) -> tuple[float, float, float, float]:
    """EPSG:3857 from its definition (spherical Mercator, R = 6378137 m), not from PROJ/QGIS."""

    def forward(lon: float, lat: float) -> tuple[float, float]:
        return (EARTH_RADIUS * math.radians(lon),
                EARTH_RADIUS * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)))

    return (*forward(lon_min, lat_min), *forward(lon_max, lat_max))


def make_cache(root: Path, name: str, tiles: dict[int, TileRange], fmt: Optional[str] = None,
               skip=(), tile_size: int = 256, levels: int = 12) -> tuple[Path, dict]:
    """A synthetic Web Mercator V2 cache at root/name/Layers; returns (folder, tiles)."""
    folder = root / name
    written = write_cache(folder / "Layers", web_mercator_scheme(levels, tile_size=tile_size),
                          tiles, fmt=fmt, skip=skip)
    return folder, written


# --- shared synthetic caches ----------------------------------------------------------------


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory) -> tuple[Path, dict]:
    """Web Mercator, levels 0-4 fully tiled (341 tiles), 12 LODs in the scheme."""
    root = tmp_path_factory.mktemp("world")
    return make_cache(root, "world", {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(5)})


@pytest.fixture(scope="module")
def multi_bundle_cache(tmp_path_factory) -> tuple[Path, dict]:
    """Levels 0-3 full plus a level-8 block across four bundles (rows/cols 124-131)."""
    root = tmp_path_factory.mktemp("multi")
    tiles = {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(4)}
    tiles[8] = TileRange(124, 131, 124, 131)
    return make_cache(root, "multi", tiles)


# --- every fixture to every output kind -----------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("fixture_key", list(FIXTURES))
def test_fixture_exports_to_every_kind(fixture_key, kind, fixtures_dir, tmp_path):
    """Esri-written caches round-trip into every output kind with identical tile bytes."""
    file_name, count = FIXTURES[fixture_key]
    source = Path(fixtures_dir) / file_name
    source_tiles = read_all_tiles(source)
    assert len(source_tiles) == count
    target = tmp_path / "out"
    cache_type, storage = KINDS[kind]
    result = run_export({"INPUT_SERVICE": str(source), "TARGET_CACHE_PATH": str(target),
                         "EXPORT_CACHE_TYPE": cache_type, "STORAGE_FORMAT_TYPE": storage})
    name = source.stem if source.is_file() else source.name
    out = output_path(target, name, kind)
    assert Path(result["OUTPUT_CACHE_PATH"]) == out
    check_written_format(out, kind)
    tiles = read_output(out, kind)
    assert result["TILE_COUNT"] == len(tiles) == count
    assert tiles == source_tiles
    top = out.parent if cache_type == 0 else out
    assert sorted(p.name for p in target.iterdir()) == [top.name]


# --- levels and scales ----------------------------------------------------------------------


def test_levels_select_listed_levels_and_ranges(world_cache, tmp_path):
    folder, source = world_cache
    result = run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(tmp_path),
                         "LEVELS": "0-2,4"})
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    expected = {k: v for k, v in source.items() if k[0] in (0, 1, 2, 4)}
    assert tiles == expected
    assert result["TILE_COUNT"] == len(expected) == 1 + 4 + 16 + 256


@pytest.mark.parametrize("scales", [
    "591657527.591555;73957190.948944",
    "1:591657527.59;73957190.95",
    "1:591657527.59;1:73957190.95",
])
def test_scales_select_levels_exact_and_rounded(scales, world_cache, tmp_path):
    folder, source = world_cache
    result = run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(tmp_path),
                         "SCALES": scales})
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    assert {k[0] for k in tiles} == {0, 3}
    assert tiles == {k: v for k, v in source.items() if k[0] in (0, 3)}


def test_scales_of_esri_fixture_select_levels(fixtures_dir, tmp_path):
    """Scales as printed in the Esri sample's conf.xml, rounded to 2 and 1 decimals."""
    source = Path(fixtures_dir) / "esri-sample-compact-v2"
    result = run_export({"INPUT_SERVICE": str(source), "TARGET_CACHE_PATH": str(tmp_path),
                         "SCALES": "1:591657527.59;147914381.9"})
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    assert tiles == {k: v for k, v in read_all_tiles(source).items() if k[0] in (0, 2)}
    assert result["TILE_COUNT"] == 1 + 16


def test_scales_and_levels_together_is_an_error(world_cache, tmp_path):
    from qgis.core import QgsProcessingException

    folder, _ = world_cache
    target = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="either SCALES or LEVELS"):
        run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(target),
                    "LEVELS": "0-2", "SCALES": "591657527.591555"})
    assert not target.exists() or not any(target.iterdir())


# --- export extent --------------------------------------------------------------------------


def test_extent_in_web_mercator_selects_overlapping_tiles_only(world_cache, tmp_path):
    """Edges on level-4 tile boundaries: the neighbours that only touch them stay out."""
    folder, source = world_cache
    span4 = web_mercator_span(4)
    rect = (-ORIGIN + 5 * span4, ORIGIN - 11 * span4 + 0.3 * span4,
            -ORIGIN + 9 * span4, ORIGIN - 6 * span4)
    extent = f"{rect[0]!r},{rect[2]!r},{rect[1]!r},{rect[3]!r} [EPSG:3857]"
    result = run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(tmp_path),
                         "EXPORT_EXTENT": extent})
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    expected = {k: v for k, v in source.items() if overlaps(*k, rect)}
    assert tiles == expected
    assert result["TILE_COUNT"] == len(expected)
    level4 = {(r, c) for (z, r, c) in tiles if z == 4}
    assert level4 == {(r, c) for r in range(6, 11) for c in range(5, 9)}
    # Neighbours touching the west, east and north edges exist in the source but were skipped.
    for key in ((4, 8, 4), (4, 8, 9), (4, 5, 6)):
        assert key in source and key not in tiles


def test_extent_in_wgs84_over_web_mercator_cache(world_cache, tmp_path):
    """Longitudes -22.5 and 45 lie on level-4 tile edges; latitudes 20/55 are inside tiles."""
    folder, source = world_cache
    rect = to_mercator(-22.5, 20.0, 45.0, 55.0)
    result = run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(tmp_path),
                         "EXPORT_EXTENT": "-22.5,45,20,55 [EPSG:4326]"})
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    expected = {k: v for k, v in source.items() if overlaps(*k, rect)}
    assert tiles == expected
    assert result["TILE_COUNT"] == len(expected)
    cols4 = {c for (z, _, c) in tiles if z == 4}
    assert cols4 == {7, 8, 9}  # -22.5 = edge of cols 6|7, 45 = edge of cols 9|10
    assert (4, 5, 6) in source and (4, 5, 10) in source


# --- area of interest -----------------------------------------------------------------------

L_SHAPE = [(-40, 20), (50, 20), (50, 35), (10, 35), (10, 60), (-40, 60), (-40, 20)]
L_PARTS = ((-40.0, 20.0, 10.0, 60.0), (-40.0, 20.0, 50.0, 35.0))  # lon/lat rectangles


def write_vector(path: Path, driver: str, wkts: list[str]) -> Path:
    """A layer in EPSG:4326 written with OGR, one feature per WKT."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    data_source = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    geometry_type = ogr.CreateGeometryFromWkt(wkts[0]).GetGeometryType()
    layer = data_source.CreateLayer("aoi", srs, geometry_type)
    layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    for number, wkt in enumerate(wkts):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("id", number)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(feature)
    layer = None
    data_source = None  # closes and flushes the file
    return path


def l_shape_wkt() -> str:
    return "POLYGON((" + ",".join(f"{x} {y}" for x, y in L_SHAPE) + "))"


@pytest.mark.parametrize("driver,suffix", [("GeoJSON", "geojson"), ("GPKG", "gpkg")])
def test_area_of_interest_selects_tiles_meeting_the_polygon(driver, suffix, world_cache,
                                                            tmp_path):
    folder, source = world_cache
    aoi = write_vector(tmp_path / f"aoi.{suffix}", driver, [l_shape_wkt()])
    # whole tiles: this is about which tiles are taken (test_clipping checks the pixels)
    result = run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(tmp_path / "o"),
                         "AREA_OF_INTEREST": str(aoi), "DISABLE_CLIPPING": True})
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    parts = [to_mercator(*part) for part in L_PARTS]
    expected = {k: v for k, v in source.items() if any(overlaps(*k, p) for p in parts)}
    assert tiles == expected
    assert result["TILE_COUNT"] == len(expected)
    # Tile L4 R5 C9 (lon 22.5..45, lat 41..55.8) is inside the polygon's bounding box but in the
    # notch of the L, so it must not be exported, while the bbox would have taken it.
    bbox = to_mercator(-40, 20, 50, 60)
    assert overlaps(4, 5, 9, bbox)
    assert (4, 5, 9) in source and (4, 5, 9) not in tiles
    assert len({k for k in source if overlaps(*k, bbox)}) > len(expected)


def test_point_layer_as_area_of_interest_is_an_error(world_cache, tmp_path):
    from qgis.core import QgsProcessingException

    folder, _ = world_cache
    points = write_vector(tmp_path / "points.geojson", "GeoJSON", ["POINT(10 50)"])
    target = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="(?i)polygon"):
        run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(target),
                    "AREA_OF_INTEREST": str(points)})
    assert not target.exists() or not any(target.iterdir())


def test_area_of_interest_wins_over_extent_with_a_warning(world_cache, tmp_path):
    folder, source = world_cache
    aoi = write_vector(tmp_path / "aoi.geojson", "GeoJSON", [l_shape_wkt()])
    feedback = recording_feedback()
    result = run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(tmp_path / "o"),
                         "AREA_OF_INTEREST": str(aoi), "DISABLE_CLIPPING": True,
                         "EXPORT_EXTENT": "100,170,-40,-10 [EPSG:4326]"}, feedback=feedback)
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    parts = [to_mercator(*part) for part in L_PARTS]
    assert tiles == {k: v for k, v in source.items() if any(overlaps(*k, p) for p in parts)}
    warnings = " ".join(feedback.warnings)
    assert "AREA_OF_INTEREST" in warnings and "EXPORT_EXTENT" in warnings
    assert not feedback.errors


# --- merging into an existing cache ---------------------------------------------------------

MERGE_LEVELS = {2: TileRange(0, 3, 0, 3), 3: TileRange(0, 7, 0, 7)}
MERGE_WINDOW = (2, 4, 2, 4)  # level-3 rows 2-4, cols 2-4
MERGE_SKIPPED = {(3, 3, 3), (3, 4, 2)}  # inside the window, missing from the new source


def merge_extent() -> str:
    span3 = web_mercator_span(3)
    r0, r1, c0, c1 = MERGE_WINDOW
    xmin, xmax = -ORIGIN + c0 * span3, -ORIGIN + (c1 + 1) * span3
    ymin, ymax = ORIGIN - (r1 + 1) * span3, ORIGIN - r0 * span3
    return f"{xmin!r},{xmax!r},{ymin!r},{ymax!r} [EPSG:3857]"


def in_window(key: Key) -> bool:
    level, row, col = key
    r0, r1, c0, c1 = MERGE_WINDOW
    return level == 3 and r0 <= row <= r1 and c0 <= col <= c1


@pytest.fixture(scope="module")
def merge_sources(tmp_path_factory):
    """Two caches named `merge` on the same scheme: `old` (JPEG bytes) builds the target,
    `new` (PNG bytes, two window tiles missing) is exported into it."""
    root = tmp_path_factory.mktemp("merge")
    old_folder, old_tiles = make_cache(root / "old", "merge", MERGE_LEVELS, fmt="JPEG")
    new_folder, new_tiles = make_cache(root / "new", "merge", MERGE_LEVELS, fmt="PNG",
                                       skip=MERGE_SKIPPED)
    assert not set(old_tiles.values()) & set(new_tiles.values())
    return old_folder, old_tiles, new_folder, new_tiles


def rgba(data: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(np.float64)


def over(top, bottom):
    """Porter-Duff over, straight alpha, written here independently of the engine."""
    import numpy as np

    ta, ba = top[..., 3:] / 255, bottom[..., 3:] / 255
    alpha = ta + ba * (1 - ta)
    rgb = (top[..., :3] * ta + bottom[..., :3] * ba * (1 - ta)) / np.where(alpha > 0, alpha, 1)
    return np.concatenate([rgb, alpha * 255], axis=-1)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_merge_into_existing_cache(kind, overwrite, merge_sources, tmp_path):
    """Outside the export: kept; inside but absent from the input: kept unless OVERWRITE.
    Exported tiles replace existing ones with OVERWRITE; without it (MERGE) they are drawn over
    them, so the old tile shows through the new tiles' transparent corner."""
    old_folder, old_tiles, new_folder, new_tiles = merge_sources
    cache_type, storage = KINDS[kind]
    common = {"TARGET_CACHE_PATH": str(tmp_path), "EXPORT_CACHE_TYPE": cache_type,
              "STORAGE_FORMAT_TYPE": storage}
    first = run_export({**common, "INPUT_SERVICE": str(old_folder)})
    assert read_output(first["OUTPUT_CACHE_PATH"], kind) == old_tiles
    result = run_export({**common, "INPUT_SERVICE": str(new_folder), "LEVELS": "3",
                         "EXPORT_EXTENT": merge_extent(), "OVERWRITE": overwrite})
    assert result["OUTPUT_CACHE_PATH"] == first["OUTPUT_CACHE_PATH"]
    exported = {k: v for k, v in new_tiles.items() if in_window(k)}
    assert result["TILE_COUNT"] == len(exported) == 9 - len(MERGE_SKIPPED)
    expected = dict(old_tiles)
    expected.update(exported)
    if overwrite:
        for key in MERGE_SKIPPED:
            del expected[key]
    tiles = read_output(result["OUTPUT_CACHE_PATH"], kind)
    assert tiles.keys() == expected.keys()
    for key, data in tiles.items():
        if overwrite or key not in exported:
            assert data == expected[key], key
        else:
            composite = over(rgba(new_tiles[key]), rgba(old_tiles[key]))
            assert abs(rgba(data) - composite).max() <= 1, key
            assert (rgba(data)[..., 3] == 255).all()  # the old tile filled the corner
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("difference", ["512px", "epsg4326"])
@pytest.mark.parametrize("kind", ["dataset-v2", "dataset-v1", "tpkx", "tpk"])
def test_merge_into_different_scheme_is_refused(kind, difference, fixtures_dir, tmp_path):
    """The error names what differs, and the existing target is left byte for byte as it was."""
    from qgis.core import QgsProcessingException

    cache_type, storage = KINDS[kind]
    target = tmp_path / "target"
    common = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": cache_type,
              "STORAGE_FORMAT_TYPE": storage}
    if difference == "512px":
        name = "shared"
        existing, _ = make_cache(tmp_path / "a", name, {1: TileRange(0, 1, 0, 1)}, tile_size=512)
        pattern = "tile size"
    else:
        existing = Path(fixtures_dir) / "arcgis-pro-wgs84.tpkx"
        name = existing.stem
        pattern = "CRS"
    run_export({**common, "INPUT_SERVICE": str(existing), "LEVELS": "1"})
    source, _ = make_cache(tmp_path / "b", name, {1: TileRange(0, 1, 0, 1)})
    before = snapshot(target)
    with pytest.raises(QgsProcessingException, match=pattern) as raised:
        run_export({**common, "INPUT_SERVICE": str(source), "LEVELS": "1"})
    assert "different tiling scheme" in str(raised.value)
    assert snapshot(target) == before


@pytest.mark.parametrize("storage", [1, 0, 2])
def test_staged_copy_gives_the_same_result(storage, merge_sources, tmp_path):
    """COPY_DATA_FROM_SERVER only changes how the update is committed, never its result."""
    old_folder, _, new_folder, _ = merge_sources
    trees = []
    for staged in (False, True):
        target = tmp_path / f"staged-{staged}"
        common = {"TARGET_CACHE_PATH": str(target), "STORAGE_FORMAT_TYPE": storage}
        run_export({**common, "INPUT_SERVICE": str(old_folder)})
        result = run_export({**common, "INPUT_SERVICE": str(new_folder), "LEVELS": "3",
                             "EXPORT_EXTENT": merge_extent(), "OVERWRITE": True,
                             "COPY_DATA_FROM_SERVER": staged})
        assert result["TILE_COUNT"] == 9 - len(MERGE_SKIPPED)
        trees.append(snapshot(target))
    assert trees[0] == trees[1]
    assert not [k for k in trees[1] if "partial" in k or k.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["dataset-v2", "dataset-v1", "dataset-exploded", "tpkx"])
def test_worker_count_does_not_change_the_output(kind, multi_bundle_cache, tmp_path):
    folder, source = multi_bundle_cache
    cache_type, storage = KINDS[kind]
    outputs = []
    for workers in (1, 8):
        result = run_export({"INPUT_SERVICE": str(folder),
                             "TARGET_CACHE_PATH": str(tmp_path / f"w{workers}"),
                             "EXPORT_CACHE_TYPE": cache_type, "STORAGE_FORMAT_TYPE": storage,
                             "NUM_OF_CACHING_SERVICE_INSTANCES": workers})
        assert result["TILE_COUNT"] == len(source)
        assert read_output(result["OUTPUT_CACHE_PATH"], kind) == source
        out = Path(result["OUTPUT_CACHE_PATH"])
        if cache_type == 0:
            outputs.append(snapshot(out))
        else:
            with zipfile.ZipFile(out) as archive:
                members = {i.filename: archive.read(i) for i in archive.infolist()}
            item = json.loads(members.pop("iteminfo.json"))
            item.pop("guid")  # a fresh GUID per package is expected
            outputs.append((members, item))
    assert outputs[0] == outputs[1]


# --- the result opens in QGIS / GDAL --------------------------------------------------------


def test_written_dataset_opens_in_qgis_and_gdal_with_the_same_pixels(multi_bundle_cache,
                                                                       tmp_path):
    """QGIS opens the Layers folder's conf.xml through GDAL (ESRIC), in EPSG:3857, and GDAL
    decodes a tile to exactly the pixels of the source tile."""
    import numpy as np
    from osgeo import gdal
    from PIL import Image
    from qgis.core import QgsRasterLayer

    folder, source = multi_bundle_cache
    result = run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(tmp_path)})
    conf = Path(result["OUTPUT_CACHE_PATH"]) / "conf.xml"
    layer = QgsRasterLayer(str(conf), "x", "gdal")
    assert layer.isValid(), layer.error().summary()
    assert layer.crs().authid() == "EPSG:3857"
    assert layer.bandCount() == 4
    del layer

    dataset = gdal.Open(str(conf))
    assert dataset.GetDriver().ShortName == "ESRIC"
    for level, row, col in ((3, 2, 5), (8, 130, 125), (0, 0, 0)):
        width = 256 * 2**level
        band = dataset.GetRasterBand(1)
        if dataset.RasterXSize == width:
            index = None
        else:
            index = next(i for i in range(band.GetOverviewCount())
                         if band.GetOverview(i).XSize == width)
        bands = []
        for number in range(1, dataset.RasterCount + 1):
            raster = dataset.GetRasterBand(number)
            raster = raster if index is None else raster.GetOverview(index)
            bands.append(raster.ReadAsArray(col * 256, row * 256, 256, 256))
        pixels = np.stack(bands, axis=-1)
        reference = np.asarray(Image.open(io.BytesIO(source[(level, row, col)])).convert("RGBA"))
        assert pixels.shape == reference.shape
        assert (pixels == reference).all(), (level, row, col)
    dataset = None  # noqa: F841

