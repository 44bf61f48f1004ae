"""AREA_OF_INTEREST clipping at pixel resolution, checked pixel by pixel.

The expected masks are rasterised here with GDAL (`gdal.RasterizeLayer` onto in-memory rasters
laid on the cache's tile grid in EPSG:3857; GDAL burns the pixels whose centre is inside, the
plugin's rule), from polygons transformed vertex by vertex with OGR/OSR. Outputs are read back
with the engine's reader (`read_all_tiles`) or GDAL's ESRIC driver and decoded with PIL. The
plugin's clipping code (core.selection.scanline_mask, core.selection.tile_selection,
core.pixels.tile_image, core.pixels.composer) is never used for an expected value.

A pixel where the plugin's mask and GDAL's disagree is accepted only within one pixel of the GDAL
mask's edge (dilate XOR erode of the mask, 8-neighbourhood), and only a few such pixels.
"""
from __future__ import annotations

import io
import json
import math
import re
import sys
from dataclasses import dataclass, field, replace
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
    web_mercator_scheme,
    write_cache,
)
from independent_readers import gdal_tile, v2_folder_tiles  # noqa: E402
from test_algorithm import KINDS, run_export  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
Key = tuple[int, int, int]
SIZE = 256
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
EARTH_RADIUS = 6378137.0

# opaque PNG cache: levels 3 and 4 cover the world (antimeridian cases), level 5 a window over
# x -2.5e6..7.5e6 m, y -1.25e6..8.77e6 m
OPAQUE_RANGES = {3: TileRange(0, 7, 0, 7), 4: TileRange(0, 15, 0, 15),
                 5: TileRange(9, 16, 14, 21)}
# JPEG / MIXED caches: x -5.0e6..15.0e6 m, y -10.0e6..10.0e6 m
REGIONAL_RANGES = {3: TileRange(2, 5, 3, 6), 4: TileRange(4, 11, 6, 13)}


# --- synthetic caches -----------------------------------------------------------------------


def pattern(level: int, row: int, col: int) -> np.ndarray:
    """Opaque RGB pixels, different at every pixel of a tile and between tiles."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    r = (x + 3 * col + 11 * level) % 256
    g = (y + 5 * row) % 256
    b = ((x ^ y) + 7 * row + 13 * col + 50 * level) % 256
    return np.dstack([r, g, b]).astype(np.uint8)


def smooth(level: int, row: int, col: int) -> np.ndarray:
    """Opaque RGB gradients (JPEG keeps them well), far from white and from red."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    r = 30 + (x * 90) // 255 + 4 * (col % 4)
    g = 60 + (y * 110) // 255 + 3 * level
    b = 60 + ((x + y) * 110) // 510 + 5 * (row % 4)
    return np.dstack([r, g, b]).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=90)
    else:
        Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def opaque_cache(tmp_path_factory) -> tuple[Path, dict[Key, bytes]]:
    """`opaque`: PNG (RGB, no alpha) V2 cache, 384 tiles at levels 3-5."""
    folder = tmp_path_factory.mktemp("opaque") / "opaque"
    tiles = write_cache(folder / "Layers", web_mercator_scheme(6), OPAQUE_RANGES,
                        make=lambda *key: encode(pattern(*key), "PNG"))
    return folder, tiles


@pytest.fixture(scope="module")
def jpeg_cache(tmp_path_factory) -> tuple[Path, dict[Key, bytes]]:
    """`jpegs`: JPEG V2 cache (quality 75 in conf.xml), 80 tiles at levels 3-4."""
    folder = tmp_path_factory.mktemp("jpeg") / "jpegs"
    tiles = write_cache(folder / "Layers", web_mercator_scheme(6, tile_format="JPEG"),
                        REGIONAL_RANGES, make=lambda *key: encode(smooth(*key), "JPEG"))
    return folder, tiles


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory) -> tuple[Path, dict[Key, bytes]]:
    """`mixed`: MIXED V2 cache, JPEG and (opaque) PNG tiles in a checkerboard."""
    folder = tmp_path_factory.mktemp("mixed") / "mixed"
    scheme = replace(web_mercator_scheme(6, tile_format="MIXED"), compression_quality=75)
    tiles = write_cache(
        folder / "Layers", scheme, REGIONAL_RANGES,
        make=lambda level, row, col: encode(pattern(level, row, col),
                                            "JPEG" if (row + col) % 2 == 0 else "PNG"))
    return folder, tiles


# --- polygons, vector files and GDAL masks --------------------------------------------------


def ring(points) -> str:
    points = list(points)
    return "(" + ",".join(f"{x!r} {y!r}" for x, y in [*points, points[0]]) + ")"


def polygon(*rings) -> str:
    return "POLYGON(" + ",".join(ring(r) for r in rings) + ")"


def multipolygon(*polygons) -> str:
    return "MULTIPOLYGON(" + ",".join(
        "(" + ",".join(ring(r) for r in rings) + ")" for rings in polygons) + ")"


def star(cx, cy, r_out, r_in, points=5, rotation=17.0) -> list[tuple[float, float]]:
    vertices = []
    for i in range(2 * points):
        angle = math.radians(rotation + i * 180.0 / points)
        radius = r_out if i % 2 == 0 else r_in
        vertices.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return vertices


def srs(epsg: int):
    from osgeo import osr

    ref = osr.SpatialReference()
    ref.ImportFromEPSG(epsg)
    ref.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return ref


def write_layer(path: Path, epsg: int, wkts: list[str], driver: str = "GPKG") -> Path:
    """One feature (field `id` = its index) per WKT, in EPSG:`epsg`, written with OGR."""
    from osgeo import ogr

    data_source = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    kind = ogr.CreateGeometryFromWkt(wkts[0]).GetGeometryType()
    layer = data_source.CreateLayer("aoi", srs(epsg), kind)
    layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    for number, wkt in enumerate(wkts):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("id", number)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        assert layer.CreateFeature(feature) == 0
    layer = None
    data_source = None  # noqa: F841 - closes the file
    return path


def to_mercator(wkt: str, epsg: int):
    """An OGR geometry in EPSG:3857, transformed vertex by vertex with OSR."""
    from osgeo import ogr, osr

    geometry = ogr.CreateGeometryFromWkt(wkt)
    if epsg != 3857:
        geometry.Transform(osr.CoordinateTransformation(srs(epsg), srs(3857)))
    return geometry


def grow(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Dilation by `steps` pixels (8-neighbourhood); borders continue the edge pixels."""
    for _ in range(steps):
        padded = np.pad(mask, 1, mode="edge")
        out = mask.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out |= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
        mask = out
    return mask


def shrink(mask: np.ndarray) -> np.ndarray:
    return ~grow(~mask)


def resolution(level: int) -> float:
    return LEVEL0_RES / 2**level


def tile_box(level: int, row: int, col: int, margin_px: float = 0.0):
    """The tile's rectangle (grown by margin_px pixels, or shrunk when negative) as OGR."""
    from osgeo import ogr

    span = resolution(level) * SIZE
    m = margin_px * resolution(level)
    xmin, ymax = -ORIGIN + col * span - m, ORIGIN - row * span + m
    xmax, ymin = -ORIGIN + (col + 1) * span + m, ORIGIN - (row + 1) * span - m
    return ogr.CreateGeometryFromWkt(
        polygon([(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)]))


class GdalMasks:
    """Per level, GDAL's rasterisation of the polygons (EPSG:3857) on the tile grid around
    their envelope, and the one-pixel band around the mask's edges."""

    def __init__(self, geometries, levels):
        self.geometries = geometries
        self.levels = {level: self._rasterise(level) for level in levels}

    def _rasterise(self, level: int):
        from osgeo import gdal, ogr

        envelopes = [g.GetEnvelope() for g in self.geometries]  # minx, maxx, miny, maxy
        minx, maxx = min(e[0] for e in envelopes), max(e[1] for e in envelopes)
        miny, maxy = min(e[2] for e in envelopes), max(e[3] for e in envelopes)
        res = resolution(level)
        span, last = res * SIZE, 2**level - 1
        c0 = max(0, math.floor((minx + ORIGIN) / span) - 1)
        c1 = min(last, math.floor((maxx + ORIGIN) / span) + 1)
        r0 = max(0, math.floor((ORIGIN - maxy) / span) - 1)
        r1 = min(last, math.floor((ORIGIN - miny) / span) + 1)
        if c0 > c1 or r0 > r1:
            return None
        raster = gdal.GetDriverByName("MEM").Create(
            "", (c1 - c0 + 1) * SIZE, (r1 - r0 + 1) * SIZE, 1, gdal.GDT_Byte)
        raster.SetGeoTransform((-ORIGIN + c0 * span, res, 0.0, ORIGIN - r0 * span, 0.0, -res))
        raster.SetProjection(srs(3857).ExportToWkt())
        store = ogr.GetDriverByName("Memory").CreateDataSource("")
        layer = store.CreateLayer("aoi", srs(3857), ogr.wkbUnknown)
        for geometry in self.geometries:
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetGeometry(geometry)
            layer.CreateFeature(feature)
        assert gdal.RasterizeLayer(raster, [1], layer, burn_values=[1]) == 0
        mask = raster.ReadAsArray().astype(bool)
        band = grow(mask) ^ shrink(mask)
        return r0, c0, mask, band

    def tile(self, key: Key) -> tuple[np.ndarray, np.ndarray]:
        """(mask, band) of one tile: (256, 256) bools."""
        level, row, col = key
        found = self.levels.get(level)
        empty = np.zeros((SIZE, SIZE), bool)
        if found is None:
            return empty, empty
        r0, c0, mask, band = found
        y, x = (row - r0) * SIZE, (col - c0) * SIZE
        if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]):
            return empty, empty
        return mask[y:y + SIZE, x:x + SIZE], band[y:y + SIZE, x:x + SIZE]


def masks_for(geometries, source: dict[Key, bytes]) -> GdalMasks:
    return GdalMasks(geometries, sorted({k[0] for k in source}))


# --- checks ---------------------------------------------------------------------------------


def rgba(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image.convert("RGBA")).copy()


def rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image.convert("RGB")).astype(np.int16)


@dataclass
class Tally:
    copies: int = 0  # tiles written as the source's bytes
    clipped: int = 0  # tiles written with pixels made transparent / background
    disagreements: int = 0  # pixels where the plugin's mask differs from GDAL's
    band_pixels: int = 0  # pixels of the one-pixel band around GDAL's mask edges
    masks: Optional[dict] = field(default=None, repr=False)  # key -> mask read from the output


def check_no_extra(out: dict[Key, bytes], source: dict[Key, bytes]) -> None:
    extra = sorted(set(out) - set(source))
    assert not extra, f"tiles the source lacks were written: {extra[:5]}"


def check_selected(key: Key, tile: Optional[bytes], data: bytes, mask: np.ndarray,
                   band: np.ndarray) -> None:
    """What any AOI output holds for one tile, by GDAL's mask (its one-pixel edge band aside):
    nothing where no pixel centre is inside, the source's bytes where every one is."""
    if not mask.any() and not band.any():
        assert tile is None, f"{key}: no pixel centre inside the AOI, yet exported"
    if mask.all() and not band.any():
        assert tile == data, f"{key}: wholly inside the AOI, not the source's bytes"


def check_alpha_output(out: dict[Key, bytes], source: dict[Key, bytes], gdal_masks: GdalMasks,
                       boundary_png: bool = False) -> Tally:
    """The output is the source clipped to GDAL's masks, pixel by pixel: inside pixels keep the
    source's RGBA, outside pixels are (0, 0, 0, 0), a tile without a visible pixel is absent, a
    tile that keeps every pixel is the source's bytes. Disagreements with GDAL only in the band.
    """
    check_no_extra(out, source)
    tally = Tally(masks={})
    for key, data in sorted(source.items()):
        mask, band = gdal_masks.tile(key)
        tile = out.get(key)
        check_selected(key, tile, data, mask, band)
        if tile is None:
            got = np.zeros((SIZE, SIZE), bool)
        else:
            pixels, reference = rgba(tile), rgba(data)
            got = pixels[..., 3] > 0
            assert got.any(), f"{key}: a wholly transparent tile was written"
            assert (pixels[got] == reference[got]).all(), f"{key}: inside pixels changed"
            assert (pixels[~got] == 0).all(), f"{key}: outside pixels not (0, 0, 0, 0)"
            if tile == data:
                tally.copies += 1
            else:
                tally.clipped += 1
                assert not got.all(), f"{key}: nothing clipped, yet the tile was re-encoded"
                if boundary_png:
                    assert tile.startswith(PNG_SIGNATURE), f"{key}: clipped tile is not a PNG"
            tally.masks[key] = got
        wrong = got ^ mask
        stray = wrong & ~band
        assert not stray.any(), (
            f"{key}: {int(stray.sum())} pixels disagree with GDAL's mask farther than one pixel "
            f"from its edge, e.g. (row, col) {np.argwhere(stray)[:3].tolist()}")
        tally.disagreements += int(wrong.sum())
        tally.band_pixels += int(band.sum())
    assert tally.disagreements <= max(8, tally.band_pixels // 200), tally
    return tally


def check_flattened_jpeg(out: dict[Key, bytes], source: dict[Key, bytes],
                         gdal_masks: GdalMasks, background: tuple[int, int, int]) -> Tally:
    """JPEG output without alpha: source pixels inside, `background` outside, within a JPEG
    tolerance: pixels within 16 px of an edge (a 4:2:0 JPEG's chroma block) only count toward
    the mean error."""
    check_no_extra(out, source)
    colour = np.array(background, np.int16)
    tally = Tally()
    for key, data in sorted(source.items()):
        mask, band = gdal_masks.tile(key)
        tile = out.get(key)
        check_selected(key, tile, data, mask, band)
        if (mask & ~band).any():
            assert tile is not None, f"{key}: pixels inside the AOI, yet not exported"
        tally.band_pixels += int(band.sum())
        if tile is None:
            continue
        if tile == data:
            tally.copies += 1
            assert not (~mask & ~band).any(), f"{key}: copied whole though partly outside"
            continue
        tally.clipped += 1
        assert tile.startswith(JPEG_SIGNATURE), f"{key}: clipped tile is not a JPEG"
        got, reference = rgb(tile), rgb(data)
        expected = np.where(mask[..., None], reference, colour)
        error = np.abs(got - expected)
        near = grow(band, 16)
        assert error.mean() <= 3.0, f"{key}: mean error {error.mean():.2f}"
        assert error[~near].max(initial=0) <= 12, f"{key}: far pixel error {error[~near].max()}"
        outside = ~mask & ~near
        if outside.any():
            assert np.abs(got[outside] - colour).mean() <= 2.0, f"{key}: outside not background"
        # which of source / background each pixel is closer to: GDAL's mask, but near edges
        inside_like = (np.abs(got - reference).sum(-1) < np.abs(got - colour).sum(-1))
        stray = (inside_like ^ mask) & ~near
        assert not stray.any(), f"{key}: {int(stray.sum())} pixels on the wrong side"
    return tally


def conf_tile_format(layers: Path) -> str:
    match = re.search(r"<CacheTileFormat>(\w+)</CacheTileFormat>",
                      (Path(layers) / "conf.xml").read_text("utf-8"))
    assert match, "conf.xml without CacheTileFormat"
    return match.group(1)


def export(folder: Path, target: Path, aoi, **extra) -> tuple[dict, dict[Key, bytes]]:
    params = {"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(target),
              "AREA_OF_INTEREST": aoi if not isinstance(aoi, Path) else str(aoi)}
    params.update(extra)
    result = run_export(params)
    tiles = read_all_tiles(result["OUTPUT_CACHE_PATH"])
    assert result["TILE_COUNT"] == len(tiles)
    return result, tiles


def at_levels(tiles: dict[Key, bytes], levels) -> dict[Key, bytes]:
    return {k: v for k, v in tiles.items() if k[0] in levels}


# --- 1. one irregular polygon ---------------------------------------------------------------

STAR = star(2.5e6, 4.0e6, 3.6e6, 1.8e6, rotation=17.0)


def test_irregular_polygon_is_clipped_at_pixel_centres(opaque_cache, tmp_path):
    folder, source = opaque_cache
    aoi = write_layer(tmp_path / "star.gpkg", 3857, [polygon(STAR)])
    result, out = export(folder, tmp_path / "out", aoi)
    geometry = to_mercator(polygon(STAR), 3857)
    tally = check_alpha_output(out, source, masks_for([geometry], source))
    assert tally.copies >= 2 and tally.clipped >= 20, tally
    assert {k[0] for k in out} == {3, 4, 5}
    # inside tiles byte-identical, tiles away from the star absent (GDAL-independent: OGR)
    for key, data in source.items():
        if geometry.Contains(tile_box(*key, margin_px=1)):
            assert out[key] == data, key
        if not geometry.Intersects(tile_box(*key, margin_px=1)):
            assert key not in out, key
    assert conf_tile_format(Path(result["OUTPUT_CACHE_PATH"])) == "PNG"


# --- 2. islands, holes, overlapping features ------------------------------------------------

ISLANDS = multipolygon(
    [[(-1.8e6, 0.5e6), (1.2e6, 1.1e6), (-0.9e6, 3.3e6)]],
    [[(2.2e6, 5.0e6), (4.6e6, 4.1e6), (5.6e6, 6.6e6), (3.1e6, 7.6e6)]],
    [star(5.9e6, 1.7e6, 0.9e6, 0.4e6, rotation=5.0)],
)
OUTER = [(-2.0e6, 1.0e6), (1.5e6, -0.8e6), (6.8e6, 0.2e6), (7.2e6, 4.5e6), (5.5e6, 8.3e6),
         (0.5e6, 8.0e6), (-2.2e6, 5.0e6)]
BIG_HOLE = [(0.3e6, 4.0e6), (2.9e6, 1.7e6), (5.1e6, 4.4e6), (2.4e6, 6.6e6)]
SMALL_HOLE = [(5.5e6, 1.0e6), (6.3e6, 1.4e6), (5.7e6, 2.1e6)]
HOLED = polygon(OUTER, BIG_HOLE, SMALL_HOLE)
OVERLAPPING = [
    polygon([(-1.5e6, 1.0e6), (4.5e6, 0.4e6), (1.2e6, 6.5e6)]),
    polygon([(0.8e6, 3.0e6), (5.8e6, 4.6e6), (5.1e6, 6.9e6), (0.1e6, 5.3e6)]),
    polygon(star(4.5e6, 2.6e6, 1.8e6, 0.8e6, rotation=40.0)),
]
SHAPES = {"islands": [ISLANDS], "holes": [HOLED], "overlapping": OVERLAPPING}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_islands_holes_and_overlapping_features(shape, opaque_cache, tmp_path):
    folder, source = opaque_cache
    wkts = SHAPES[shape]
    aoi = write_layer(tmp_path / f"{shape}.gpkg", 3857, wkts)
    _, out = export(folder, tmp_path / "out", aoi)
    geometries = [to_mercator(w, 3857) for w in wkts]
    tally = check_alpha_output(out, source, masks_for(geometries, source))
    assert tally.clipped >= 10, tally
    if shape == "islands":
        # every island has exported pixels at level 5
        for part in range(geometries[0].GetGeometryCount()):
            island = GdalMasks([geometries[0].GetGeometryRef(part).Clone()], [5])
            assert any((tally.masks.get(k, np.zeros(1, bool)) & island.tile(k)[0]).any()
                       for k in source if k[0] == 5), f"island {part} missing"
    if shape == "holes":
        hole = to_mercator(polygon(BIG_HOLE), 3857)
        in_hole = [k for k in source if hole.Contains(tile_box(*k, margin_px=1))]
        assert in_hole, "the big hole should contain whole tiles"
        assert not [k for k in in_hole if k in out], "tiles inside the hole were exported"
        small = GdalMasks([to_mercator(polygon(SMALL_HOLE), 3857)], [5])
        holed = [k for k in out if k[0] == 5 and small.tile(k)[0].any()]
        assert holed and all(not (tally.masks[k] & small.tile(k)[0] & ~small.tile(k)[1]).any()
                             for k in holed), "pixels inside the small hole were exported"
    if shape == "overlapping":
        assert tally.copies >= 1, tally


# --- 3. selected features only --------------------------------------------------------------

PART_A = polygon([(-2.0e6, 1.0e6), (0.8e6, 0.2e6), (-0.5e6, 4.0e6)])
PART_B = polygon([(2.5e6, 2.0e6), (6.9e6, 3.0e6), (5.5e6, 7.5e6), (2.0e6, 6.0e6)])


def test_selected_features_only(opaque_cache, tmp_path):
    from qgis.core import QgsProcessingFeatureSourceDefinition, QgsProject, QgsVectorLayer

    folder, source = opaque_cache
    path = write_layer(tmp_path / "two.gpkg", 3857, [PART_A, PART_B])
    layer = QgsVectorLayer(str(path), "two features", "ogr")
    assert layer.isValid() and layer.featureCount() == 2
    QgsProject.instance().addMapLayer(layer)
    try:
        layer.selectByIds([f.id() for f in layer.getFeatures() if f["id"] == 1])
        assert layer.selectedFeatureCount() == 1
        definition = QgsProcessingFeatureSourceDefinition(layer.id(), selectedFeaturesOnly=True)
        _, out = export(folder, tmp_path / "out", definition)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    tally = check_alpha_output(out, source, masks_for([to_mercator(PART_B, 3857)], source))
    assert tally.clipped >= 10, tally
    # the unselected feature covers tiles of the cache, none of them is exported
    unselected = masks_for([to_mercator(PART_A, 3857)], source)
    a_only = [k for k in source if (unselected.tile(k)[0] & ~unselected.tile(k)[1]).any()
              and not to_mercator(PART_B, 3857).Intersects(tile_box(*k, margin_px=1))]
    assert a_only and not [k for k in a_only if k in out]


# --- 4. AOI in other CRSs -------------------------------------------------------------------

OTHER_CRS = {
    4326: polygon([(-15.0, 8.0), (20.0, 5.0), (48.0, 22.0), (35.0, 54.0), (5.0, 50.0),
                   (-12.0, 36.0)]),
    32631: polygon([(-200000.0, 3500000.0), (1300000.0, 3300000.0), (1700000.0, 5600000.0),
                    (600000.0, 6700000.0), (-300000.0, 5800000.0)]),
    2154: polygon([(-600000.0, 5000000.0), (2200000.0, 4900000.0), (2600000.0, 7400000.0),
                   (700000.0, 7900000.0), (-500000.0, 7200000.0)]),
}


@pytest.mark.parametrize("epsg", list(OTHER_CRS))
def test_area_of_interest_in_another_crs(epsg, opaque_cache, tmp_path):
    folder, source = opaque_cache
    aoi = write_layer(tmp_path / f"aoi{epsg}.gpkg", epsg, [OTHER_CRS[epsg]])
    _, out = export(folder, tmp_path / "out", aoi, LEVELS="4-5")
    source = at_levels(source, (4, 5))
    tally = check_alpha_output(out, source,
                               masks_for([to_mercator(OTHER_CRS[epsg], epsg)], source))
    assert tally.clipped >= 10 and tally.copies >= 1, tally


# --- 5. antimeridian --------------------------------------------------------------------------

# an L shape from lon 170 to 190: edges along meridians and parallels are straight in both
# EPSG:4326 and EPSG:3857, so cutting it at 180 gives the same polygon in both
L_ACROSS = [(170.0, -30.0), (190.0, -30.0), (190.0, -10.0), (178.0, -10.0), (178.0, 25.0),
            (170.0, 25.0)]
L_SPLIT = multipolygon(
    [[(170.0, -30.0), (180.0, -30.0), (180.0, -10.0), (178.0, -10.0), (178.0, 25.0),
      (170.0, 25.0)]],
    [[(-180.0, -30.0), (-170.0, -30.0), (-170.0, -10.0), (-180.0, -10.0)]],
)


def spherical_mercator(lon: float, lat: float) -> tuple[float, float]:
    """EPSG:3857 from its definition, without wrapping longitudes beyond 180."""
    return (EARTH_RADIUS * math.radians(lon),
            EARTH_RADIUS * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)))


def antimeridian_layers(folder: Path) -> dict[str, Path]:
    """The L shape across the antimeridian, four ways: longitudes beyond 180, split at 180,
    Web Mercator beyond x = 20037508 m, and PDC Mercator (EPSG:3832, centred on 150 E), a
    projected CRS in which it is one piece (vertices transformed by OSR)."""
    from osgeo import osr

    pacific = osr.CoordinateTransformation(srs(4326), srs(3832))
    return {
        "lon 170..190": write_layer(folder / "a.gpkg", 4326, [polygon(L_ACROSS)]),
        "split at 180": write_layer(folder / "b.gpkg", 4326, [L_SPLIT]),
        "3857 beyond x=20037508": write_layer(
            folder / "c.gpkg", 3857, [polygon([spherical_mercator(*p) for p in L_ACROSS])]),
        "3832 centred on the Pacific": write_layer(
            folder / "d.gpkg", 3832, [polygon([pacific.TransformPoint(*p)[:2]
                                               for p in L_ACROSS])]),
    }


def test_antimeridian_four_ways_give_the_same_pixels(opaque_cache, tmp_path):
    """README: "polygons crossing the antimeridian of Web Mercator and WGS 84 caches (split at
    ±180, given with longitudes beyond 180, or in a projected CRS centred on the Pacific)
    work" (Web Mercator here; WGS 84 below)."""
    folder, source = opaque_cache
    layers = antimeridian_layers(tmp_path)
    expected_geometry = to_mercator(L_SPLIT, 4326)
    xs = [expected_geometry.GetGeometryRef(i).GetEnvelope()[:2] for i in range(2)]
    assert xs[0][1] == pytest.approx(20037508.34, abs=1) and xs[1][0] == pytest.approx(
        -20037508.34, abs=1), xs  # OSR kept lon 180 east and -180 west
    gdal_masks = masks_for([expected_geometry], source)
    pixels = {}
    for name, aoi in layers.items():
        _, out = export(folder, tmp_path / name.replace(" ", "_"), aoi)
        tally = check_alpha_output(out, source, gdal_masks)
        assert tally.clipped >= 4, (name, tally)
        for level in (3, 4):
            cols = {k[2] for k in out if k[0] == level}
            assert 0 in cols and 2**level - 1 in cols, (name, level, sorted(cols))
        assert not [k for k in out if k[0] == 5], name
        pixels[name] = {k: rgba(v) for k, v in out.items()}
    names = list(pixels)
    for name in names[1:]:
        assert pixels[name].keys() == pixels[names[0]].keys(), name
        for key, value in pixels[name].items():
            assert (value == pixels[names[0]][key]).all(), (name, key)


WGS84_LEVEL0_RES = 0.703125  # two 256-px tiles across the world at level 0


class LonLatMasks:
    """The masks of the L shape on a WGS 84 tile grid (origin -180, 90), from arithmetic: its
    edges are meridians and parallels, so a pixel centre is inside when its longitude (taken
    in 0..360) and latitude fall in one of the L's two rectangles. The band holds the pixels
    within one pixel of an edge's line."""

    RECTANGLES = ((170.0, 190.0, -30.0, -10.0), (170.0, 178.0, -10.0, 25.0))
    MERIDIANS, PARALLELS = (170.0, 178.0, 190.0), (-30.0, -10.0, 25.0)

    def tile(self, key: Key) -> tuple[np.ndarray, np.ndarray]:
        level, row, col = key
        res = WGS84_LEVEL0_RES / 2**level
        j, i = np.mgrid[0:SIZE, 0:SIZE]
        lon = -180.0 + (col * SIZE + i + 0.5) * res
        lat = 90.0 - (row * SIZE + j + 0.5) * res
        lon = np.where(lon < 0, lon + 360.0, lon)
        mask = np.zeros((SIZE, SIZE), bool)
        for west, east, south, north in self.RECTANGLES:
            mask |= (west <= lon) & (lon <= east) & (south <= lat) & (lat <= north)
        band = np.zeros((SIZE, SIZE), bool)
        for meridian in self.MERIDIANS:
            band |= np.abs(lon - meridian) < res
        for parallel in self.PARALLELS:
            band |= np.abs(lat - parallel) < res
        return mask, band & grow(mask, 2)


@pytest.fixture(scope="module")
def wgs84_cache(tmp_path_factory) -> tuple[Path, dict[Key, bytes]]:
    """An opaque PNG WGS 84 cache covering the world at levels 1-3 (168 tiles)."""
    from export_map_server_cache.core.grid.spatial_reference import SpatialReference
    from export_map_server_cache.core.grid.tiling_scheme import Lod, StorageFormat, TilingScheme

    scheme = TilingScheme(
        spatial_reference=SpatialReference(wkid=4326).with_defaults(), origin_x=-180.0,
        origin_y=90.0, tile_cols=SIZE, tile_rows=SIZE, dpi=96,
        lods=tuple(Lod(z, WGS84_LEVEL0_RES / 2**z, 295828763.795777 / 2**z) for z in range(5)),
        tile_format="PNG", compression_quality=0, storage_format=StorageFormat.COMPACT_V2)
    folder = tmp_path_factory.mktemp("wgs84") / "geographic"
    tiles = write_cache(folder / "Layers", scheme,
                        {z: TileRange(0, 2**z - 1, 0, 2**(z + 1) - 1) for z in (1, 2, 3)},
                        make=lambda *key: encode(pattern(*key), "PNG"))
    return folder, tiles


def test_antimeridian_on_a_wgs84_cache(wgs84_cache, tmp_path):
    """The same four ways on a WGS 84 cache, against masks from the L's own arithmetic; the
    output read by the spec-only Compact V2 parser."""
    folder, source = wgs84_cache
    expected = LonLatMasks()
    pixels = {}
    for name, aoi in antimeridian_layers(tmp_path).items():
        result = run_export({"INPUT_SERVICE": str(folder), "AREA_OF_INTEREST": str(aoi),
                             "TARGET_CACHE_PATH": str(tmp_path / name.replace(" ", "_"))})
        out = v2_folder_tiles(Path(result["OUTPUT_CACHE_PATH"]) / "_alllayers")
        assert result["TILE_COUNT"] == len(out)
        tally = check_alpha_output(out, source, expected)
        assert tally.clipped >= 4, (name, tally)
        for level in (1, 2, 3):  # both sides of the antimeridian
            cols = {k[2] for k in out if k[0] == level}
            assert 0 in cols and 2**(level + 1) - 1 in cols, (name, level, sorted(cols))
        pixels[name] = {k: rgba(v) for k, v in out.items()}
    names = list(pixels)
    for name in names[1:]:
        assert pixels[name].keys() == pixels[names[0]].keys(), name
        for key, value in pixels[name].items():
            assert (value == pixels[names[0]][key]).all(), (name, key)


# --- 6. JPEG and MIXED ----------------------------------------------------------------------

JPEG_STAR = star(4.0e6, 0.5e6, 8.0e6, 4.2e6, rotation=9.0)


@pytest.mark.parametrize("background", [None, "#ff0000"])
def test_jpeg_cache_outside_pixels_get_the_background_colour(background, jpeg_cache, tmp_path):
    folder, source = jpeg_cache
    aoi = write_layer(tmp_path / "star.gpkg", 3857, [polygon(JPEG_STAR)])
    extra = {} if background is None else {"BACKGROUND_COLOR": background}
    result, out = export(folder, tmp_path / "out", aoi, **extra)
    colour = (255, 255, 255) if background is None else (255, 0, 0)
    tally = check_flattened_jpeg(out, source,
                                 masks_for([to_mercator(polygon(JPEG_STAR), 3857)], source),
                                 colour)
    assert tally.copies >= 4 and tally.clipped >= 10, tally
    assert conf_tile_format(Path(result["OUTPUT_CACHE_PATH"])) == "JPEG"


def test_jpeg_cache_as_mixed_writes_png_boundary_tiles(jpeg_cache, tmp_path):
    folder, source = jpeg_cache
    aoi = write_layer(tmp_path / "star.gpkg", 3857, [polygon(JPEG_STAR)])
    result, out = export(folder, tmp_path / "out", aoi, TILE_FORMAT=4)
    tally = check_alpha_output(out, source,
                               masks_for([to_mercator(polygon(JPEG_STAR), 3857)], source),
                               boundary_png=True)
    assert tally.copies >= 4 and tally.clipped >= 10, tally
    assert all(out[k].startswith(JPEG_SIGNATURE) for k in out if out[k] == source[k])
    assert conf_tile_format(Path(result["OUTPUT_CACHE_PATH"])) == "MIXED"


def test_mixed_cache_is_clipped_to_png_boundary_tiles(mixed_cache, tmp_path):
    folder, source = mixed_cache
    aoi = write_layer(tmp_path / "star.gpkg", 3857, [polygon(JPEG_STAR)])
    result, out = export(folder, tmp_path / "out", aoi)
    tally = check_alpha_output(out, source,
                               masks_for([to_mercator(polygon(JPEG_STAR), 3857)], source),
                               boundary_png=True)
    assert tally.clipped >= 10, tally
    copied = [k for k in out if out[k] == source[k]]
    assert {out[k][:3] == JPEG_SIGNATURE for k in copied} == {True, False}, "JPEG and PNG copies"
    clipped_from_jpeg = [k for k in out if out[k] != source[k] and source[k][:3] == JPEG_SIGNATURE]
    assert clipped_from_jpeg, "no clipped tile came from a JPEG tile"
    assert conf_tile_format(Path(result["OUTPUT_CACHE_PATH"])) == "MIXED"


# --- 7. DISABLE_CLIPPING --------------------------------------------------------------------


def test_disable_clipping_keeps_boundary_tiles_whole(opaque_cache, tmp_path):
    """The tiles a clipped export writes (a pixel centre inside), every one as the source's
    bytes."""
    folder, source = opaque_cache
    aoi = write_layer(tmp_path / "star.gpkg", 3857, [polygon(STAR)])
    _, out = export(folder, tmp_path / "out", aoi, DISABLE_CLIPPING=True)
    gdal_masks = masks_for([to_mercator(polygon(STAR), 3857)], source)
    check_no_extra(out, source)
    for key, data in source.items():
        mask, band = gdal_masks.tile(key)
        check_selected(key, out.get(key), data, mask, band)
        if (mask & ~band).any():  # a centre inside beyond GDAL's one-pixel edge band
            assert key in out, f"{key} has pixel centres inside the star but was not exported"
    assert all(out[k] == source[k] for k in out)
    # boundary tiles among them, kept whole
    assert len([k for k in out if not gdal_masks.tile(k)[0].all()]) >= 20


# --- 8. every output kind -------------------------------------------------------------------

SIMPLE = polygon([(-1.0e6, 0.9e6), (5.2e6, -0.3e6), (6.6e6, 5.9e6), (0.4e6, 7.1e6)])


@pytest.fixture(scope="module")
def simple_outputs(opaque_cache, tmp_path_factory):
    """The SIMPLE polygon exported to every kind: kind -> (result, tiles)."""
    folder, _ = opaque_cache
    root = tmp_path_factory.mktemp("kinds")
    aoi = write_layer(root / "simple.gpkg", 3857, [SIMPLE])
    outputs = {}
    for kind, (cache_type, storage) in KINDS.items():
        outputs[kind] = export(folder, root / kind, aoi, EXPORT_CACHE_TYPE=cache_type,
                               STORAGE_FORMAT_TYPE=storage)
    return outputs


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_output_kind_is_clipped_alike(kind, simple_outputs, opaque_cache):
    _, source = opaque_cache
    _, out = simple_outputs[kind]
    tally = check_alpha_output(out, source, masks_for([to_mercator(SIMPLE, 3857)], source))
    assert tally.copies >= 2 and tally.clipped >= 10, tally
    _, first = simple_outputs["dataset-v2"]
    assert out.keys() == first.keys()
    assert all((rgba(out[k]) == rgba(first[k])).all() for k in out)


def test_v2_dataset_boundary_tiles_read_by_gdal(simple_outputs, opaque_cache):
    from osgeo import gdal

    _, source = opaque_cache
    result, out = simple_outputs["dataset-v2"]
    gdal_masks = masks_for([to_mercator(SIMPLE, 3857)], source)
    dataset = gdal.Open(str(Path(result["OUTPUT_CACHE_PATH"]) / "conf.xml"))
    assert dataset is not None and dataset.GetDriver().ShortName == "ESRIC"
    assert dataset.RasterCount == 4
    checked = 0
    for key in sorted(k for k in out if out[k] != source[k]):
        level, row, col = key
        found = gdal_tile(dataset, SIZE * 2**level, row, col, SIZE)
        assert found is not None and found[1] == (0, 0, SIZE, SIZE), key
        pixels = np.asarray(found[0])
        alpha = pixels[..., 3] > 0
        mask, band = gdal_masks.tile(key)
        assert not ((alpha ^ mask) & ~band).any(), key
        assert (pixels[..., 3][alpha] == 255).all() and (pixels[~alpha] == 0).all(), key
        assert (pixels[alpha] == rgba(source[key])[alpha]).all(), key
        checked += 1
    assert checked >= 10 and {3, 4, 5} <= {k[0] for k in out}
    dataset = None  # noqa: F841


# --- 9. qgis_process ------------------------------------------------------------------------


def test_qgis_process_clips_with_an_aoi_file(run_qgis_process, opaque_cache, tmp_path):
    folder, source = opaque_cache
    wkt = OTHER_CRS[4326]
    aoi = write_layer(tmp_path / "aoi.geojson", 4326, [wkt], driver="GeoJSON")
    target = tmp_path / "cli"
    completed = run_qgis_process([
        "--json", "run", ALG, "--",
        f"INPUT_SERVICE={folder}", f"TARGET_CACHE_PATH={target}", "EXPORT_CACHE_TYPE=0",
        "STORAGE_FORMAT_TYPE=1", "LEVELS=4-5", f"AREA_OF_INTEREST={aoi}",
    ])
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout)["results"]
    layers = target / "opaque" / "Layers"
    assert results["OUTPUT_CACHE_PATH"] == str(layers)
    out = read_all_tiles(layers)
    assert results["TILE_COUNT"] == len(out)
    source = at_levels(source, (4, 5))
    gdal_masks = masks_for([to_mercator(wkt, 4326)], source)
    tally = check_alpha_output(out, source, gdal_masks)
    assert tally.clipped >= 10, tally
    # one boundary tile spelled out
    key = max((k for k in tally.masks if not tally.masks[k].all()),
              key=lambda k: min(tally.masks[k].sum(), (~tally.masks[k]).sum()))
    pixels, mask = rgba(out[key]), gdal_masks.tile(key)[0]
    assert abs(int((pixels[..., 3] == 255).sum()) - int(mask.sum())) <= gdal_masks.tile(
        key)[1].sum()
    assert (pixels[..., 3][~grow(mask)] == 0).all() and (pixels[..., 3][shrink(mask)] == 255).all()


# --- 10. bad input --------------------------------------------------------------------------


def tiny_triangle() -> str:
    """A triangle inside one level-4 pixel, away from the pixel centres of levels 3 and 4."""
    res = resolution(4)
    x0 = -ORIGIN + (8 * SIZE + 100 + 0.15) * res
    y0 = ORIGIN - (6 * SIZE + 100 + 0.35) * res
    return polygon([(x0, y0), (x0 + 0.2 * res, y0), (x0, y0 + 0.2 * res)])


OUTSIDE = {
    "beyond the cache's tiles": polygon([(-9.0e6, -3.0e6), (-6.0e6, -3.5e6), (-5.6e6, 0.0),
                                         (-8.0e6, 1.0e6)]),
    "between pixel centres": tiny_triangle(),
}


@pytest.mark.parametrize("case", list(OUTSIDE))
def test_area_of_interest_without_pixels_is_an_error(case, jpeg_cache, tmp_path):
    from qgis.core import QgsProcessingException

    folder, _ = jpeg_cache
    aoi = write_layer(tmp_path / "aoi.gpkg", 3857, [OUTSIDE[case]])
    target = tmp_path / "out"
    with pytest.raises(QgsProcessingException) as raised:
        run_export({"INPUT_SERVICE": str(folder), "TARGET_CACHE_PATH": str(target),
                    "AREA_OF_INTEREST": str(aoi)})
    message = str(raised.value)
    assert re.search(r"(?i)area of interest", message), message
    assert re.search(r"(?i)nothing was written", message), message
    assert not target.exists() or not any(target.iterdir())


# --- worker threads -------------------------------------------------------------------------

RACE_SCRIPT = """
import sys, threading, time
sys.path[:0] = [{plugins!r}, {tests!r}]
from osgeo import ogr
from cache_factory import web_mercator_scheme
from export_map_server_cache.core.selection.tile_selection import PolygonSelection

wkb = bytes(ogr.CreateGeometryFromWkt({wkt!r}).ExportToWkb())
scheme = web_mercator_scheme(8)
started = time.monotonic()
rounds = 0
while rounds < 1000 and time.monotonic() - started < 6:
    selection = PolygonSelection(scheme, wkb)

    def work(parity):
        wanted = selection.tile_filter(6, 0, 0)
        selection.clipper(6, 0, 0)
        for row in range(18, 34):
            for col in range(28, 44):
                if (row + col) % 2 == parity:
                    wanted(row, col)
                    selection.contains(6, row, col)

    threads = [threading.Thread(target=work, args=(p,)) for p in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rounds += 1
print(rounds)
"""


def test_tile_states_from_two_worker_threads_do_not_crash(tmp_path):
    """The exporter's workers ask the selection about their bundles' tiles (tile filter,
    clipper, and the per-tile test DISABLE_CLIPPING uses) at the same time, as two bundles are
    clipped in parallel. Run
    in a subprocess, so a crash is reported as this test's failure instead of killing pytest."""
    import subprocess

    tests = Path(__file__).resolve().parent
    script = RACE_SCRIPT.format(plugins=str(tests.parent / "build" / "plugins"),
                                tests=str(tests), wkt=polygon(STAR))
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               timeout=120, cwd=str(tmp_path))
    assert completed.returncode == 0, (
        f"the process died (return code {completed.returncode}) while two threads asked one "
        f"PolygonSelection for tile states: {completed.stderr[-2000:]}")
    assert int(completed.stdout.strip()) >= 100
