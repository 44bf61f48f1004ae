"""The client against what real ArcGIS servers say (tests/fixtures/arcgis-replies, replayed by
the loopback server through tests/replay_service.py), and against a service whose tiles the
server reads without the engine: every expected value here comes from the replies, the tile
math or readers that share no code with the engine.
"""
from __future__ import annotations

import io
import math
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import read_output, snapshot  # noqa: E402
from independent_readers import output_tiles, v2_folder_tiles  # noqa: E402
from recording import recording_feedback  # noqa: E402
from replay_service import (  # noqa: E402
    ReplayService,
    reply_fixture,
    service_fixture,
    service_json_of_dataset,
)
from test_http_export import SAMPLE, export_error, run_export  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

Key = tuple[int, int, int]
HTML = "text/html;charset=utf-8"


def tiles_of_extent(service: dict, levels, skip=(), image_format="PNG") -> dict[Key, bytes]:
    """A distinct image for every tile of the service's full extent at `levels`, by the tile
    math of the service's own tileInfo (spec §8.2), except `skip`."""
    info, extent = service["tileInfo"], service["fullExtent"]
    lods = {lod["level"]: lod["resolution"] for lod in info["lods"]}
    tiles = {}
    for level in levels:
        span = lods[level] * info["cols"]
        cols = range(math.floor((extent["xmin"] - info["origin"]["x"]) / span),
                     math.floor((extent["xmax"] - info["origin"]["x"]) / span) + 1)
        rows = range(math.floor((info["origin"]["y"] - extent["ymax"]) / span),
                     math.floor((info["origin"]["y"] - extent["ymin"]) / span) + 1)
        for row in rows:
            for col in cols:
                if (level, row, col) not in skip:
                    out = io.BytesIO()
                    Image.new("RGBA", (info["cols"], info["rows"]),
                              (40 * level, 7 * row % 256, 11 * col % 256, 255)).convert(
                        "RGB" if image_format == "JPEG" else "RGBA").save(out, image_format)
                    tiles[(level, row, col)] = out.getvalue()
    return tiles


def tile_requests(server) -> Counter:
    return Counter((e.level, e.row, e.col) for e in server.log.entries() if e.kind == "tile")


@pytest.fixture(params=[False, True], ids=["gdal-errors-as-codes", "gdal-exceptions"])
def gdal_exceptions(request):
    """GDAL's error mode, which is process-wide: any plugin of the desktop may switch it."""
    from osgeo import gdal

    before = gdal.GetUseExceptions()
    (gdal.UseExceptions if request.param else gdal.DontUseExceptions)()
    yield request.param
    (gdal.UseExceptions if before else gdal.DontUseExceptions)()


def test_a_10_04_server_in_a_local_crs_is_exported_as_it_describes_itself(serve, tmp_path,
                                                                         gdal_exceptions):
    """ArcGIS Server 10.04: SAD69 / UTM 23S by wkid only, a tile origin of its own, levels that
    stop halving at level 8, PNG32, no tilemap, no exportTiles fields. GDAL cannot open the
    dataset (its grid from the origin down to level 10 is too large for it): the export says so
    and does not add it to the map, in either of GDAL's error modes."""
    service = service_fixture("mapserver-10.04-utm23s-png32.json")
    holes = {(2, 1, 1), (2, 3, 4)}
    tiles = tiles_of_extent(service, (0, 1, 2), skip=holes)
    server = serve({"ortho": ReplayService(service, tiles)})
    feedback = recording_feedback()
    result = run_export({"INPUT_SERVICE": server.service_url("ortho"), "LEVELS": "0-2",
                         "TARGET_CACHE_PATH": str(tmp_path)}, feedback)
    out = Path(result["OUTPUT_CACHE_PATH"])
    assert read_output(out) == tiles
    assert result["TILE_COUNT"] == len(tiles)
    asked = tile_requests(server)
    assert set(asked) == set(tiles) | holes  # every tile of the extent, and only those
    assert not [e for e in server.log.entries() if e.kind == "tilemap"]
    assert any(line.endswith("tilemap no; exportTiles not stated") for line in feedback.infos)
    assert any("cannot open" in line and "not added to the map" in line
               for line in feedback.warnings), feedback.text

    conf = ElementTree.parse(out / "conf.xml").getroot()
    info = conf.find("TileCacheInfo")
    assert info.findtext("SpatialReference/WKID") == "29193"
    assert (float(info.findtext("TileOrigin/X")), float(info.findtext("TileOrigin/Y"))) == (
        620000, 7500000)
    assert [(int(lod.findtext("LevelID")), float(lod.findtext("Resolution")),
             float(lod.findtext("Scale"))) for lod in info.find("LODInfos")] == [
        (lod["level"], lod["resolution"], lod["scale"]) for lod in service["tileInfo"]["lods"]]
    assert conf.findtext("TileImageInfo/CacheTileFormat") == "PNG32"


def test_an_image_service_of_lerc_elevation_tiles_is_refused_as_not_images(serve, tmp_path):
    """README: "elevation (LERC) tile services are refused as 'not an image'": an ArcGIS
    Online image service with a LERC2D raster cache (singleFusedMapCache false, tileInfo
    given) is refused before any tile is asked for."""
    server = serve({"depth/ImageServer": ReplayService(
        service_fixture("imageserver-12-lerc2d-raster-cache.json"), {})})
    message = export_error({"INPUT_SERVICE": server.service_url("depth/ImageServer"),
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "LERC2D" in message and "not an image" in message
    assert not tile_requests(server)
    assert not (tmp_path / "out").exists() or snapshot(tmp_path / "out") == {}


JSON = "application/json; charset=utf-8"
REFUSALS = {  # reply: (fixture, content type, what the user is told)
    "498 server pjson": ("error-498-invalid-token.pjson", "text/plain;charset=utf-8",
                         "refused access (498: Invalid Token)"),
    "498 online": ("error-498-invalid-token-online.json", JSON,
                   "refused access (498: Invalid token.)."),
    "499 server": ("error-499-token-required-server.json", JSON,
                   "refused access (499: Token Required)."),
    "499 online": ("error-499-token-required-online.json", JSON,
                   "refused access (499: Token Required)."),
    "403 online": ("error-403-no-permission.json", JSON,
                   "refused access (403: You do not have permissions to access this resource "
                   "or perform this operation.)."),
    "html page": ("invalid-token-page.html", HTML, "refused access (498: Invalid Token)"),
}


@pytest.mark.parametrize("kind", ["service", "tile"])
@pytest.mark.parametrize("reply", list(REFUSALS))
def test_a_refused_token_is_a_refusal_however_it_is_said(kind, reply, serve, tmp_path):
    """A missing, expired or insufficient token as ArcGIS Server and ArcGIS Online say it (JSON
    errors 498/499/403 with HTTP 200, in the server's spaced pjson form or Online's compact one
    with a messageCode and details, or an HTML page), on the service JSON or on the tiles: the
    run stops at once with the server's own words, and no tile is asked for twice."""
    fixture, content_type, told = REFUSALS[reply]
    service = service_json_of_dataset(SAMPLE / "Layers")
    server = serve({"world": ReplayService(service, v2_folder_tiles(
        SAMPLE / "Layers" / "_alllayers"), {kind: (200, reply_fixture(fixture), content_type)})})
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-2",
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert told in message
    assert max(tile_requests(server).values(), default=1) == 1
    assert not (tmp_path / "out").exists() or snapshot(tmp_path / "out") == {}


def test_an_html_error_page_is_retried_then_reported(serve, tmp_path):
    """The ArcGIS REST Framework's HTML page for a failing request (HTTP 500): retried with
    backoff, then the run stops saying how many tiles failed and why, with nothing written."""
    service = service_json_of_dataset(SAMPLE / "Layers")
    server = serve({"world": ReplayService(service, v2_folder_tiles(
        SAMPLE / "Layers" / "_alllayers"), {"tile": (500, reply_fixture("error-500-page.html"),
                                                     HTML)})})
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0",
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "1 tile could not be downloaded after 6 attempts each (1 x HTTP 500" in message
    assert tile_requests(server) == {(0, 0, 0): 6}
    assert not (tmp_path / "out").exists() or snapshot(tmp_path / "out") == {}


@pytest.mark.parametrize("kind", ["tpkx", "dataset-v2"])
def test_tiles_served_without_the_engine_are_exported_byte_for_byte(kind, serve, tmp_path):
    """The sample cache served from its bundles read by the spec-only parser and its JSON
    written from its conf.xml read as plain XML (with a tilemap answered from those tiles):
    the output, read by a reader independent of the engine, holds exactly those tiles."""
    sample = {k: v for k, v in v2_folder_tiles(SAMPLE / "Layers" / "_alllayers").items()
              if k[0] <= 3}
    server = serve({"world": ReplayService(service_json_of_dataset(SAMPLE / "Layers"), sample)})
    result = run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-3",
                         "EXPORT_CACHE_TYPE": int(kind == "tpkx"),
                         "TARGET_CACHE_PATH": str(tmp_path)})
    assert output_tiles(Path(result["OUTPUT_CACHE_PATH"]), kind) == sample
    assert result["TILE_COUNT"] == len(sample)
    assert [e for e in server.log.entries() if e.kind == "tilemap"]
    assert set(tile_requests(server)) == set(sample)


def test_an_arcgis_online_hosted_tile_layer_is_exported_by_its_tilemap(serve, tmp_path):
    """An ArcGIS Online hosted tile layer (10.81, `TilesOnly,Tilemap`, Compact V2, UTM 18N,
    minLOD/maxLOD, exportTiles not allowed): its tilemap is used, so exactly the tiles that
    exist are asked for, once each, and the output holds them with the service's grid."""
    service = service_fixture("hosted-tile-layer-10.81-utm18n-tilemap.json")
    every = tiles_of_extent(service, range(4))
    holes = set(sorted(k for k in every if k[0] == 3)[::7]) | {min(every)}
    tiles = {k: v for k, v in every.items() if k not in holes}
    server = serve({"Philadelphia2": ReplayService(service, tiles)})
    feedback = recording_feedback()
    result = run_export({"INPUT_SERVICE": server.service_url("Philadelphia2"), "LEVELS": "0-3",
                         "EXPORT_CACHE_TYPE": 1, "TARGET_CACHE_PATH": str(tmp_path)}, feedback)
    out = Path(result["OUTPUT_CACHE_PATH"])
    assert output_tiles(out, "tpkx") == tiles
    assert tile_requests(server) == Counter(tiles.keys())  # each once
    assert [e for e in server.log.entries() if e.kind == "tilemap"]
    assert any(line.endswith("levels 0-4, PNG, tilemap yes; exportTiles not allowed, "
                             "maxExportTilesCount 100000") for line in feedback.infos), \
        feedback.text


def test_a_world_jpeg_basemap_with_a_tilemap_asks_only_for_tiles_that_exist(serve, tmp_path):
    """ArcGIS Online's USA Topo Maps (10.91, Web Mercator by wkid 102100, JPEG quality 75,
    `Map,Tilemap`, a full extent a little short of the world's in y): levels 0-3 with holes
    are exported without one request for a missing tile, into a Compact V2 dataset that says
    JPEG and holds the served bytes."""
    service = service_fixture("mapserver-10.91-usa-topo-jpeg-tilemap.json")
    every = tiles_of_extent(service, range(4), image_format="JPEG")
    assert len(every) == 1 + 4 + 16 + 64  # the whole world: the extent's y is inside row 0
    holes = {(1, 0, 1), (2, 3, 0), (3, 2, 5), (3, 7, 7)}
    tiles = {k: v for k, v in every.items() if k not in holes}
    server = serve({"USA_Topo_Maps": ReplayService(service, tiles)})
    result = run_export({"INPUT_SERVICE": server.service_url("USA_Topo_Maps"), "LEVELS": "0-3",
                         "TARGET_CACHE_PATH": str(tmp_path)})
    out = Path(result["OUTPUT_CACHE_PATH"])
    assert output_tiles(out, "dataset-v2") == tiles
    assert tile_requests(server) == Counter(tiles.keys())  # each once
    conf = ElementTree.parse(out / "conf.xml").getroot()
    assert conf.findtext("TileImageInfo/CacheTileFormat") == "JPEG"
    assert conf.findtext("TileImageInfo/CompressionQuality") == "75"
