"""Units of the pixel path: the scanline mask against shapely's point-in-polygon, the world wrap
of areas of interest, and the codec's format sniffing and encodings."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon, box
from shapely.vectorized import contains

from export_map_server_cache.core.grid.extent import Extent
from export_map_server_cache.core.pixels.tile_image import (
    TileEncoding,
    may_be_transparent,
    png_color_type,
)
from export_map_server_cache.core.selection.aoi import (
    lonlat_in_world,
    unwrap_longitudes,
    wrap_into_world,
)
from export_map_server_cache.core.selection.scanline_mask import PolygonRaster

STAR = Polygon([(50 + 45 * np.cos(a) * (0.45 if i % 2 else 1),
                 50 + 45 * np.sin(a) * (0.45 if i % 2 else 1))
                for i, a in enumerate(np.linspace(0, 2 * np.pi, 15, endpoint=False))])
DONUT = Point(50, 50).buffer(40).difference(Point(55, 45).buffer(15))
# no vertex or edge on a pixel centre: a centre exactly on an edge may go either way
ISLANDS = MultiPolygon([box(5.3, 5.7, 30.2, 30.9), affinity.rotate(box(50, 50, 90, 80), 20),
                        Point(20, 80).buffer(12)])


@pytest.mark.parametrize("shape", [STAR, DONUT, ISLANDS], ids=["star", "donut", "islands"])
@pytest.mark.parametrize("extent,size", [
    (Extent(0, 0, 100, 100), 256),
    (Extent(30, 20, 70, 60), 64),  # a tile inside the shape's bounds: edges left of it count
    (Extent(-50, -50, 150, 150), 100),
])
def test_mask_matches_point_in_polygon_at_pixel_centres(shape, extent, size):
    res = (extent.xmax - extent.xmin) / size
    xs = extent.xmin + (np.arange(size) + 0.5) * res
    ys = extent.ymax - (np.arange(size) + 0.5) * res
    gx, gy = np.meshgrid(xs, ys)
    expected = contains(shape, gx, gy)
    got = PolygonRaster.from_geometry(shape).mask(extent, size, size)
    assert got.shape == (size, size)
    assert (got != expected).sum() == 0


def test_mask_of_a_band_equals_the_whole_polygon_mask():
    raster = PolygonRaster.from_geometry(DONUT)
    extent = Extent(20, 40, 60, 80)
    whole = raster.mask(extent, 50, 50)
    assert (raster.band(40, 80).mask(extent, 50, 50) == whole).all()
    assert whole.any() and not whole.all()


def test_wrap_into_world_moves_parts_beyond_the_antimeridian():
    west, width = -180.0, 360.0
    crossing = box(170, 10, 190, 20)
    wrapped = wrap_into_world(crossing, west, width)
    assert wrapped.geom_type == "MultiPolygon"
    assert wrapped.symmetric_difference(
        MultiPolygon([box(170, 10, 180, 20), box(-180, 10, -170, 20)])).area < 1e-9
    inside = box(0, 0, 10, 10)
    assert wrap_into_world(inside, west, width) is inside


def test_unwrap_makes_a_ring_wrapped_by_a_transformation_continuous():
    wrapped = Polygon([(170, 10), (-170, 10), (-170, 20), (170, 20)])  # meant: 170..190
    unwrapped = unwrap_longitudes(wrapped)
    assert unwrapped.bounds == (170, 10, 190, 20)
    from shapely import wkb

    back = wkb.loads(lonlat_in_world(wrapped.wkb, True, True))
    assert back.area == pytest.approx(200)
    assert back.bounds == (-180, 10, 180, 20)


def _png_bytes(mode: str, colours: int = 3) -> bytes:
    image = Image.new("RGBA", (32, 32), (10, 20, 30, 255))
    image.putpixel((0, 0), (200, 0, 0, 0))
    out = io.BytesIO()
    image.convert(mode).save(out, "PNG")
    return out.getvalue()


def test_png_sniffing_tells_which_tiles_can_hold_transparency():
    assert png_color_type(_png_bytes("RGBA")) == 6 and may_be_transparent(_png_bytes("RGBA"))
    assert png_color_type(_png_bytes("RGB")) == 2 and not may_be_transparent(_png_bytes("RGB"))
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "JPEG")
    assert not may_be_transparent(out.getvalue())


@pytest.mark.parametrize("fmt,opaque,colour_type", [
    ("PNG8", False, 3), ("PNG8", True, 3), ("PNG24", True, 2), ("PNG24", False, 2),
    ("PNG32", True, 6), ("PNG", True, 2), ("PNG", False, 6), ("MIXED", False, 6),
])
def test_encodings_write_the_promised_png_kind_losslessly(fmt, opaque, colour_type):
    pixels = np.zeros((64, 64, 4), np.uint8)
    pixels[..., 0] = np.arange(64)[:, None] * 3
    pixels[..., 1] = 90
    pixels[..., 3] = 255
    if not opaque:
        pixels[:10, :10] = 0
    data = TileEncoding(fmt).encode(pixels)
    assert png_color_type(data) == colour_type
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    assert (decoded == pixels).all()
    assert TileEncoding(fmt).fits(data) or fmt == "MIXED" and not opaque


def test_jpeg_encoding_flattens_transparency_over_the_background():
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[:, 16:] = (0, 0, 255, 255)
    data = TileEncoding("JPEG", 90, (255, 0, 0)).encode(pixels)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert abs(decoded[:, :12] - (255, 0, 0)).max() < 8  # transparent half: the background
    assert abs(decoded[:, 20:] - (0, 0, 255)).max() < 8
    assert TileEncoding("MIXED").encode(pixels[:, 16:].copy())[:3] == b"\xff\xd8\xff"


def test_progress_reports_levels_with_totals_rates_and_time_left():
    from export_map_server_cache.core.export.progress import ExportProgress

    now = [0.0]
    bundles = [(3, 0, 0), (4, 0, 0), (4, 0, 128), (4, 128, 0), (4, 128, 128)]
    tracker = ExportProgress(bundles, expected=None, clock=lambda: now[0])
    assert tracker.fraction() == 0.0
    now[0] = 1.0
    assert tracker.bundle_done(3, 100) == "Level 3 done: 100 tiles in 1.0 s (100 tiles/s)"
    now[0] = 3.0
    assert tracker.bundle_done(4, 300) is None
    line = tracker.report()
    # 400 tiles in 3 s; level 4: 300 of about 1,200 (4 bundles), 900 left at 133 tiles/s
    assert line == ("Level 4: 300 of about 1,200 tiles (1/4 bundles), 133 tiles/s, about 7 s "
                    "left for this level, 7 s in all; 31% of the export")
    assert tracker.report() is None  # not again within REPORT_EVERY
    now[0] = 4.0
    for _ in bundles[2:]:
        tracker.bundle_done(4, 300)
    assert tracker.fraction() == 1.0
    lines = ExportProgress([(5, 0, 0), (6, 0, 0)], clock=lambda: now[0])
    assert lines.bundle_done(6, 10) is None  # level 6 waits for level 5
    assert lines.bundle_done(5, 10) == ("Level 5 done: 10 tiles in 0.0 s\n"
                                        "Level 6 done: 10 tiles in 0.0 s")
    downloads = ExportProgress(bundles, expected={3: 100, 4: 1000}, clock=lambda: now[0])
    downloads.set_in_flight({3: 50, 4: 500})
    assert downloads.fraction() == 0.5
    now[0] = 14.0  # 550 tiles in 10 s; what is left: 50 of level 3, 500 of level 4
    assert downloads.report() == (
        "Level 3: 50 of 100 tiles (0/1 bundles), 55 tiles/s, about 1 s left for this level, "
        "10 s in all; 50% of the export")


@pytest.mark.parametrize("shape", [STAR, DONUT, ISLANDS], ids=["star", "donut", "islands"])
def test_tile_states_agree_with_the_masks_of_each_tile(shape):
    raster = PolygonRaster.from_geometry(shape)
    extent, tiles, size = Extent(-10, -10, 110, 110), (12, 10), (10, 12)
    states = raster.tile_states(extent, tiles, size)
    span_x, span_y = 120 / 12, 120 / 10
    kinds = set()
    for row in range(10):
        for col in range(12):
            tile = Extent(-10 + col * span_x, 110 - (row + 1) * span_y,
                          -10 + (col + 1) * span_x, 110 - row * span_y)
            mask = raster.mask(tile, *size)
            expected = 2 if mask.all() else (1 if mask.any() else 0)
            assert states[row, col] == expected, (row, col)
            kinds.add(expected)
    assert kinds == {0, 1, 2}


def test_overwrite_by_extent_removes_tiles_the_input_makes_wholly_transparent(tmp_path):
    """Whole selected tiles are replaced under OVERWRITE; an exported tile with no visible
    pixel leaves no tile behind (outside any AOI clipping, in the plain bundle path too)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from cache_factory import read_all_tiles, web_mercator_scheme, write_cache

    from export_map_server_cache.core.exporter import Exporter, ExportOptions
    from export_map_server_cache.core.formats.storage_formats import open_writer
    from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange
    from export_map_server_cache.core.selection.tile_selection import Selection
    from export_map_server_cache.core.sources.local_cache import open_cache

    scheme = web_mercator_scheme(4)
    old = write_cache(tmp_path / "old" / "c" / "Layers", scheme, {1: TileRange(0, 1, 0, 1)})
    new_layers = tmp_path / "new" / "c" / "Layers"
    new = write_cache(new_layers, scheme, {1: TileRange(0, 1, 0, 1)})
    clear = io.BytesIO()
    Image.new("RGBA", (256, 256), (0, 0, 0, 0)).save(clear, "PNG")
    writer = open_writer(StorageFormat.COMPACT_V2, new_layers / "_alllayers", 1, 0, 0, "spec")
    for row, col in sorted(k[1:] for k in new):
        writer.add(row, col, clear.getvalue() if (row, col) == (0, 1) else new[(1, row, col)])
    writer.commit()
    out = tmp_path / "out"
    for folder, overwrite in (("old", False), ("new", True)):
        source = open_cache(str(tmp_path / folder / "c" / "Layers"))
        Exporter(source, [1], Selection(), ExportOptions(out, StorageFormat.COMPACT_V2,
                                                         overwrite=overwrite)).run()
        source.close()
    tiles = read_all_tiles(out / "c" / "Layers")
    assert (1, 0, 1) not in tiles and (1, 0, 1) in old
    assert tiles == {k: v for k, v in new.items() if k != (1, 0, 1)}


def test_jpeg_encoding_blends_partly_transparent_pixels_with_the_background():
    """Clipped tiles have only clear and opaque pixels; a half-transparent one (a merged
    anti-aliased edge) is blended with the background colour, not cut to it."""
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[...] = (0, 0, 200, 128)  # half-opaque blue
    data = TileEncoding("JPEG", 95, (255, 255, 255)).encode(pixels)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    expected = np.array([127, 127, 227])  # 0.5 * (0, 0, 200) + 0.5 * (255, 255, 255)
    assert abs(decoded[8:24, 8:24] - expected).max() <= 3
