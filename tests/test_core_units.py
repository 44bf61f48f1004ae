"""Unit tests of the engine's tile math, level selection and metadata round trips (no QGIS)."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import ORIGIN, web_mercator_scheme  # noqa: E402
from shapely.geometry import Polygon  # noqa: E402

from export_map_server_cache.core.errors import CacheError  # noqa: E402
from export_map_server_cache.core.formats.conf_xml import (  # noqa: E402
    parse_conf_cdi,
    parse_conf_xml,
    write_conf_cdi,
    write_conf_xml,
)
from export_map_server_cache.core.formats.package_metadata import root_json  # noqa: E402
from export_map_server_cache.core.grid.extent import Extent  # noqa: E402
from export_map_server_cache.core.grid.spatial_reference import (  # noqa: E402
    SpatialReference,
    geographic_extent,
)
from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402
from export_map_server_cache.core.selection.levels import select_levels  # noqa: E402
from export_map_server_cache.core.selection.tile_selection import (  # noqa: E402
    Coverage,
    ExtentSelection,
    PolygonSelection,
)
from export_map_server_cache.core.sources.service_json import scheme_from_service_json  # noqa: E402

SCHEME = web_mercator_scheme(levels=24)


def test_tile_range_of_the_whole_world_at_level_8_is_256_tiles_wide():
    # GDAL's int((maxx-minx)/res) gives 65535 px here (spec §8.2); we must get 256 full tiles.
    tiles = SCHEME.tile_range(8, Extent(-ORIGIN, -ORIGIN, ORIGIN, ORIGIN))
    assert tiles == TileRange(0, 255, 0, 255)


def test_extent_on_tile_edges_does_not_pull_in_neighbours():
    tile = SCHEME.tile_extent(5, 10, 12)
    assert SCHEME.tile_range(5, tile) == TileRange(10, 10, 12, 12)
    # a tenth of a pixel into the neighbour is still not enough to select it
    res = SCHEME.lod(5).resolution
    nudged = Extent(tile.xmin, tile.ymin, tile.xmax + res / 20, tile.ymax)
    assert SCHEME.tile_range(5, nudged) == TileRange(10, 10, 12, 12)
    wider = Extent(tile.xmin, tile.ymin, tile.xmax + res, tile.ymax)
    assert SCHEME.tile_range(5, wider) == TileRange(10, 10, 12, 13)


def test_tile_extent_and_range_are_inverse():
    for level, row, col in [(0, 0, 0), (7, 100, 3), (17, 50000, 131071)]:
        assert SCHEME.tile_range(level, SCHEME.tile_extent(level, row, col)) == TileRange(
            row, row, col, col
        )


def test_levels_and_ranges_parse_like_export_tiles():
    assert select_levels("0-3,7", "", SCHEME) == [0, 1, 2, 3, 7]
    assert select_levels(" 5 ; 2 ", "", SCHEME) == [2, 5]
    assert select_levels("", "", SCHEME) == list(range(24))


@pytest.mark.parametrize(
    "levels, message",
    [("30", "not in the cache's tiling scheme. Valid levels: 0-23"), ("a-b", "not a level"),
     ("5-2", "runs backwards")],
)
def test_bad_levels_say_what_is_valid(levels, message):
    with pytest.raises(CacheError, match=message):
        select_levels(levels, "", SCHEME)


def test_scales_match_with_a_small_relative_tolerance():
    assert select_levels("", "591657527.591555;1:73957190.95", SCHEME) == [0, 3]
    assert select_levels("", "591657500", SCHEME) == [0]  # 5e-8 relative off
    with pytest.raises(CacheError, match=r"Valid scales: 591657527\.591555 \(level 0\)"):
        select_levels("", "500000000", SCHEME)
    with pytest.raises(CacheError, match="not both"):
        select_levels("1", "591657527.591555", SCHEME)


# the spec's conf.xml and conf.cdi (§4.3, §5) for Web Mercator, without their indentation
WEB_MERCATOR_SR_XML = (
    b'<SpatialReference xsi:type="typens:ProjectedCoordinateSystem"><WKT>PROJCS["WGS_1984_Web_'
    b'Mercator_Auxiliary_Sphere",GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",'
    b'6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],'
    b'PROJECTION["Mercator_Auxiliary_Sphere"],PARAMETER["False_Easting",0.0],PARAMETER["False_'
    b'Northing",0.0],PARAMETER["Central_Meridian",0.0],PARAMETER["Standard_Parallel_1",0.0],'
    b'PARAMETER["Auxiliary_Sphere_Type",0.0],UNIT["Meter",1.0],AUTHORITY["EPSG",3857]]</WKT>'
    b"<XOrigin>-20037700</XOrigin><YOrigin>-30241100</YOrigin><XYScale>148923141.92838538"
    b"</XYScale><ZOrigin>-100000</ZOrigin><ZScale>10000</ZScale><MOrigin>-100000</MOrigin>"
    b"<MScale>10000</MScale><XYTolerance>0.001</XYTolerance><ZTolerance>0.001</ZTolerance>"
    b"<MTolerance>0.001</MTolerance><HighPrecision>true</HighPrecision><WKID>102100</WKID>"
    b"<LatestWKID>3857</LatestWKID></SpatialReference>")
XML_HEAD = (b'<?xml version="1.0" encoding="utf-8" ?><EnvelopeN xsi:type="typens:EnvelopeN" '
            b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/'
            b'2001/XMLSchema" xmlns:typens="http://www.esri.com/schemas/ArcGIS/10.3">')


def test_conf_xml_round_trip_keeps_every_value():
    data = write_conf_xml(SCHEME)
    assert WEB_MERCATOR_SR_XML in data
    assert (b'<TileOrigin xsi:type="typens:PointN"><X>-20037508.342787</X><Y>20037508.342787'
            b"</Y></TileOrigin><TileCols>256</TileCols><TileRows>256</TileRows><DPI>96</DPI>"
            b"<PreciseDPI>96</PreciseDPI>") in data
    assert (b'<LODInfo xsi:type="typens:LODInfo"><LevelID>0</LevelID><Scale>591657527.591555'
            b"</Scale><Resolution>156543.03392800014</Resolution></LODInfo>") in data
    assert b"<StorageFormat>esriMapCacheStorageModeCompactV2</StorageFormat>" in data
    assert parse_conf_xml(data) == SCHEME
    parsed = parse_conf_xml(data)
    assert parsed.lods == SCHEME.lods  # exact doubles, not rounded
    assert parsed.spatial_reference.wkt.startswith("PROJCS[")
    assert len(data) >= 512  # GDAL identifies conf.xml files of 512 bytes or more


def test_conf_cdi_round_trip():
    extent = Extent(-13957367.097127762, 2138191.3488613046, -7435700.216165917, 7765256.993362999)
    data = write_conf_cdi(extent, SCHEME.spatial_reference)
    assert data == XML_HEAD + (  # the spec's example (§5), 7765256.9933629986 the same double
        b"<XMin>-13957367.097127762</XMin><YMin>2138191.3488613046</YMin><XMax>"
        b"-7435700.216165917</XMax><YMax>7765256.993362999</YMax>") + WEB_MERCATOR_SR_XML + (
        b"</EnvelopeN>")
    assert parse_conf_cdi(data) == extent


def test_gdal_readable_lods_drop_level_23_unless_it_holds_tiles():
    assert SCHEME.gdal_readable_lods()[-1].level == 22
    assert SCHEME.gdal_readable_lods([23])[-1].level == 23


def test_root_json_round_trips_through_the_service_json_reader():
    extent = Extent(0, 0, 1000, 1000)
    data = root_json(SCHEME, "x", 2, 5, extent)
    assert data.startswith(  # the key order of the spec's example (§6.2), for GDAL
        b'{"version":1.0,"name":"x","tileBundlesPath":"./tile","storageInfo":{"storageFormat":'
        b'"esriMapCacheStorageModeCompactV2","packetSize":128},"tileImageInfo":{"format":"PNG",'
        b'"compressionQuality":0,"bandCount":1,"lercError":0},"serviceDescription":"",')
    root = json.loads(data)
    assert (root["minScale"], root["maxScale"]) == (147914381.897889, 18489297.737236)
    assert root["tileInfo"]["origin"] == {"x": -20037508.342787, "y": 20037508.342787}
    assert root["tileInfo"]["lods"][0] == {"level": 0, "resolution": 156543.03392800014,
                                           "scale": 591657527.591555}
    scheme = scheme_from_service_json(root, "root.json")
    assert scheme.spatial_reference.same_crs(SCHEME.spatial_reference)
    assert scheme.spatial_reference.domain == SCHEME.spatial_reference.domain  # flag restored
    assert replace(scheme, spatial_reference=SCHEME.spatial_reference) == SCHEME
    assert (root["minLOD"], root["maxLOD"]) == (2, 5)
    assert scheme.full_extent == extent


def test_spatial_reference_domain_survives_json_and_xml():
    sr = SpatialReference(wkid=102100, latest_wkid=3857).with_defaults()
    assert sr.to_json() == {  # ArcGIS's domain of Web Mercator (spec §4.3, §6.2)
        "wkid": 102100, "latestWkid": 3857, "falseX": -20037700, "falseY": -30241100,
        "xyUnits": 148923141.92838538, "falseZ": -100000, "zUnits": 10000, "falseM": -100000,
        "mUnits": 10000, "xyTolerance": 0.001, "zTolerance": 0.001, "mTolerance": 0.001}
    back = SpatialReference.from_json(sr.to_json())
    assert back.same_crs(sr) and dict(back.domain)["XYScale"] == "148923141.92838538"
    assert SpatialReference(wkid=3857).same_crs(SpatialReference(wkid=102100, latest_wkid=3857))
    assert not SpatialReference(wkid=4326).same_crs(SpatialReference(wkid=3857))


def test_geographic_extent_of_web_mercator_world():
    world = geographic_extent(Extent(-ORIGIN, -ORIGIN, ORIGIN, ORIGIN),
                              SpatialReference(wkid=3857))
    assert world.xmin == pytest.approx(-180) and world.ymax == pytest.approx(85.0511287798)


def test_scheme_differences_name_what_differs():
    other = web_mercator_scheme(levels=24, storage=StorageFormat.COMPACT, tile_size=512)
    found = "; ".join(SCHEME.differences(other))
    assert "tile size 256x256 vs 512x512" in found
    assert "storage format Compact V2 vs Compact V1" in found
    assert "level 0 resolution" in found
    assert SCHEME.differences(web_mercator_scheme(levels=3), [2]) == []
    assert "levels [5] are missing" in "; ".join(
        SCHEME.differences(web_mercator_scheme(levels=3), [5]))


def test_polygon_selection_skips_tiles_in_the_bounding_box_but_outside_an_l_shape():
    # an L over level-3 tiles: rows 0-3 of col 0, and row 3 of cols 0-3
    t = SCHEME.tile_extent
    x0, y_top = t(3, 0, 0).xmin, t(3, 0, 0).ymax
    x1, y1 = t(3, 0, 0).xmax, t(3, 2, 0).ymin
    x4, y4 = t(3, 3, 3).xmax, t(3, 3, 3).ymin
    shape = Polygon([(x0, y_top), (x1, y_top), (x1, y1), (x4, y1), (x4, y4), (x0, y4)])
    selection = PolygonSelection(SCHEME, shape.wkb)
    chosen = {(r, c) for r in range(8) for c in range(8) if selection.contains(3, r, c)}
    assert chosen == {(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (3, 2), (3, 3)}
    assert selection.bundle_coverage(3, 0, 0) is Coverage.SOME


def test_extent_selection_bundle_coverage():
    selection = ExtentSelection(SCHEME, SCHEME.range_extent(9, TileRange(0, 300, 0, 127)))
    assert selection.bundle_coverage(9, 0, 0) is Coverage.ALL
    assert selection.bundle_coverage(9, 256, 0) is Coverage.SOME
    assert selection.bundle_coverage(9, 0, 128) is Coverage.NONE


def test_a_huge_level_range_is_compared_not_expanded():
    import tracemalloc
    tracemalloc.start()
    with pytest.raises(CacheError, match=r"level\(s\) 24,25,26,27,28,29,30,31,32,33,… are not"):
        select_levels("0-100000000", "", SCHEME)
    assert select_levels("20-23,0-1", "", SCHEME) == [0, 1, 20, 21, 22, 23]
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()
