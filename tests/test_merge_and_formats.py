"""MERGE / OVERWRITE into existing caches and TILE_FORMAT conversions, checked pixel by pixel.

Expected values are computed here, never by the plugin's pixel code: tiles are decoded with PIL,
"over" is Porter-Duff with straight alpha in float64 numpy, and which pixel centres lie inside the
area of interest comes from GDAL's rasterizer run on the very polygon file the plugin reads.
Outputs are read with the spec-only readers of independent_readers (and the engine's reader,
which must agree with them), and the Compact V2 outputs are opened with GDAL's ESRIC driver.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import (  # noqa: E402
    LEVEL0_RES,
    ORIGIN,
    read_all_tiles,
    read_output,
    snapshot,
    tile_image,
    web_mercator_scheme,
)
from independent_readers import (  # noqa: E402
    V2_DATA_START,
    bundle_origin,
    gdal_expected,
    gdal_tile,
    no_leftovers,
    tpkx_tiles,
    v2_folder_tiles,
)
from test_algorithm import KINDS, output_path, run_export  # noqa: E402

from export_map_server_cache.core.formats.conf_xml import write_conf_cdi, write_conf_xml  # noqa: E402
from export_map_server_cache.core.formats.storage_formats import open_writer  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import (  # noqa: E402
    PACKET_SIZE,
    Lod,
    StorageFormat,
    TileRange,
    TilingScheme,
)

pytestmark = pytest.mark.usefixtures("plugin_provider")

Key = tuple[int, int, int]
SIZE = 256
# TILE_FORMAT enum values
FORMAT_CODES = {"keep": 0, "PNG": 1, "PNG8": 2, "JPEG": 3, "MIXED": 4, "PNG24": 5, "PNG32": 6}
PNG_TOLERANCE = 1  # rounding of "over" (float32 in the plugin, float64 here)


# --- images -----------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[pixels.ndim if pixels.ndim == 2 else pixels.shape[2]]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode).save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB").save(out, "JPEG",
                                                                      quality=quality)
    return out.getvalue()


def rgba(data: bytes) -> np.ndarray:
    """RGBA pixels of a tile, decoded by PIL (a tRNS palette or colour key becomes alpha)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image.convert("RGBA")).copy()


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def png_colour_type(data: bytes) -> int:
    """IHDR colour type (byte 25): 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA."""
    assert is_png(data) and data[12:16] == b"IHDR", data[:16]
    return data[25]


def png_has_trns(data: bytes) -> bool:
    """Whether a tRNS chunk comes before the image data (chunk walk per the PNG spec)."""
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind == b"tRNS":
            return True
        if kind == b"IDAT":
            return False
        offset += 12 + length
    return False


def keyed(pixels: np.ndarray) -> np.ndarray:
    """What a PNG24 tile with one transparent colour holds of RGBA pixels."""
    out = pixels.copy()
    out[..., 3] = np.where(pixels[..., 3] >= 128, 255, 0)
    return out


def colour_count(pixels: np.ndarray) -> int:
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Porter-Duff "over", straight (not premultiplied) alpha, rounded to nearest."""
    ta = top[..., 3:4].astype(np.float64) / 255.0
    ba = bottom[..., 3:4].astype(np.float64) / 255.0
    alpha = ta + ba * (1.0 - ta)
    weighted = top[..., :3] * ta + bottom[..., :3] * ba * (1.0 - ta)
    rgb = np.where(alpha > 0, weighted / np.maximum(alpha, 1e-12), 0.0)
    out = np.zeros(top.shape, np.uint8)
    out[..., :3] = np.clip(np.rint(rgb), 0, 255)
    out[..., 3] = np.clip(np.rint(alpha[..., 0] * 255.0), 0, 255)
    return out


def on_white(pixels: np.ndarray) -> np.ndarray:
    """What a JPEG of RGBA pixels should show: the pixels drawn over opaque white."""
    alpha = pixels[..., 3:4].astype(np.float64) / 255.0
    return np.clip(np.rint(pixels[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(
        np.uint8)


def normalized(pixels: np.ndarray) -> np.ndarray:
    """RGBA with the colour of fully transparent pixels zeroed (it carries no meaning)."""
    out = pixels.astype(np.int32)
    out[out[..., 3] == 0] = 0
    return out


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.shape[-1] == 4:
        return int(np.abs(normalized(a) - normalized(b)).max())
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def jpeg_error(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(mean, 99th percentile) absolute difference of RGB pixels."""
    diff = np.abs(actual[..., :3].astype(np.int32) - expected[..., :3].astype(np.int32))
    return float(diff.mean()), float(np.percentile(diff, 99))


JPEG_MEAN, JPEG_P99 = 6.0, 64.0  # a JPEG (quality >= 75) of sharp synthetic tiles vs its pixels


def jpeg_close(actual: np.ndarray, expected: np.ndarray) -> bool:
    mean, p99 = jpeg_error(actual, expected)
    return mean <= JPEG_MEAN and p99 <= JPEG_P99


def quantization(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as image:
        return {k: list(v) for k, v in image.quantization.items()}


def reference_quantization(quality: int) -> dict:
    """The quantization tables a JPEG encoded at `quality` carries (IJG scaling, via PIL)."""
    grey = np.full((16, 16, 3), 128, np.uint8)
    return quantization(jpeg_bytes(grey, quality))


# --- caches, polygons, masks -----------------------------------------------------------------


def write_bundles(alllayers: Path, storage: StorageFormat, tiles: dict[Key, bytes]) -> None:
    """Tiles into bundles (or tile files) with the engine's low-level writers, row-major."""
    groups: dict[tuple[int, int, int], list] = {}
    for (level, row, col), data in tiles.items():
        bundle = (level, row - row % PACKET_SIZE, col - col % PACKET_SIZE)
        groups.setdefault(bundle, []).append((row, col, data))
    for (level, brow, bcol), items in sorted(groups.items()):
        writer = open_writer(storage, alllayers, level, brow, bcol, "spec")
        for row, col, data in sorted(items):
            writer.add(row, col, data)
        writer.commit()


def write_dataset(layers: Path, scheme: TilingScheme, tiles: dict[Key, bytes]) -> Path:
    """A cache dataset <layers>/{conf.xml, conf.cdi, _alllayers} holding exactly `tiles`."""
    write_bundles(layers / "_alllayers", scheme.storage_format, tiles)
    extent = None
    for level, row, col in tiles:
        extent = scheme.range_extent(level, TileRange(row, row, col, col)).union(extent)
    layers.mkdir(parents=True, exist_ok=True)
    (layers / "conf.xml").write_bytes(write_conf_xml(scheme))
    (layers / "conf.cdi").write_bytes(write_conf_cdi(extent, scheme.spatial_reference))
    return layers.parent


def write_polygons(path: Path, epsg: int, rings: list[list[list[tuple[float, float]]]]) -> Path:
    """A GeoPackage layer in EPSG:`epsg`, one polygon feature per [outer, *holes] ring list."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    data_source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = data_source.CreateLayer("aoi", srs, ogr.wkbPolygon)
    for polygon_rings in rings:
        text = ",".join(
            "(" + ",".join(f"{x!r} {y!r}" for x, y in [*ring, ring[0]]) + ")"
            for ring in polygon_rings)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON({text})"))
        layer.CreateFeature(feature)
    layer = None
    data_source = None  # noqa: F841 - closes the file
    return path


def rasterize(aoi: Path, geotransform: tuple, width: int, height: int) -> np.ndarray:
    """(height, width) bools: pixels whose centre GDAL's rasterizer puts inside the polygons."""
    from osgeo import gdal, ogr

    vector = ogr.Open(str(aoi))
    layer = vector.GetLayer(0)
    raster = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    raster.SetGeoTransform(geotransform)
    raster.SetProjection(layer.GetSpatialRef().ExportToWkt())
    assert gdal.RasterizeLayer(raster, [1], layer, burn_values=[1]) == 0
    mask = raster.GetRasterBand(1).ReadAsArray().astype(bool)
    raster = vector = None  # noqa: F841
    return mask


def tile_mask(mask: np.ndarray, row: int, col: int, size: int = SIZE) -> np.ndarray:
    return mask[row * size:(row + 1) * size, col * size:(col + 1) * size]


def category(mask: np.ndarray) -> str:
    if mask.all():
        return "inside"
    return "boundary" if mask.any() else "outside"


def pixel_ring(points, x0: float, y0: float, res: float) -> list[tuple[float, float]]:
    """Pixel coordinates of a level grid (origin top-left) to map coordinates."""
    return [(x0 + px * res, y0 - py * res) for px, py in points]


def copy_writable(source: Path, destination: Path) -> None:
    """A writable copy of a read-only fixture (copytree would copy the read-only modes)."""
    shutil.copytree(source, destination, copy_function=shutil.copyfile)
    for folder, _, _ in os.walk(destination):
        os.chmod(folder, 0o755)


def conf_values(conf: Path) -> tuple[str, int]:
    text = conf.read_text("utf-8")
    fmt = re.search(r"<CacheTileFormat>([^<]*)</CacheTileFormat>", text).group(1)
    quality = int(re.search(r"<CompressionQuality>([^<]*)</CompressionQuality>", text).group(1))
    return fmt, quality


def root_json_values(package: Path) -> tuple[str, int]:
    with zipfile.ZipFile(package) as archive:
        root = json.loads(archive.read("root.json"))
    info = root["tileImageInfo"]
    for key in ("format", "compressionQuality"):  # where tileInfo repeats them, it must agree
        if key in root["tileInfo"]:
            assert root["tileInfo"][key] == info[key], (key, root["tileInfo"], info)
    return info["format"], info["compressionQuality"]


def package_members(package: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


# --- goal A1: MERGE / OVERWRITE with a clipping area of interest, every target kind ------------

A_LEVEL = 3
A_RES = LEVEL0_RES / 2**A_LEVEL
A_GRID = SIZE * 2**A_LEVEL  # level-3 pixels across the world
# The area of interest in level-3 pixel coordinates (x right, y down); vertices at odd fractions
# of a pixel so that no edge passes through a pixel centre. A pentagon with a hole, and a
# separate quadrilateral: two features, unioned by the plugin.
A_OUTER = [(300.37, 280.61), (1700.23, 420.41), (1790.71, 1650.13), (900.29, 1820.77),
           (250.53, 1300.19)]
A_HOLE = [(1100.31, 1050.77), (1400.63, 1090.29), (1350.47, 1380.93), (1080.19, 1330.37)]
A_ISLAND = [(1560.33, 40.71), (2000.91, 60.23), (1990.43, 200.87), (1570.61, 190.13)]
NEW_KINDS = ("opaque_rgb", "semi", "opaque_rgba", "semi", "clear", None)  # None: no tile


def key_colour(key: Key, salt: int) -> tuple[int, int, int]:
    level, row, col = key
    return ((37 * row + 11 * col + 60 * level + salt) % 200 + 30,
            (53 * col + 7 * row + 3 * salt) % 200 + 30,
            (91 * (row + col) + 5 * level + 7 * salt) % 200 + 30)


# level-3 (row, col) of old tiles that are partly see-through / missing, and of new tiles that
# are fully transparent whatever the cycle above says (see test_aoi_design_covers_every_case)
OLD_SEMI = {(2, 3), (4, 1), (1, 4), (0, 1), (6, 3)}
OLD_MISSING = {(2, 4), (4, 3), (1, 1), (6, 2), (0, 5), (3, 7), (5, 6)}
NEW_CLEAR = {(3, 3)}


def old_is_semi(key: Key) -> bool:
    return key[0] == A_LEVEL and key[1:] in OLD_SEMI


def old_is_missing(key: Key) -> bool:
    return key[0] == A_LEVEL and key[1:] in OLD_MISSING


def new_kind(key: Key) -> Optional[str]:
    if key[1:] in NEW_CLEAR:
        return "clear"
    return NEW_KINDS[(key[1] * 3 + key[2]) % len(NEW_KINDS)]


def old_tile_pixels(key: Key) -> np.ndarray:
    """Opaque solid colours; a few tiles are partly see-through so that "over" also meets a
    translucent bottom."""
    pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    pixels[..., :3] = key_colour(key, 0)
    pixels[..., 3] = 255
    if old_is_semi(key):
        pixels[:, :128, 3] = 90
        pixels[200:, :, 3] = 0
    return pixels


def new_tile_pixels(key: Key, kind: str) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    colour = key_colour(key, 17)
    pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    pixels[..., 0] = colour[0]
    pixels[..., 1] = (colour[1] + yy // 4) % 256
    pixels[..., 2] = np.where(((xx + yy) // 16) % 2 == 0, colour[2], 255 - colour[2])
    pixels[..., 3] = 255
    if kind == "semi":
        pixels[..., 3] = (xx // 16) * 17  # 0, 17, ..., 255 in bands 16 px wide
        pixels[(yy < 96) & (xx >= 160)] = (250, 10, 10, 0)  # transparent, colour left behind
        pixels[(yy >= 192) & (xx < 64), 3] = 255
    elif kind == "clear":
        pixels[..., 3] = 0
    return pixels


@dataclass
class AoiCaches:
    old_folder: Path
    old_tiles: dict[Key, bytes]
    new_folder: Path
    new_tiles: dict[Key, bytes]
    aoi: Path
    mask: np.ndarray  # level-3 pixel centres inside the area of interest


@pytest.fixture(scope="module")
def aoi_caches(tmp_path_factory) -> AoiCaches:
    """`old` (levels 2 and 3) builds the target; `new` (level 3, tiles of every kind) is
    exported into it through the area of interest. Both are called `mc`."""
    root = tmp_path_factory.mktemp("aoi-merge")
    scheme = web_mercator_scheme(6)
    old_tiles: dict[Key, bytes] = {}
    for level in (2, 3):
        for row in range(2**level):
            for col in range(2**level):
                key = (level, row, col)
                if old_is_missing(key):
                    continue
                pixels = old_tile_pixels(key)
                old_tiles[key] = png_bytes(pixels if old_is_semi(key) else pixels[..., :3])
    new_tiles: dict[Key, bytes] = {}
    for row in range(8):
        for col in range(8):
            key = (A_LEVEL, row, col)
            kind = new_kind(key)
            if kind is None:
                continue
            pixels = new_tile_pixels(key, kind)
            new_tiles[key] = png_bytes(pixels[..., :3] if kind == "opaque_rgb" else pixels)
    old_folder = write_dataset(root / "old" / "mc" / "Layers", scheme, old_tiles)
    new_folder = write_dataset(root / "new" / "mc" / "Layers", scheme, new_tiles)
    rings = [[pixel_ring(A_OUTER, -ORIGIN, ORIGIN, A_RES), pixel_ring(A_HOLE, -ORIGIN, ORIGIN,
                                                                      A_RES)],
             [pixel_ring(A_ISLAND, -ORIGIN, ORIGIN, A_RES)]]
    aoi = write_polygons(root / "aoi.gpkg", 3857, rings)
    mask = rasterize(aoi, (-ORIGIN, A_RES, 0.0, ORIGIN, 0.0, -A_RES), A_GRID, A_GRID)
    return AoiCaches(old_folder, old_tiles, new_folder, new_tiles, aoi, mask)


def test_aoi_design_covers_every_case(aoi_caches):
    """The synthetic caches meet every case the merge tests are about (so they can fail)."""
    cases = set()
    for row in range(8):
        for col in range(8):
            key = (A_LEVEL, row, col)
            cases.add((category(tile_mask(aoi_caches.mask, row, col)), new_kind(key),
                       not old_is_missing(key)))
    for where in ("inside", "boundary"):
        for kind in ("opaque_rgb", "opaque_rgba", "semi", "clear", None):
            assert (where, kind, True) in cases, (where, kind)
        assert (where, "semi", False) in cases, where
    assert ("inside", "clear", False) in cases
    assert ("outside", "semi", True) in cases and ("outside", "opaque_rgb", True) in cases
    assert any(old_is_semi((A_LEVEL, r, c)) and category(tile_mask(aoi_caches.mask, r, c))
               == "boundary" and new_kind((A_LEVEL, r, c)) == "semi"
               for r in range(8) for c in range(8))


def expected_merge(caches: AoiCaches, overwrite: bool) -> dict[Key, tuple]:
    """Per tile of the result: ("bytes", b) | ("pixels", rgba) | ("absent",)."""
    expected: dict[Key, tuple] = {}
    transparent = np.zeros((SIZE, SIZE, 4), np.uint8)
    for key, data in caches.old_tiles.items():
        if key[0] != A_LEVEL:
            expected[key] = ("bytes", data)  # a level outside LEVELS
    for row in range(8):
        for col in range(8):
            key = (A_LEVEL, row, col)
            mask = tile_mask(caches.mask, row, col)
            where = category(mask)
            old = caches.old_tiles.get(key)
            new = caches.new_tiles.get(key)
            if where == "outside" or (new is None and not overwrite):
                expected[key] = ("bytes", old) if old else ("absent",)
                continue
            new_px = rgba(new) if new is not None else transparent
            old_px = rgba(old) if old is not None else transparent
            if new is not None and where == "inside" and (old is None or new_px[..., 3].min()
                                                          == 255):
                # unclipped, and opaque or alone: copied as in a plain export (a fully
                # transparent input tile included)
                expected[key] = ("bytes", new)
                continue
            if overwrite:
                result = np.where(mask[..., None], new_px, old_px)
            else:
                clipped = new_px.copy()
                clipped[~mask] = 0
                result = over(clipped, old_px)
            expected[key] = ("pixels", result) if result[..., 3].max() > 0 else ("absent",)
    return expected


def compare(expected: dict[Key, tuple], actual: dict[Key, bytes], tolerance: int,
            describe) -> list[str]:
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want = expected.get(key, ("absent",))
        got = actual.get(key)
        label = f"{key} {describe(key)}"
        if want[0] == "absent":
            if got is not None:
                alpha = rgba(got)[..., 3].max()
                problems.append(f"{label}: expected no tile, found one (max alpha {alpha})")
        elif got is None:
            problems.append(f"{label}: tile missing")
        elif want[0] == "bytes":
            if got != want[1]:
                problems.append(f"{label}: bytes differ from the expected tile's")
        else:
            diff = max_diff(rgba(got), want[1])
            if diff > tolerance:
                problems.append(f"{label}: pixels differ by up to {diff}")
    return problems


@pytest.mark.parametrize("overwrite", [False, True], ids=["merge", "overwrite"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_merge_and_overwrite_through_a_clipping_aoi(kind, overwrite, aoi_caches, tmp_path):
    """Every tile of the result against the numpy composite: MERGE = over(clipped new, old),
    OVERWRITE = where(mask, new, old); outside the AOI and other levels: old bytes."""
    cache_type, storage = KINDS[kind]
    target = tmp_path / "target"
    common = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": cache_type,
              "STORAGE_FORMAT_TYPE": storage}
    first = run_export({**common, "INPUT_SERVICE": str(aoi_caches.old_folder)})
    out = Path(first["OUTPUT_CACHE_PATH"])
    assert out == output_path(target, "mc", kind)
    assert read_output(out, kind) == aoi_caches.old_tiles
    result = run_export({**common, "INPUT_SERVICE": str(aoi_caches.new_folder), "LEVELS": "3",
                         "AREA_OF_INTEREST": str(aoi_caches.aoi), "OVERWRITE": overwrite})
    assert Path(result["OUTPUT_CACHE_PATH"]) == out
    actual = read_output(out, kind)

    def describe(key):
        if key[0] != A_LEVEL:
            return "(level not exported)"
        where = category(tile_mask(aoi_caches.mask, key[1], key[2]))
        old = "old" if key in aoi_caches.old_tiles else "no old"
        return f"({where}, new {new_kind(key)}, {old})"

    problems = compare(expected_merge(aoi_caches, overwrite), actual, PNG_TOLERANCE, describe)
    assert not problems, "\n".join(problems)
    assert not no_leftovers(target)


# --- goal A2: merging into caches written by Esri software ------------------------------------


def test_merge_into_esri_written_compact_v2_dataset(fixtures_dir, tmp_path):
    """Esri's sample V2 dataset (JPEG, levels 0-2) takes level-2 tiles of a cache with the same
    conf.xml through a clipping AOI: inside tiles are copied, boundary tiles show the new pixels
    inside and the old outside (re-encoded as JPEG), everything else keeps its bytes; GDAL
    still opens it and reads the merged pixels."""
    from osgeo import gdal

    fixture = Path(fixtures_dir) / "esri-sample-compact-v2"
    # The plugin names an output after the input's folder (the folder above a `Layers` folder
    # when the conf.xml is in one): the fixture's folder name here.
    name = fixture.name
    target = tmp_path / "target"
    layers = target / name / "Layers"
    copy_writable(fixture, layers)
    before = snapshot(layers)
    old = v2_folder_tiles(layers / "_alllayers")
    assert len(old) == 21

    level, res = 2, LEVEL0_RES / 4
    missing = {(2, 3, 1)}
    new: dict[Key, bytes] = {}
    for key, data in old.items():
        if key[0] != level or key in missing:
            continue
        pixels = rgba(data)
        pixels[..., :3] = 255 - pixels[..., :3]  # the negative
        new[key] = jpeg_bytes(pixels, 90)
    source_layers = tmp_path / "source" / name / "Layers"
    write_bundles(source_layers / "_alllayers", StorageFormat.COMPACT_V2, new)
    shutil.copyfile(fixture / "conf.xml", source_layers / "conf.xml")
    shutil.copyfile(fixture / "conf.cdi", source_layers / "conf.cdi")

    outer = [(140.31, 150.77), (700.23, 120.41), (760.63, 640.93), (300.17, 880.29),
             (90.71, 500.23)]
    aoi = write_polygons(tmp_path / "aoi.gpkg", 3857,
                         [[pixel_ring(outer, -ORIGIN, ORIGIN, res)]])
    mask = rasterize(aoi, (-ORIGIN, res, 0.0, ORIGIN, 0.0, -res), 4 * SIZE, 4 * SIZE)
    cases = {(category(tile_mask(mask, r, c)), (2, r, c) in new) for _, r, c in old if _ == 2}
    assert cases >= {("inside", True), ("boundary", True), ("outside", True),
                     ("boundary", False)}, cases

    result = run_export({"INPUT_SERVICE": str(source_layers.parent),
                         "TARGET_CACHE_PATH": str(target), "AREA_OF_INTEREST": str(aoi)})
    assert Path(result["OUTPUT_CACHE_PATH"]) == layers
    after = snapshot(layers)
    for path in ("conf.xml", "_alllayers/L00/R0000C0000.bundle",
                 "_alllayers/L01/R0000C0000.bundle"):
        assert after[path] == before[path], path
    assert sorted(after) == sorted(before)
    merged = v2_folder_tiles(layers / "_alllayers")
    assert merged == read_all_tiles(layers)
    assert set(merged) == set(old)
    problems = []
    for key in sorted(old):
        if key[0] != level:
            assert merged[key] == old[key], key
            continue
        tile = tile_mask(mask, key[1], key[2])
        where = category(tile)
        if where == "outside" or key not in new:
            if merged[key] != old[key]:
                problems.append(f"{key} ({where}, new: {key in new}): old bytes not kept")
        elif where == "inside":
            if merged[key] != new[key]:
                problems.append(f"{key} inside: the new JPEG was not copied as it is")
        else:
            assert is_jpeg(merged[key]), key
            # encoded at the target's CompressionQuality (75 in the fixture's conf.xml)
            assert quantization(merged[key]) == reference_quantization(75), key
            want = np.where(tile[..., None], rgba(new[key]), rgba(old[key]))
            got = rgba(merged[key])
            mean, p99 = jpeg_error(got, want)
            if not jpeg_close(got, want):
                problems.append(f"{key} boundary: mean error {mean:.2f}, p99 {p99}")
            # new pixels inside, old ones outside (not the other way round)
            errors = {side: np.abs(got[..., :3].astype(np.int32) - rgba(side_tiles[key])[
                ..., :3]).mean(axis=-1) for side, side_tiles in (("new", new), ("old", old))}
            assert errors["new"][tile].mean() < errors["old"][tile].mean(), key
            assert errors["old"][~tile].mean() < errors["new"][~tile].mean(), key
    assert not problems, "\n".join(problems)

    dataset = gdal.Open(str(layers / "conf.xml"))
    assert dataset is not None and dataset.GetDriver().ShortName == "ESRIC"
    assert dataset.RasterCount == 3
    for key in sorted(k for k in merged if k[0] == level):
        read = gdal_tile(dataset, 4 * SIZE * 2**(level - 2), key[1], key[2], SIZE)
        assert read is not None, key
        image, _ = read
        assert max_diff(np.asarray(image), rgba(merged[key])[..., :3]) <= 2, key
    dataset = None  # noqa: F841


def test_merge_into_arcgis_pro_tpkx(fixtures_dir, tmp_path):
    """ArcGIS Pro's .tpkx (WGS 84, 512 px, PNG) takes translucent level-2 tiles of a cache with
    its own tiling scheme through a clipping AOI; untouched bundles are copied verbatim."""
    fixture = Path(fixtures_dir) / "arcgis-pro-wgs84.tpkx"
    name = fixture.stem
    target = tmp_path / "target"
    target.mkdir()
    package = target / fixture.name
    shutil.copyfile(fixture, package)
    old_members = package_members(package)
    old = tpkx_tiles(package)
    level, size, res = 2, 512, 0.17578125

    # the source: the fixture's level 2 exported to a V2 dataset (the plugin writes its
    # conf.xml from the package's scheme), then its pixels replaced
    # (not added to the map: GDAL 3.6 crashes reading 512 px V2 datasets, see
    # test_512px_dataset_export_survives_loading_the_result)
    staged = run_export({"INPUT_SERVICE": str(fixture), "TARGET_CACHE_PATH": str(tmp_path / "s"),
                         "LEVELS": "2", "EXPORT_EXTENT": "-180,270,-90,90 [EPSG:4326]",
                         "LOAD_RESULT": False})
    source_layers = Path(staged["OUTPUT_CACHE_PATH"])
    assert source_layers.parent.name == name
    exported = v2_folder_tiles(source_layers / "_alllayers")
    assert set(exported) == {(2, r, c) for r in range(2) for c in range(5)}
    shutil.rmtree(source_layers / "_alllayers")
    missing = {(2, 1, 1)}
    yy, xx = np.mgrid[0:size, 0:size]
    new: dict[Key, bytes] = {}
    for key, data in exported.items():
        if key in missing:
            continue
        pixels = rgba(data)
        pixels[..., :3] = 255 - pixels[..., :3]
        pixels[((xx + yy) // 40) % 2 == 0, :3] = (200, 40, 160)
        if key != (2, 0, 1):  # (2, 0, 1) stays opaque: copied whole
            pixels[..., 3] = np.clip(xx // 2, 0, 255)
            pixels[:100, 400:] = 0
        new[key] = png_bytes(pixels)
    write_bundles(source_layers / "_alllayers", StorageFormat.COMPACT_V2, new)

    # lon/lat; (2,0,1) and (2,0,2) inside, the other tiles of rows 0-1 cut, column 4 outside
    outer = [(-135.37, 90.0), (120.21, 90.0), (150.63, 10.47), (60.29, -75.83), (-170.41, -30.19)]
    aoi = write_polygons(tmp_path / "aoi.gpkg", 4326, [[outer]])
    mask = rasterize(aoi, (-180.0, res, 0.0, 90.0, 0.0, -res), 5 * size, 3 * size)
    assert category(tile_mask(mask, 0, 1, size)) == "inside"
    assert category(tile_mask(mask, 0, 2, size)) == "inside"
    assert category(tile_mask(mask, 1, 1, size)) == "boundary"
    assert category(tile_mask(mask, 0, 4, size)) == "outside"

    result = run_export({"INPUT_SERVICE": str(source_layers.parent),
                         "TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": 1,
                         "STORAGE_FORMAT_TYPE": 1, "AREA_OF_INTEREST": str(aoi)})
    assert Path(result["OUTPUT_CACHE_PATH"]) == package
    assert sorted(p.name for p in target.iterdir()) == [package.name]
    members = package_members(package)
    bundles = sorted(m for m in old_members if m.endswith(".bundle"))
    assert sorted(m for m in members if m.endswith(".bundle")) == bundles
    for member in bundles:
        if member != "tile/L02/R0000C0000.bundle":
            assert members[member] == old_members[member], member
    assert root_json_values(package) == ("PNG", 0)
    merged = tpkx_tiles(package)
    assert merged == read_all_tiles(package)
    expected: dict[Key, tuple] = {}
    for key, data in old.items():
        tile = tile_mask(mask, key[1], key[2], size) if key[0] == level else None
        if tile is None or not tile.any() or key not in new:
            expected[key] = ("bytes", data)
        elif tile.all() and rgba(new[key])[..., 3].min() == 255:
            expected[key] = ("bytes", new[key])
        else:
            clipped = rgba(new[key])
            clipped[~tile] = 0
            expected[key] = ("pixels", over(clipped, rgba(data)))
    assert sum(1 for want in expected.values() if want[0] == "pixels") >= 5
    problems = compare(expected, merged, PNG_TOLERANCE, lambda key: "")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target_format", ["JPEG", "MIXED"])
def test_merge_writes_tiles_in_the_targets_format(target_format, tmp_path):
    """A PNG cache with translucent tiles merged into a JPEG / MIXED target (TILE_FORMAT keep):
    the result tiles are encoded as the target's conf.xml says, with the composite's pixels."""
    scheme = replace(web_mercator_scheme(3, tile_format=target_format), compression_quality=75)
    keys = [(1, r, c) for r in range(2) for c in range(2)]
    lacking = (1, 1, 1)  # the target has no such tile
    old_tiles = {k: jpeg_source_tile(k, 75) for k in keys if k != lacking}
    old = write_dataset(tmp_path / "old" / "fm" / "Layers", scheme, old_tiles)
    kinds = {(1, 0, 0): "semi", (1, 0, 1): "opaque_rgba", (1, 1, 0): "clear", lacking: "semi"}
    new_pixels = {k: new_tile_pixels(k, kind) for k, kind in kinds.items()}
    new = write_dataset(tmp_path / "new" / "fm" / "Layers", web_mercator_scheme(3),
                        {k: png_bytes(p) for k, p in new_pixels.items()})
    target = tmp_path / "target"
    first = run_export({"INPUT_SERVICE": str(old), "TARGET_CACHE_PATH": str(target)})
    layers = Path(first["OUTPUT_CACHE_PATH"])
    conf_before = (layers / "conf.xml").read_bytes()
    run_export({"INPUT_SERVICE": str(new), "TARGET_CACHE_PATH": str(target)})
    assert (layers / "conf.xml").read_bytes() == conf_before
    tiles = v2_folder_tiles(layers / "_alllayers")
    assert set(tiles) == set(keys)
    for key in keys:
        below = rgba(old_tiles[key]) if key in old_tiles else np.zeros((SIZE, SIZE, 4), np.uint8)
        want = over(new_pixels[key], below)
        got = tiles[key]
        if target_format == "MIXED" and want[..., 3].min() < 255:
            assert is_png(got), key  # MIXED: transparency only in PNG tiles
            assert max_diff(rgba(got), want) <= PNG_TOLERANCE, key
            continue
        assert is_jpeg(got), key
        if got != old_tiles.get(key):  # a tile left as it was may keep its bytes
            assert quantization(got) == reference_quantization(75), key
        # as close as a quality-75 JPEG of these (sharp, synthetic) pixels can be
        flat = on_white(want)
        ref_mean, ref_p99 = jpeg_error(rgba(jpeg_bytes(flat, 75)), flat)
        mean, p99 = jpeg_error(rgba(got), flat)
        assert mean <= 1.25 * ref_mean + 0.5 and p99 <= 1.25 * ref_p99 + 4, (
            key, mean, p99, ref_mean, ref_p99)


# --- goal A3: a different tiling scheme is refused ---------------------------------------------


@pytest.mark.parametrize("difference", ["origin", "resolution"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_merge_into_other_origin_or_resolution_is_refused(kind, difference, tmp_path):
    from qgis.core import QgsProcessingException

    base = web_mercator_scheme(4)
    if difference == "origin":
        other = replace(base, origin_x=base.origin_x - 1000.0, origin_y=base.origin_y + 1000.0)
        pattern = r"tile origin \(-20037508\.342787, 20037508\.342787\) vs"
    else:
        lods = list(base.lods)
        lods[1] = Lod(1, lods[1].resolution * 1.001, lods[1].scale * 1.001)
        other = replace(base, lods=tuple(lods))
        pattern = "level 1 resolution"
    keys = [(1, r, c) for r in range(2) for c in range(2)]
    existing = write_dataset(tmp_path / "a" / "shared" / "Layers", other,
                             {k: tile_image(*k) for k in keys})
    source = write_dataset(tmp_path / "b" / "shared" / "Layers", base,
                           {k: tile_image(k[0], k[1] + 1, k[2]) for k in keys})
    cache_type, storage = KINDS[kind]
    target = tmp_path / "target"
    common = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": cache_type,
              "STORAGE_FORMAT_TYPE": storage, "LEVELS": "1"}
    run_export({**common, "INPUT_SERVICE": str(existing)})
    before = snapshot(target)
    with pytest.raises(QgsProcessingException, match=pattern) as raised:
        run_export({**common, "INPUT_SERVICE": str(source)})
    assert "different tiling scheme" in str(raised.value)
    assert snapshot(target) == before


# --- goal A4: updated bundles stay compact ------------------------------------------------------


V1_DATA_START = 60 + 4 * PACKET_SIZE * PACKET_SIZE  # header and size table (spec §2.3)


def bundle_files(out: Path, kind: str) -> dict[str, bytes]:
    """The output's .bundle files (package members or files below _alllayers)."""
    if kind in ("tpk", "tpkx"):
        return {m: d for m, d in package_members(out).items() if m.endswith(".bundle")}
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in (out / "_alllayers").rglob("*.bundle")}


def bundle_slack(name: str, data: bytes, tiles: dict[Key, bytes], v2: bool) -> int:
    """Bytes of a bundle that belong to no tile present in it (spec §2.3, §3): what an
    appending update would leave behind."""
    level = int(name.split("/")[-2][1:])
    brow, bcol = bundle_origin(name.split("/")[-1])
    records = sum(4 + len(tile) for (z, row, col), tile in tiles.items() if z == level
                  and (row - row % PACKET_SIZE, col - col % PACKET_SIZE) == (brow, bcol))
    return len(data) - (V2_DATA_START if v2 else V1_DATA_START) - records


@pytest.mark.parametrize("kind", ["dataset-v2", "tpkx", "dataset-v1", "tpk"])
def test_repeated_merges_do_not_grow_bundles(kind, aoi_caches, tmp_path):
    """README: "changed bundles are rewritten whole, so they never grow with repeated
    updates"."""
    cache_type, storage = KINDS[kind]
    target = tmp_path / "target"
    common = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": cache_type,
              "STORAGE_FORMAT_TYPE": storage}
    out = Path(run_export({**common, "INPUT_SERVICE": str(aoi_caches.old_folder)})[
        "OUTPUT_CACHE_PATH"])
    sizes, totals = [], []
    for _ in range(5):
        run_export({**common, "INPUT_SERVICE": str(aoi_caches.new_folder), "LEVELS": "3",
                    "AREA_OF_INTEREST": str(aoi_caches.aoi)})
        bundles = bundle_files(out, kind)
        totals.append(out.stat().st_size if out.is_file() else
                      sum(len(d) for d in bundles.values()))
        tiles = read_output(out, kind)
        for member, data in bundles.items():
            slack = bundle_slack(member, data, tiles, storage == 1)
            assert slack == 0, (member, slack)
        sizes.append({m: len(d) for m, d in bundles.items()})
    level3 = next(m for m in sizes[0] if "L03" in m)
    rewritten = sum(len(d) for k, d in read_output(out, kind).items()
                    if k[0] == A_LEVEL and category(tile_mask(aoi_caches.mask, k[1], k[2]))
                    != "outside")
    assert rewritten > 0.2 * sizes[0][level3]  # garbage of one merge would show
    for later, total in zip(sizes[1:], totals[1:]):
        assert later.keys() == sizes[0].keys()
        for member, size in later.items():
            assert size <= sizes[0][member] * 1.02 + 64, (member, sizes)
        assert total <= totals[0] * 1.02 + 64, totals


# --- goal A5: a TILE_FORMAT other than the target's is refused ----------------------------------


@pytest.mark.parametrize("kind,target_format,asked", [
    *[(k, "PNG", "JPEG") for k in KINDS],
    ("dataset-v2", "PNG", "PNG32"),
    ("tpkx", "PNG", "MIXED"),
    ("dataset-v2", "JPEG", "PNG"),
])
def test_tile_format_other_than_the_targets_is_refused(kind, target_format, asked, tmp_path):
    from qgis.core import QgsProcessingException

    cache_type, storage = KINDS[kind]
    fmt = "JPEG" if target_format == "JPEG" else "PNG"
    scheme = web_mercator_scheme(3, tile_format=target_format)
    keys = [(1, r, c) for r in range(2) for c in range(2)]
    existing = write_dataset(tmp_path / "a" / "shared" / "Layers", scheme,
                             {k: tile_image(*k, fmt=fmt) for k in keys})
    source = write_dataset(tmp_path / "b" / "shared" / "Layers", scheme,
                           {k: tile_image(k[0], k[1] + 1, k[2], fmt=fmt) for k in keys})
    target = tmp_path / "target"
    common = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": cache_type,
              "STORAGE_FORMAT_TYPE": storage}
    run_export({**common, "INPUT_SERVICE": str(existing)})
    before = snapshot(target)
    with pytest.raises(QgsProcessingException) as raised:
        run_export({**common, "INPUT_SERVICE": str(source), "TILE_FORMAT": FORMAT_CODES[asked]})
    message = str(raised.value)
    assert f"holds {target_format} tiles" in message and asked in message, message
    assert "TILE_FORMAT" in message, message
    assert snapshot(target) == before
    # the target's own format is accepted
    result = run_export({**common, "INPUT_SERVICE": str(source),
                         "TILE_FORMAT": FORMAT_CODES[target_format]})
    assert read_all_tiles(result["OUTPUT_CACHE_PATH"])[(1, 0, 0)] == tile_image(1, 1, 0, fmt=fmt)


# --- goal B: tile formats ---------------------------------------------------------------------

B_LEVELS = 3  # levels 0-2: 21 tiles of 256 px (GDAL 3.6 reads 256 px V2 datasets)
B_KEYS = [(z, r, c) for z in range(B_LEVELS) for r in range(2**z) for c in range(2**z)]
PNG_KINDS = ("rgb", "semi", "rgba_opaque", "rich", "paletted", "rich_semi", "rgb")


def png_source_tile(key: Key) -> tuple[str, bytes]:
    """Tiles of the PNG cache: opaque RGB, opaque RGBA, translucent (<=256 colours), rich
    opaque and rich translucent (>256 colours), paletted with a transparent entry."""
    kind = PNG_KINDS[(key[1] * 2 + key[2] + key[0]) % len(PNG_KINDS)]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    colour = key_colour(key, 5)
    pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    pixels[..., :3] = colour
    pixels[((xx // 32) + (yy // 32)) % 2 == 0, :3] = (255 - colour[0], colour[2], 40)
    pixels[..., 3] = 255
    if kind in ("rich", "rich_semi"):
        pixels[..., 0] = (xx + colour[0]) % 256
        pixels[..., 1] = (yy + colour[1]) % 256
        pixels[..., 2] = ((xx + yy) // 2) % 256
    if kind in ("semi", "rich_semi"):
        pixels[..., 3] = (yy // 16) * 17
        pixels[:40, :40] = 0
    if kind == "rgb" or kind == "rich":
        return kind, png_bytes(pixels[..., :3])
    if kind == "paletted":
        image = Image.fromarray(pixels[..., :3], "RGB").quantize(4)
        palette_size = len(image.getpalette()) // 3
        image.putpixel((0, 0), palette_size - 1)
        index = np.asarray(image).copy()
        index[:32, :32] = palette_size - 1
        image = Image.fromarray(index, "P")
        image.putpalette(Image.fromarray(pixels[..., :3], "RGB").quantize(4).getpalette())
        image.info["transparency"] = palette_size - 1
        out = io.BytesIO()
        image.save(out, "PNG", transparency=palette_size - 1)
        return kind, out.getvalue()
    return kind, png_bytes(pixels)


def jpeg_source_tile(key: Key, quality: int = 80) -> bytes:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    colour = key_colour(key, 9)
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    pixels[..., 0] = (xx * 3 // 4 + colour[0]) % 256
    pixels[..., 1] = (np.sin(yy / 9.0) * 60 + colour[1]).clip(0, 255)
    pixels[..., 2] = np.where(((xx // 20) + (yy // 20)) % 2 == 0, colour[2], 255 - colour[2])
    return jpeg_bytes(pixels, quality)


@dataclass
class FormatCaches:
    png_folder: Path
    png_tiles: dict[Key, bytes]
    png_kinds: dict[Key, str]
    jpeg_folder: Path
    jpeg_tiles: dict[Key, bytes]
    jpeg_quality: int


@pytest.fixture(scope="module")
def format_caches(tmp_path_factory) -> FormatCaches:
    root = tmp_path_factory.mktemp("formats")
    kinds, png_tiles = {}, {}
    for key in B_KEYS:
        kinds[key], png_tiles[key] = png_source_tile(key)
    png_folder = write_dataset(root / "png" / "pngcache" / "Layers",
                               web_mercator_scheme(B_LEVELS), png_tiles)
    quality = 80
    jpeg_scheme = replace(web_mercator_scheme(B_LEVELS, tile_format="JPEG"),
                          compression_quality=quality)
    jpeg_tiles = {key: jpeg_source_tile(key, quality) for key in B_KEYS}
    jpeg_folder = write_dataset(root / "jpeg" / "jpegcache" / "Layers", jpeg_scheme, jpeg_tiles)
    return FormatCaches(png_folder, png_tiles, kinds, jpeg_folder, jpeg_tiles, quality)


def test_format_sources_cover_every_case(format_caches):
    kinds = format_caches.png_kinds
    types = {png_colour_type(d) for d in format_caches.png_tiles.values()}
    assert types == {2, 3, 6}
    assert set(kinds.values()) == set(PNG_KINDS)
    for key, data in format_caches.png_tiles.items():
        many = colour_count(rgba(data)) > 256
        assert many == kinds[key].startswith("rich"), key
    assert all(colour_count(rgba(d)) > 256 for d in format_caches.jpeg_tiles.values())


def export_formats(source: Path, tmp_path: Path, **params) -> tuple[Path, Path]:
    """The same export to a V2 dataset and to a .tpkx; returns (Layers folder, package)."""
    outputs = []
    for cache_type in (0, 1):
        result = run_export({"INPUT_SERVICE": str(source), "EXPORT_CACHE_TYPE": cache_type,
                             "TARGET_CACHE_PATH": str(tmp_path / f"out{cache_type}"), **params})
        outputs.append(Path(result["OUTPUT_CACHE_PATH"]))
    return outputs[0], outputs[1]


@pytest.mark.parametrize("source_format", ["PNG", "JPEG"])
def test_keep_copies_tiles_and_records_the_input_format(source_format, format_caches, tmp_path):
    if source_format == "PNG":
        folder, tiles, quality = format_caches.png_folder, format_caches.png_tiles, 0
    else:
        folder, tiles = format_caches.jpeg_folder, format_caches.jpeg_tiles
        quality = format_caches.jpeg_quality
    layers, package = export_formats(folder, tmp_path, TILE_FORMAT=0)
    assert v2_folder_tiles(layers / "_alllayers") == tiles
    assert tpkx_tiles(package) == tiles
    assert conf_values(layers / "conf.xml") == conf_values(folder / "Layers" / "conf.xml")
    assert conf_values(layers / "conf.xml") == (source_format, quality)
    assert root_json_values(package) == (source_format, quality)


def check_converted(fmt: str, source_format: str, src: bytes, out: bytes, png_kind: str,
                    key: Key) -> None:
    """One converted tile: really encoded in `fmt`, with the source's pixels."""
    src_px = rgba(src)
    opaque = src_px[..., 3].min() == 255
    out_px = rgba(out)
    if source_format == "JPEG" and fmt in ("JPEG", "MIXED"):
        assert out == src, (key, "a JPEG tile that needs no change is copied")
        return
    if fmt == "JPEG" or (fmt == "MIXED" and opaque):
        assert is_jpeg(out), key
        mean, p99 = jpeg_error(out_px, on_white(src_px))
        assert mean <= JPEG_MEAN and p99 <= JPEG_P99, (key, png_kind, mean, p99)
        return
    assert is_png(out), key
    colour_type = png_colour_type(out)
    if fmt == "PNG":
        if source_format == "PNG":
            assert out == src, (key, "PNG tiles are copied as they are")
        else:
            assert colour_type == 2, key
    elif fmt == "MIXED":
        assert out == src, (key, png_kind, "a PNG tile with transparency stays as it is")
    elif fmt == "PNG8":
        assert colour_type == 3, key
        if colour_count(src_px) > 256:
            diff = np.abs(normalized(out_px) - normalized(src_px))
            assert diff.mean() <= 8.0, (key, png_kind, diff.mean())
            return
    elif fmt == "PNG24":
        # 24-bit; transparency as one tRNS colour: pixels less than half opaque become
        # transparent, the others opaque with their colour
        assert colour_type == 2, (key, png_kind, colour_type)
        assert png_has_trns(out) == (not opaque), (key, png_kind)
        src_px = keyed(src_px)
    elif fmt == "PNG32":
        assert colour_type == 6, key
    assert max_diff(out_px, src_px) == 0, (key, png_kind, fmt)


def expected_quality(fmt: str, source_quality: int) -> int:
    """COMPRESSION_QUALITY left empty: the cache's quality, else 75; 0 for PNG formats."""
    if fmt not in ("JPEG", "MIXED"):
        return 0
    return source_quality or 75


@pytest.mark.parametrize("fmt", ["PNG", "PNG8", "JPEG", "MIXED", "PNG24", "PNG32"])
@pytest.mark.parametrize("source_format", ["PNG", "JPEG"])
def test_tile_format_conversion(source_format, fmt, format_caches, tmp_path):
    from osgeo import gdal

    if source_format == "PNG":
        folder, tiles, source_quality = format_caches.png_folder, format_caches.png_tiles, 0
        kinds = format_caches.png_kinds
    else:
        folder, tiles = format_caches.jpeg_folder, format_caches.jpeg_tiles
        source_quality, kinds = format_caches.jpeg_quality, {k: "jpeg" for k in tiles}
    layers, package = export_formats(folder, tmp_path, TILE_FORMAT=FORMAT_CODES[fmt])
    quality = expected_quality(fmt, source_quality)
    assert conf_values(layers / "conf.xml") == (fmt, quality)
    assert root_json_values(package) == (fmt, quality)
    dataset_tiles = v2_folder_tiles(layers / "_alllayers")
    for out_tiles in (dataset_tiles, tpkx_tiles(package)):
        assert set(out_tiles) == set(tiles)
        for key, src in tiles.items():
            check_converted(fmt, source_format, src, out_tiles[key], kinds[key], key)
        new_jpegs = [d for k, d in out_tiles.items() if is_jpeg(d) and d != tiles[k]]
        for data in new_jpegs:  # tiles encoded by the export carry the recorded quality
            assert quantization(data) == reference_quantization(quality)
    # GDAL reads the dataset too (paletted PNG8 tiles as grey before GDAL 3.8, spec §4.2)
    dataset = gdal.Open(str(layers / "conf.xml"))
    assert dataset is not None and dataset.GetDriver().ShortName == "ESRIC"
    assert dataset.RasterCount == (3 if fmt == "JPEG" else 4)
    for key in [(0, 0, 0), (1, 0, 1), (1, 1, 0), (2, 1, 2), (2, 3, 3), (2, 2, 0), (2, 0, 3)]:
        level, row, col = key
        read = gdal_tile(dataset, SIZE * 2**level, row, col, SIZE)
        assert read is not None, key
        pixels = np.asarray(read[0])
        src_px = rgba(tiles[key])
        out = dataset_tiles[key]
        if is_png(out) and (png_colour_type(out) == 3 or png_has_trns(out)):
            # a paletted tile (grey in GDAL < 3.8) or one transparent colour, which GDAL
            # ignores (spec §4.2): what GDAL is documented to return, and the visible colours
            reference = gdal_expected(out, 4, int(gdal.VersionInfo()))
            assert max_diff(pixels, np.asarray(reference)) == 0, key
            if png_colour_type(out) == 2:
                visible = src_px[..., 3] >= 128
                assert (pixels[visible][:, :3] == src_px[visible][:, :3]).all(), key
        elif is_jpeg(out):
            want = on_white(src_px)
            assert jpeg_close(pixels[..., :3], want), (key, jpeg_error(pixels, want))
            if pixels.shape[-1] == 4:
                assert pixels[..., 3].min() == 255, key
        else:
            assert max_diff(pixels, src_px) == 0, key
    dataset = None  # noqa: F841


def test_compression_quality_sets_the_jpeg_quality(format_caches, tmp_path):
    """PNG cache -> JPEG at quality 30 and 95: every tile smaller at 30; recorded qualities."""
    outputs = {}
    for quality in (30, 95):
        layers, package = export_formats(format_caches.png_folder, tmp_path / str(quality),
                                         TILE_FORMAT=3, COMPRESSION_QUALITY=quality)
        assert conf_values(layers / "conf.xml") == ("JPEG", quality)
        assert root_json_values(package) == ("JPEG", quality)
        tiles = v2_folder_tiles(layers / "_alllayers")
        assert tiles == tpkx_tiles(package)
        reference = reference_quantization(quality)
        for key, data in tiles.items():
            assert is_jpeg(data), key
            assert quantization(data) == reference, key
        outputs[quality] = tiles
    assert outputs[30].keys() == outputs[95].keys() == format_caches.png_tiles.keys()
    for key in outputs[30]:
        assert len(outputs[30][key]) < len(outputs[95][key]), key


def test_optimize_tiles_for_size_recompresses_jpeg(tmp_path):
    """Quality-90 tiles are re-encoded at 40 (smaller); a quality-10 tile, which would grow,
    is kept as it is."""
    tiny_key = (1, 1, 0)
    tiles = {key: jpeg_source_tile(key, 10 if key == tiny_key else 90) for key in B_KEYS}
    regrown = jpeg_bytes(rgba(tiles[tiny_key]), 40)
    assert len(regrown) > len(tiles[tiny_key])  # the premise: re-encoding would not help
    scheme = replace(web_mercator_scheme(B_LEVELS, tile_format="JPEG"), compression_quality=90)
    folder = write_dataset(tmp_path / "src" / "opt" / "Layers", scheme, tiles)
    layers, package = export_formats(folder, tmp_path, COMPRESSION_QUALITY=40,
                                     OPTIMIZE_TILES_FOR_SIZE=True)
    reference = reference_quantization(40)
    for out_tiles in (v2_folder_tiles(layers / "_alllayers"), tpkx_tiles(package)):
        assert out_tiles.keys() == tiles.keys()
        for key, out in out_tiles.items():
            src = tiles[key]
            assert is_jpeg(out), key
            if key == tiny_key:
                assert out == src
                continue
            assert len(out) < len(src), key
            assert quantization(out) == reference, key
            mean, _ = jpeg_error(rgba(out), rgba(src))
            assert mean <= 6.0, (key, mean)
    assert conf_values(layers / "conf.xml") == ("JPEG", 40)
    assert root_json_values(package) == ("JPEG", 40)


def test_optimize_without_quality_is_an_error(format_caches, tmp_path):
    from qgis.core import QgsProcessingException

    target = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="COMPRESSION_QUALITY"):
        run_export({"INPUT_SERVICE": str(format_caches.jpeg_folder),
                    "TARGET_CACHE_PATH": str(target), "OPTIMIZE_TILES_FOR_SIZE": True})
    assert not target.exists() or not any(target.iterdir())


@pytest.mark.parametrize("params", [
    {"TILE_FORMAT": 3},
    {"TILE_FORMAT": 4},
    {"TILE_FORMAT": 3, "COMPRESSION_QUALITY": 50},
], ids=["JPEG", "MIXED", "JPEG-quality-50"])
def test_jpeg_tiles_that_only_need_copying_are_not_reencoded(params, format_caches, tmp_path):
    layers, package = export_formats(format_caches.jpeg_folder, tmp_path, **params)
    assert v2_folder_tiles(layers / "_alllayers") == format_caches.jpeg_tiles
    assert tpkx_tiles(package) == format_caches.jpeg_tiles


def test_merge_of_jpeg_into_jpeg_copies_the_bytes(format_caches, tmp_path):
    """Merging opaque JPEG tiles into an existing JPEG cache replaces the old tiles with the
    input's exact bytes (nothing decoded or re-encoded)."""
    scheme = replace(web_mercator_scheme(B_LEVELS, tile_format="JPEG"), compression_quality=80)
    old_tiles = {key: jpeg_source_tile((key[0], key[1] + 1, key[2]), 60) for key in B_KEYS}
    old = write_dataset(tmp_path / "old" / "jpegcache" / "Layers", scheme, old_tiles)
    target = tmp_path / "target"
    first = run_export({"INPUT_SERVICE": str(old), "TARGET_CACHE_PATH": str(target)})
    result = run_export({"INPUT_SERVICE": str(format_caches.jpeg_folder),
                         "TARGET_CACHE_PATH": str(target), "LEVELS": "1-2"})
    assert first["OUTPUT_CACHE_PATH"] == result["OUTPUT_CACHE_PATH"]
    tiles = v2_folder_tiles(Path(result["OUTPUT_CACHE_PATH"]) / "_alllayers")
    expected = {k: (format_caches.jpeg_tiles[k] if k[0] > 0 else old_tiles[k]) for k in B_KEYS}
    assert tiles == expected


def test_512px_dataset_export_survives_loading_the_result(fixtures_dir, run_qgis_process,
                                                         tmp_path):
    """qgis_process exporting ArcGIS Pro's 512 px package to a Compact V2 dataset, with the
    default of adding the result to the map: GDAL 3.6's ESRIC driver crashes reading 512 px V2
    datasets, so the plugin must not hand it one; the process ends normally either way."""
    target = tmp_path / "out"
    completed = run_qgis_process(
        ["--json", "run", "mapservercache:exportmapservercache", "--",
         f"INPUT_SERVICE={Path(fixtures_dir) / 'arcgis-pro-wgs84.tpkx'}",
         f"TARGET_CACHE_PATH={target}", "LEVELS=2"], timeout=120)
    assert completed.returncode == 0, (completed.returncode, completed.stderr[-2000:])
    results = json.loads(completed.stdout)["results"]
    layers = target / "arcgis-pro-wgs84" / "Layers"
    assert Path(results["OUTPUT_CACHE_PATH"]) == layers
    assert len(v2_folder_tiles(layers / "_alllayers")) == 15
