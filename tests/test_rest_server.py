"""The loopback ArcGIS REST server (scripts/arcgis_rest_server.py) that client tests, the demo and
the bench rely on: what it serves must equal what the cache reader reads, and each misbehaviour
it offers must look exactly as specified."""
from __future__ import annotations

import base64
import contextlib
import http.client
import importlib.util
import io
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import read_all_tiles  # noqa: E402

from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = REPO / "scripts" / "arcgis_rest_server.py"
SAMPLE = REPO / "sample" / "world_map" / "Layers"
FIXTURES = REPO.parent / "shared" / "fixtures" / "esri-written"
FIXTURE_NAMES = sorted(
    p.name for p in FIXTURES.iterdir() if p.name != "README.md"
) if FIXTURES.is_dir() else []
V1 = "arcgis-server-10.1-compact-v1"
V1_KEY = "esri/arcgis-server-10_1-compact-v1"
TPKX = "arcgis-pro-wgs84.tpkx"


def _service_key(fixture: str) -> str:
    return "esri/" + fixture.replace(".", "_")


# (service key, cache path) for the sample and every Esri-written fixture.
CASES = [("world_map", SAMPLE)] + [(_service_key(n), FIXTURES / n) for n in FIXTURE_NAMES]
# Literal facts about each cache, so the JSON is not only checked against the same reader.
KNOWN = {
    "world_map": dict(cols=256, fmt="PNG", storage="esriMapCacheStorageModeCompactV2",
                      units="esriMeters", wkid=102100, lods=23),
    "esri/arcgis-pro-wgs84_tpkx": dict(cols=512, fmt="PNG", units="esriDecimalDegrees",
                                       storage="esriMapCacheStorageModeCompactV2", wkid=4326,
                                       lods=24),
    V1_KEY: dict(cols=256, fmt="PNG24", storage="esriMapCacheStorageModeCompact",
                       units="esriDecimalDegrees", wkid=4326, lods=3),
    "esri/arcmap-10_3-states_filled_tpk": dict(cols=256, fmt="PNG8", units="esriMeters",
                                               storage="esriMapCacheStorageModeCompact",
                                               wkid=102100, lods=5),
    "esri/esri-sample-compact-v2": dict(cols=256, fmt="JPEG", units="esriMeters",
                                        storage="esriMapCacheStorageModeCompactV2", wkid=3857,
                                        lods=20),
}
NOT_FOUND = b'{"error":{"code":404,"message":"Tile not found","details":[]}}'


@pytest.fixture(scope="module")
def rest():
    """The server module, loaded from its path (scripts/ is not a package)."""
    if "arcgis_rest_server" not in sys.modules:
        spec = importlib.util.spec_from_file_location("arcgis_rest_server", SERVER_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["arcgis_rest_server"]


@pytest.fixture(scope="module")
def server(rest, fixtures_dir):
    services = {key: str(path) for key, path in CASES}
    services = {"world_map/ImageServer": str(SAMPLE), **services}  # same name, both types
    with rest.ArcGISRestServer(services) as running:
        yield running


@pytest.fixture
def srv(server, rest):
    """The shared server with default options, a fresh log and fresh fault counters."""
    server.options = rest.ServerOptions()
    server.reset_faults()
    server.log.clear()
    return server


@pytest.fixture(scope="module")
def tiles():
    """{service key: {(level, row, col): bytes}} read with the plugin's own reader."""
    return {key: read_all_tiles(path) for key, path in CASES}


def get(url: str, headers: dict | None = None, timeout: float = 5.0):
    """(status, headers, body) of a GET, HTTP errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def get_json(url: str, **kwargs) -> dict:
    status, headers, body = get(url, **kwargs)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    return json.loads(body)


def error_body(code: int, message: str) -> bytes:
    return b'{"error":{"code":%d,"message":"%s","details":[]}}' % (code, message.encode())


def test_every_fixture_of_the_folder_is_served():
    assert len(FIXTURE_NAMES) >= 4
    assert {".tpk", ".tpkx"} <= {Path(n).suffix for n in FIXTURE_NAMES}
    assert sum((FIXTURES / n).is_dir() for n in FIXTURE_NAMES) >= 2
    assert set(KNOWN) == {key for key, _ in CASES}


def test_catalog_root_and_folder(srv):
    root = get_json(srv.base_url + "?f=json")
    assert root == {
        "currentVersion": 10.91,
        "folders": ["esri"],
        "services": [
            {"name": "world_map", "type": "ImageServer"},
            {"name": "world_map", "type": "MapServer"},
        ],
    }
    folder = get_json(srv.base_url + "/esri")
    assert folder["folders"] == []
    assert folder["services"] == [
        {"name": key, "type": "MapServer"} for key, _ in sorted(CASES) if key.startswith("esri/")
    ]
    assert get(srv.base_url + "/nowhere")[0] == 404


@pytest.mark.parametrize("key,path", CASES, ids=[key for key, _ in CASES])
def test_service_json_matches_the_cache_scheme(srv, key, path):
    data = get_json(srv.service_url(key) + "?f=json")
    source = open_cache(str(path))
    try:
        scheme, data_extent = source.scheme, source.data_extent
    finally:
        source.close()
    sr = scheme.spatial_reference.to_json()
    assert data["currentVersion"] == 10.91
    assert data["mapName"] == "Layers"
    assert data["capabilities"] == "Map,Query,Data,TilesOnly,Tilemap"
    assert data["singleFusedMapCache"] is True
    assert data["spatialReference"] == sr
    assert data["tileInfo"] == {
        "rows": scheme.tile_rows,
        "cols": scheme.tile_cols,
        "dpi": scheme.dpi,
        "format": scheme.tile_format,
        "compressionQuality": scheme.compression_quality,
        "origin": {"x": scheme.origin_x, "y": scheme.origin_y},
        "spatialReference": sr,
        "lods": [{"level": x.level, "resolution": x.resolution, "scale": x.scale}
                 for x in scheme.lods],
        "storageFormat": scheme.storage_format.value,
    }
    full = scheme.full_extent or data_extent
    initial = scheme.initial_extent or full
    assert data["fullExtent"] == {**full.as_dict(), "spatialReference": sr}
    assert data["initialExtent"] == {**initial.as_dict(), "spatialReference": sr}
    assert (data["minScale"], data["maxScale"]) == (scheme.lods[0].scale, scheme.lods[-1].scale)
    assert (data["minLOD"], data["maxLOD"]) == (scheme.lods[0].level, scheme.lods[-1].level)
    assert data["supportedImageFormatTypes"] == scheme.tile_format
    assert (data["exportTilesAllowed"], data["maxExportTilesCount"]) == (False, 100000)
    assert "tileServers" not in data
    known = KNOWN[key]
    assert data["tileInfo"]["cols"] == data["tileInfo"]["rows"] == known["cols"]
    assert data["tileInfo"]["format"] == known["fmt"]
    assert data["tileInfo"]["storageFormat"] == known["storage"]
    assert data["units"] == known["units"]
    assert data["spatialReference"]["wkid"] == known["wkid"]
    assert len(data["tileInfo"]["lods"]) == known["lods"]


def test_sample_service_json_literal_values(srv):
    data = get_json(srv.service_url("world_map"))
    info = data["tileInfo"]
    assert info["origin"] == {"x": -20037508.342787, "y": 20037508.342787}
    assert info["lods"][0] == {"level": 0, "resolution": 156543.03392800014,
                               "scale": 591657527.591555}
    assert info["lods"][-1] == {"level": 22, "resolution": 0.03732276770595208,
                                "scale": 141.062147}
    assert data["spatialReference"]["latestWkid"] == 3857
    assert data["fullExtent"] == {
        "xmin": -20037508.342787, "ymin": -20037508.342787,
        "xmax": 20037508.342787, "ymax": 20037508.342787,
        "spatialReference": data["spatialReference"],
    }
    assert (data["minLOD"], data["maxLOD"], data["maxScale"]) == (0, 22, 141.062147)


def test_service_url_forms_pjson_and_options(srv):
    url = srv.service_url("world_map")
    plain = get_json(url)
    assert get_json(url + "/") == plain
    status, _, body = get(url + "?f=pjson")
    assert status == 200 and b'\n  "currentVersion": 10.91,' in body
    assert json.loads(body) == plain

    srv.options.tilemap = False
    srv.options.export_tiles_allowed = True
    srv.options.max_export_tiles_count = 500
    srv.options.json_overrides = {"tileServers": ["http://a", "http://b"], "units": None,
                                  "currentVersion": 10.81}
    changed = get_json(url + "?f=json")
    assert changed["capabilities"] == "Map,Query,Data,TilesOnly"
    assert (changed["exportTilesAllowed"], changed["maxExportTilesCount"]) == (True, 500)
    assert changed["tileServers"] == ["http://a", "http://b"]
    assert "units" not in changed and changed["currentVersion"] == 10.81
    assert {k: v for k, v in changed.items() if k not in (
        "capabilities", "exportTilesAllowed", "maxExportTilesCount", "tileServers",
        "currentVersion")} == {k: v for k, v in plain.items() if k not in (
        "capabilities", "exportTilesAllowed", "maxExportTilesCount", "units", "currentVersion")}


def test_image_server_json(srv):
    image = get_json(srv.service_url("world_map/ImageServer") + "?f=json")
    mapserver = get_json(srv.service_url("world_map") + "?f=json")
    assert srv.service_url("world_map") == srv.base_url + "/world_map/MapServer"
    assert srv.service_url("world_map/MapServer") == srv.service_url("world_map")
    assert image["serviceDataType"] == "esriImageServiceDataTypeRGB"
    assert image["bandCount"] == 3
    assert image["extent"] == mapserver["fullExtent"]
    assert image["capabilities"] == "Image,Metadata,TilesOnly,Tilemap"
    assert image["name"] == "world_map" and "mapName" not in image
    for key in ("tileInfo", "fullExtent", "initialExtent", "spatialReference", "minLOD",
                "maxLOD", "singleFusedMapCache", "units"):
        assert image[key] == mapserver[key], key
    status, headers, body = get(srv.service_url("world_map/ImageServer") + "/tile/1/1/0")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body == get(srv.service_url("world_map") + "/tile/1/1/0")[2]


def test_extent_from_the_first_level_with_tiles_when_the_cache_has_none(rest, tmp_path,
                                                                        fixtures_dir):
    copy = tmp_path / "no_cdi"
    shutil.copytree(fixtures_dir / V1, copy)
    (copy / "conf.cdi").unlink()
    with rest.ArcGISRestServer({"v1": str(copy)}) as own:
        data = get_json(own.service_url("v1"))
    # Level 2 (levels 0 and 1 have no tiles) holds rows 2412-2421, columns 3403-3409.
    lod = data["tileInfo"]["lods"][2]
    assert lod["level"] == 2
    span = lod["resolution"] * 256
    expected = {"xmin": -400 + 3403 * span, "ymin": 400 - 2422 * span,
                "xmax": -400 + 3410 * span, "ymax": 400 - 2412 * span}
    for extent in (data["fullExtent"], data["initialExtent"]):
        assert extent.pop("spatialReference") == data["spatialReference"]
        assert extent == pytest.approx(expected, rel=1e-12)
    # The tiles cover the data extent conf.cdi gave.
    assert expected["xmin"] <= 118.36286 and expected["xmax"] >= 119.25
    assert expected["ymin"] <= 31.2292 and expected["ymax"] >= 32.61297


def test_initial_and_full_extent_come_from_the_package_json(rest, tmp_path, fixtures_dir):
    variant = tmp_path / "initial.tpkx"
    with zipfile.ZipFile(fixtures_dir / TPKX) as source, zipfile.ZipFile(variant, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "root.json":
                root = json.loads(data)
                root["initialExtent"] = {"xmin": -10, "ymin": 35, "xmax": 30, "ymax": 60}
                data = json.dumps(root).encode()
            out.writestr(info, data)
    with rest.ArcGISRestServer({"v": str(variant)}) as own:
        data = get_json(own.service_url("v"))
    sr = data["spatialReference"]
    assert data["initialExtent"] == {"xmin": -10, "ymin": 35, "xmax": 30, "ymax": 60,
                                     "spatialReference": sr}
    assert data["fullExtent"] == {"xmin": -180, "ymin": -90, "xmax": 180.00000000000006,
                                  "ymax": 83.64513000000001, "spatialReference": sr}


@pytest.mark.parametrize("key", [key for key, _ in CASES])
def test_every_tile_is_served_byte_for_byte_on_one_kept_alive_connection(srv, tiles, key):
    url = urlsplit(srv.service_url(key))
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    sockets = set()
    try:
        for (level, row, col), data in sorted(tiles[key].items()):
            connection.request("GET", f"{url.path}/tile/{level}/{row}/{col}")
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200, (level, row, col)
            assert body == data, (level, row, col)
            kind = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
            assert response.getheader("Content-Type") == kind
            assert response.getheader("Content-Length") == str(len(data))
            sockets.add(id(connection.sock))
    finally:
        connection.close()
    assert tiles[key] and len(sockets) == 1
    records = srv.log.entries()
    assert len(records) == len(tiles[key])
    assert {(r.level, r.row, r.col) for r in records} == set(tiles[key])
    assert {(r.kind, r.status, r.method) for r in records} == {("tile", 200, "GET")}


def test_parallel_clients_get_the_right_bytes_while_readers_are_evicted(srv, rest, tiles,
                                                                       monkeypatch):
    monkeypatch.setattr(rest, "OPEN_READERS", 1)  # every level switch reopens a bundle
    keys = [(key, tile) for key in ("world_map", V1_KEY, "esri/arcgis-pro-wgs84_tpkx")
            for tile in sorted(tiles[key])[::7]]
    failures = []

    def client(offset: int) -> None:
        connection = None
        try:
            for key, (level, row, col) in keys[offset::8]:
                url = urlsplit(srv.service_url(key))
                if connection is None or connection.port != url.port:
                    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
                connection.request("GET", f"{url.path}/tile/{level}/{row}/{col}")
                if connection.getresponse().read() != tiles[key][(level, row, col)]:
                    failures.append((key, level, row, col))
        finally:
            if connection is not None:
                connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(srv.log.entries()) == len(keys) > 300
    assert srv.log.max_concurrency > 1


def test_missing_tiles_are_404_and_malformed_urls_400(srv):
    world, v1 = srv.service_url("world_map"), srv.service_url(V1_KEY)
    for url in (
        world + "/tile/6/0/0",  # a level of the scheme without a folder
        world + "/tile/99/0/0",  # a level outside the scheme
        world + "/tile/5/32/0",  # beyond the tiles of the level's only bundle
        v1 + "/tile/2/2304/3328",  # an empty slot of an existing bundle
        v1 + "/tile/2/0/0",  # no bundle
        v1 + "/tile/0/0/0",  # a level without tiles
    ):
        status, headers, body = get(url)
        assert (status, body) == (404, NOT_FOUND), url  # as ArcGIS answers
        assert headers["Content-Type"] == "application/json; charset=utf-8"
    for suffix in ("/tile/a/0/0", "/tile/0/0", "/tile/0/-1/0", "/tile/0/0/0/0", "/tile/0/0/1.5"):
        status, _, body = get(world + suffix)
        assert (status, body) == (400, error_body(400, "Invalid URL")), suffix
    assert get(world + "/export")[0] == 404
    assert get(srv.base_url + "/nothing/MapServer")[0] == 404


@pytest.mark.parametrize("body,content_type,expected", [
    ("json", "application/json; charset=utf-8", NOT_FOUND),
    ("plain", "text/plain", NOT_FOUND),
    ("html", "text/html; charset=utf-8", b"<html><body><h1>404 Not Found</h1></body></html>"),
    ("empty", "text/plain", b""),
])
def test_missing_tile_bodies(srv, body, content_type, expected):
    srv.options.missing_tile_body = body
    status, headers, data = get(srv.service_url("world_map") + "/tile/5/32/0")
    assert (status, headers["Content-Type"], data) == (404, content_type, expected)


def test_blank_tile_mode(srv, tiles):
    missing = srv.service_url("esri/arcgis-pro-wgs84_tpkx") + "/tile/5/31/0"
    srv.options.blank_tiles = True
    status, headers, body = get(missing)
    assert (status, headers["blank-tile"], headers["Content-Type"]) == (200, "true", "image/png")
    image = Image.open(io.BytesIO(body))
    assert image.size == (512, 512) and image.mode == "RGBA"
    assert image.getextrema()[3] == (0, 0)  # fully transparent
    status, headers, body = get(missing + "?blankTile=false")
    assert (status, body, headers["blank-tile"]) == (404, NOT_FOUND, None)
    existing = get(srv.service_url("world_map") + "/tile/0/0/0")
    assert existing[1]["blank-tile"] is None and existing[2] == tiles["world_map"][(0, 0, 0)]

    srv.options.ignore_blank_tile_param = True
    status, headers, _ = get(missing + "?blankTile=false")
    assert (status, headers["blank-tile"]) == (200, "true")

    srv.options.blank_tiles = False
    assert get(missing)[0] == 404


def _expected_data(tiles: dict, level: int, top: int, left: int, width: int, height: int):
    return [int((level, r, c) in tiles) for r in range(top, top + height)
            for c in range(left, left + width)]


def test_tilemap_matches_the_tiles_present(srv, tiles):
    tpkx = srv.service_url("esri/arcgis-pro-wgs84_tpkx")
    present = tiles["esri/arcgis-pro-wgs84_tpkx"]
    counts = []
    for level, top, left, width, height in ((5, 0, 0, 32, 32), (5, 8, 16, 16, 8), (3, 0, 0, 8, 8),
                                            (4, 3, 5, 1, 1)):
        data = get_json(f"{tpkx}/tilemap/{level}/{top}/{left}/{width}/{height}?f=json")
        expected = _expected_data(present, level, top, left, width, height)
        assert data == {
            "adjusted": False,
            "location": {"left": left, "top": top, "width": width, "height": height},
            "valid": True,
            "data": expected,
        }
        counts.append((sum(expected), width * height))
    assert counts[0][0] not in (0, counts[0][1])  # a window with tiles and holes


def test_tilemap_clips_windows_to_the_bundle_of_their_top_left_tile(srv, tiles):
    v1, present = srv.service_url(V1_KEY), tiles[V1_KEY]
    # The bundle R0900C0d00 spans rows 2304-2431, columns 3328-3455.
    data = get_json(f"{v1}/tilemap/2/2415/3405/60/30")
    assert data["adjusted"] is True
    assert data["location"] == {"left": 3405, "top": 2415, "width": 51, "height": 17}
    assert data["data"] == _expected_data(present, 2, 2415, 3405, 51, 17)
    assert sum(data["data"]) == 7 * 5  # rows 2415-2421, columns 3405-3409

    rows_only = get_json(f"{v1}/tilemap/2/2420/3400/8/32")
    assert rows_only["adjusted"] is True
    assert rows_only["location"] == {"left": 3400, "top": 2420, "width": 8, "height": 12}
    assert rows_only["data"] == _expected_data(present, 2, 2420, 3400, 8, 12)

    inside = get_json(f"{v1}/tilemap/2/2400/3400/32/32")
    assert inside["adjusted"] is False
    assert inside["data"] == _expected_data(present, 2, 2400, 3400, 32, 32)

    world = get_json(srv.service_url("world_map") + "/tilemap/5/20/10/300/300")
    assert world["adjusted"] is True
    assert world["location"] == {"left": 10, "top": 20, "width": 118, "height": 108}
    assert world["data"] == _expected_data(tiles["world_map"], 5, 20, 10, 118, 108)


def test_tilemap_clip_modes(srv, tiles):
    world, present = srv.service_url("world_map"), tiles["world_map"]
    srv.options.tilemap_clip = "window"  # the whole window, across bundles and the grid
    data = get_json(f"{world}/tilemap/5/20/10/300/300")
    assert data["adjusted"] is False
    assert data["location"] == {"left": 10, "top": 20, "width": 300, "height": 300}
    assert data["data"] == _expected_data(present, 5, 20, 10, 300, 300)
    srv.options.tilemap_clip = "grid"  # level 5 of the world: 32x32 tiles
    data = get_json(f"{world}/tilemap/5/20/10/300/300")
    assert (data["adjusted"], data["location"]) == (
        True, {"left": 10, "top": 20, "width": 22, "height": 12})
    assert data["data"] == _expected_data(present, 5, 20, 10, 22, 12)
    assert get(f"{world}/tilemap/5/40/0/8/8")[0] == 422  # wholly beyond the grid
    srv.options.tilemap_clip, srv.options.tilemap_block = "block", 8
    data = get_json(f"{world}/tilemap/5/4/5/32/32")
    assert (data["adjusted"], data["location"]) == (
        True, {"left": 5, "top": 4, "width": 3, "height": 4})
    assert data["data"] == _expected_data(present, 5, 4, 5, 3, 4)


def test_tilemap_422_modes(srv, tiles):
    """A window whose clipped part is empty but whose rest has tiles: ArcGIS's bug answers
    422 ("answered"), a correct server an all-zero adjusted map; "never" has no 422 at all."""
    v1, present = srv.service_url(V1_KEY), tiles[V1_KEY]
    _, row, col = min(key for key in present if key[0] == 2)  # nothing above it in its column
    top = row - row % 8 - 8
    srv.options.tilemap_clip, srv.options.tilemap_block = "block", 8
    window = f"{v1}/tilemap/2/{top}/{col}/1/16"
    assert sum(_expected_data(present, 2, top, col, 1, 16)) > 0
    data = get_json(window)
    assert (data["adjusted"], data["location"]["height"], sum(data["data"])) == (True, 8, 0)
    srv.options.tilemap_422 = "answered"
    assert get(window)[0] == 422
    srv.options.tilemap_422 = "never"
    empty = get_json(f"{v1}/tilemap/2/0/0/4/4")
    assert (empty["adjusted"], empty["data"]) == (False, [0] * 16)
    srv.options.tilemap_clip = "grid"  # a window wholly beyond the grid: an empty location
    beyond = get_json(srv.service_url("world_map") + "/tilemap/5/40/0/8/8")
    assert beyond == {"adjusted": True, "location": {"left": 0, "top": 40, "width": 0,
                                                     "height": 0}, "valid": True, "data": []}


def test_tilemap_without_tiles_is_422_and_can_be_disabled(srv):
    v1 = srv.service_url(V1_KEY)
    body_422 = error_body(422, "Tiles not present")
    for window in ("2/2304/3328/8/8", "2/0/0/32/32", "1/0/0/4/4", "2/2422/3400/200/200"):
        status, _, body = get(f"{v1}/tilemap/{window}")
        assert (status, body) == (422, body_422), window
    assert get(f"{v1}/tilemap/2/2412/3403/0/4")[0] == 400
    srv.options.tilemap = False
    status, _, body = get(f"{v1}/tilemap/2/2412/3403/4/4")
    assert (status, body) == (400, error_body(400, "Tilemap not supported"))
    assert [r.kind for r in srv.log.entries()][-1] == "tilemap"


@pytest.mark.parametrize("fault,status,message", [
    ("500", 500, "Internal Server Error"),
    ("503", 503, "Service Unavailable"),
    ("429", 429, "Too Many Requests"),
])
def test_status_faults_then_the_tile(srv, tiles, fault, status, message):
    url = srv.service_url("world_map") + "/tile/2/1/3"
    srv.options.fault, srv.options.fault_fraction = fault, 1.0
    got, headers, body = get(url)
    assert (got, body) == (status, error_body(status, message))
    assert headers["Retry-After"] == {"500": None, "503": None, "429": "1"}[fault]
    got, headers, body = get(url)
    assert (got, body) == (200, tiles["world_map"][(2, 1, 3)])

    srv.reset_faults()
    srv.options.retry_after = 2.5
    got, headers, _ = get(url)
    assert (got, headers["Retry-After"]) == (status, None if fault == "500" else "2.5")
    assert [r.status for r in srv.log.entries()] == [status, 200, status]


@pytest.mark.parametrize("fault", ["json200", "html", "notimage", "truncated"])
def test_content_faults(srv, tiles, fault):
    url = srv.service_url("world_map") + "/tile/3/2/5"
    data = tiles["world_map"][(3, 2, 5)]
    srv.options.fault, srv.options.fault_fraction = fault, 1.0
    status, headers, body = get(url)
    assert status == 200
    assert headers["Content-Length"] == str(len(body))
    if fault == "json200":
        assert headers["Content-Type"] == "text/plain;charset=utf-8"
        assert body == error_body(500, "Error exporting tile")
    elif fault == "html":
        assert headers["Content-Type"].startswith("text/html")
        assert body.startswith(b"<html>") and b"Error" in body
    elif fault == "notimage":
        assert (headers["Content-Type"], body) == ("application/octet-stream", data)
    else:
        assert (headers["Content-Type"], body) == ("image/png", data[: len(data) // 2])
    assert get(url)[2] == data


def test_short_fault_declares_the_full_length_and_closes(srv, tiles):
    url = urlsplit(srv.service_url("world_map"))
    data = tiles["world_map"][(4, 7, 9)]
    srv.options.fault, srv.options.fault_fraction = "short", 1.0
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    try:
        connection.request("GET", url.path + "/tile/4/7/9")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(len(data))
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
        assert caught.value.partial == data[: len(data) // 2]
    finally:
        connection.close()
    assert get(srv.service_url("world_map") + "/tile/4/7/9")[2] == data


def test_hang_fault_outlasts_the_client_timeout(srv, tiles):
    url = srv.service_url("world_map") + "/tile/1/0/1"
    srv.options.fault, srv.options.fault_fraction, srv.options.hang_seconds = "hang", 1.0, 1.0
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        get(url, timeout=0.3)
    assert time.monotonic() - started < 0.9
    assert get(url)[2] == tiles["world_map"][(1, 0, 1)]


def test_fault_attempts_fraction_seed_and_scope(srv, rest, tiles):
    world = srv.service_url("world_map")
    srv.options.fault, srv.options.fault_fraction, srv.options.fault_attempts = "500", 1.0, 3
    assert [get(world + "/tile/2/2/2")[0] for _ in range(4)] == [500, 500, 500, 200]
    assert get(world + "?f=json")[0] == 200  # the service JSON never fails
    assert get(world + "/tilemap/2/0/0/4/4")[0] == 200  # nor the tilemap, unless asked
    srv.options.fault_tilemap = True
    assert [get(world + "/tilemap/2/0/0/4/4")[0] for _ in range(4)] == [500, 500, 500, 200]

    srv.reset_faults()
    srv.options.fault_attempts, srv.options.fault_fraction = 1, 0.3
    level4 = sorted(k for k in tiles["world_map"] if k[0] == 4)
    failed = {k for k in level4 if get(world + "/tile/%d/%d/%d" % k)[0] == 500}
    assert failed == {k for k in level4 if srv.options.selects(*k)}
    assert 0.15 * len(level4) < len(failed) < 0.45 * len(level4)
    other_seed = rest.ServerOptions(fault="500", fault_fraction=0.3, seed=2)
    assert {k for k in level4 if other_seed.selects(*k)} != failed
    assert all(get(world + "/tile/%d/%d/%d" % k)[0] == 200 for k in sorted(failed)[:5])


def test_rate_limit_answers_429_and_does_not_count_rejections(srv):
    """At most `rate_limit` requests are served in any second; rejections do not count, so a
    client that keeps asking is served again once the served ones are a second old. Judged
    by order and count (the first 200 after a run of 429s), not by a tight clock."""
    url = srv.service_url("world_map") + "/tile/0/0/0"
    srv.options.rate_limit = 4
    begun = time.monotonic()  # requests of earlier tests may still end in this one's log
    answers = [get(url) for _ in range(6)]
    assert [a[0] for a in answers] == [200] * 4 + [429] * 2
    assert answers[4][1]["Retry-After"] == "1"
    assert answers[4][2] == error_body(429, "Too Many Requests")
    srv.options.retry_after = 0.5
    assert get(url)[1]["Retry-After"] == "0.5"
    # keep asking every 20 ms: counted rejections would keep the window full for ever
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and get(url)[0] == 429:
        time.sleep(0.02)
    records = [r for r in srv.log.entries() if r.started >= begun]
    statuses = [r.status for r in records]
    assert statuses[-1] == 200 and statuses.count(200) == 5, statuses
    served, again = [r for r in records if r.status == 200][:4], records[-1]
    rejected = [r for r in records if r.status == 429]
    assert len(rejected) >= 10  # asked all along, and refused while the four were recent
    assert again.started >= min(r.started for r in served) + 1.0 - 0.01
    assert again.started - rejected[-1].started < 1.0  # a rejection was in the last second


def test_basic_auth(srv, tiles):
    url = srv.service_url("world_map")
    srv.options.basic_auth = ("ann", "s3cret")
    status, headers, body = get(url)
    assert (status, headers["WWW-Authenticate"]) == (401, 'Basic realm="arcgis"')
    assert body == error_body(401, "Unauthorized")
    wrong = "Basic " + base64.b64encode(b"ann:guess").decode()
    assert get(url + "/tile/0/0/0", headers={"Authorization": wrong})[0] == 401
    assert get(url, headers={"Authorization": "Basic !!!"})[0] == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}
    assert get_json(url, headers=right)["mapName"] == "Layers"
    assert get(url + "/tile/0/0/0", headers=right)[2] == tiles["world_map"][(0, 0, 0)]
    assert get(srv.base_url, headers=right)[0] == 200 and get(srv.base_url)[0] == 401
    assert [(r.kind, r.status) for r in srv.log.entries()][:2] == [("service", 401), ("tile", 401)]


def test_token(srv, tiles):
    url = srv.service_url("world_map") + "/tile/0/0/0"
    data = tiles["world_map"][(0, 0, 0)]
    srv.options.token = "tok123"
    assert get(url, headers={"X-Esri-Authorization": "Bearer tok123 "})[2] == data
    assert get(url + "?token=tok123")[2] == data
    status, headers, body = get(url)
    assert (status, body) == (200, error_body(499, "Token Required"))
    assert headers["Content-Type"].startswith("application/json")
    invalid = error_body(498, "Invalid Token")
    assert get(url, headers={"X-Esri-Authorization": "Bearer nope"})[2] == invalid
    assert get(url + "?token=nope")[2] == invalid
    assert get_json(srv.service_url("world_map") + "?f=json&token=tok123")["mapName"] == "Layers"
    assert get(srv.service_url("world_map"))[2] == error_body(499, "Token Required")


def test_request_log_and_concurrency(srv):
    world = srv.service_url("world_map")
    srv.options.latency = 1.0  # long enough for eight threads to start on a busy machine
    barrier = threading.Barrier(8)
    results = {}

    def fetch(i: int) -> None:
        barrier.wait()
        results[i] = get(f"{world}/tile/3/1/{i}?n={i}", headers={"X-Test": str(i)})[0]

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: 200 for i in range(8)}
    assert srv.log.max_concurrency == 8
    records = srv.log.entries()
    assert sorted(r.col for r in records) == list(range(8))
    for record in records:
        assert (record.kind, record.level, record.row, record.status) == ("tile", 3, 1, 200)
        assert record.path == urlsplit(world).path + f"/tile/3/1/{record.col}"
        assert record.query == {"n": str(record.col)}
        assert record.headers["x-test"] == str(record.col)
        assert record.headers["user-agent"].startswith("Python-urllib")
        assert record.finished - record.started >= 1.0
    # served side by side: every request arrived before the first one was answered
    assert max(r.started for r in records) < min(r.finished for r in records)
    srv.log.clear()
    assert (srv.log.entries(), srv.log.max_concurrency) == ([], 0)


def test_stop_ends_hanging_requests_promptly(rest):
    own = rest.ArcGISRestServer(
        {"w": str(SAMPLE)}, rest.ServerOptions(fault="hang", fault_fraction=1.0)
    ).start()
    url = own.service_url("w") + "/tile/0/0/0"
    outcome = []
    client = threading.Thread(target=lambda: outcome.append(_attempt(url)))
    client.start()
    while not own.log.max_concurrency:
        time.sleep(0.01)
    started = time.monotonic()
    own.stop()
    client.join(5)
    assert time.monotonic() - started < 2
    assert outcome and outcome[0] != 200  # cut, not answered
    assert [r.status for r in own.log.entries()] == [0]
    with pytest.raises(RuntimeError):
        _ = own.base_url


def _attempt(url: str):
    try:
        return get(url, timeout=10)[0]
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__


def test_bad_configuration_is_refused(rest):
    with pytest.raises(ValueError):
        rest.ServerOptions(fault="teapot")
    with pytest.raises(ValueError):
        rest.ArcGISRestServer({"a/b/c": str(SAMPLE)})
    with pytest.raises(ValueError):
        rest.ArcGISRestServer({"a": str(SAMPLE), "a/MapServer": str(SAMPLE)})


def test_command_line(tmp_path, fixtures_dir, tiles):
    ready = tmp_path / "ready.txt"
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), str(SAMPLE), str(fixtures_dir / TPKX),
         "--no-tilemap", "--fault", "503", "--retry-after", "7", "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [process.stdout.readline().strip() for _ in range(2)]
        assert ready.read_text(encoding="utf-8").strip() == lines[0].split(" ", 1)[1]
        urls = [line.split(" ", 1)[1] for line in lines]
        assert [line.split(" ")[0] for line in lines] == ["SERVICE", "SERVICE"]
        assert [u.rsplit("/", 2)[1] for u in urls] == ["world_map", "arcgis-pro-wgs84"]
        assert get_json(urls[0])["capabilities"] == "Map,Query,Data,TilesOnly"
        status, headers, _ = get(urls[1] + "/tile/0/0/0")
        assert (status, headers["Retry-After"]) == (503, "7")
        assert get(urls[1] + "/tile/0/0/0")[2] == tiles["esri/arcgis-pro-wgs84_tpkx"][(0, 0, 0)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.communicate()
    named = subprocess.run(
        [sys.executable, str(SERVER_SCRIPT), str(SAMPLE), str(SAMPLE), "--name", "x"],
        capture_output=True, text=True, timeout=30,
    )
    assert named.returncode == 2 and "--name needs exactly one CACHE" in named.stderr


def _raw_tile(srv, path: str, read_for: float) -> tuple[bytes, bytes, float]:
    """Headers and what the body sent within `read_for` seconds (at most 40 MB), by a raw
    socket, and the seconds it took: http.client would wait for a lying Content-Length."""
    import socket

    url = urlsplit(srv.service_url("world_map") + path)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=read_for) as sock:
        sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with contextlib.suppress(TimeoutError, socket.timeout):
            while len(data) < 40 << 20 and time.monotonic() - started < read_for:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, time.monotonic() - started


def test_hostile_bodies_are_what_they_say(srv, tiles):
    """The faults that attack a client's memory and patience (issue 13, item 6)."""
    import gzip
    import re as regex

    tile = tiles["world_map"][(1, 1, 0)]
    srv.options.fault_fraction, srv.options.hang_seconds = 1.0, 3
    srv.options.fault = "endless"
    head, body, _ = _raw_tile(srv, "/tile/1/1/0", 10)
    assert b"content-length" not in head.lower() and len(body) >= 40 << 20
    assert body.startswith(tile)
    srv.options.fault = "oversized"
    head, body, _ = _raw_tile(srv, "/tile/1/1/1", 10)
    assert f"Content-Length: {32 << 20}".encode() in head and len(body) == 32 << 20
    srv.options.fault = "huge_length"
    head, body, seconds = _raw_tile(srv, "/tile/1/0/0", 2)
    assert f"Content-Length: {2 << 30}".encode() in head and 0 < len(body) < 1 << 20
    assert seconds >= 2  # then silence
    srv.options.fault = "gzip_bomb"
    head, body, _ = _raw_tile(srv, "/tile/1/0/1", 30)
    assert b"Content-Encoding: gzip" in head and len(body) < 2 << 20
    assert len(gzip.decompress(body)) == 1 << 30
    srv.options.fault = "trickle"
    head, body, seconds = _raw_tile(srv, "/tile/2/1/1", 3.5)
    length = int(regex.search(rb"Content-Length: (\d+)", head).group(1))
    assert length == len(tiles["world_map"][(2, 1, 1)]) > 10
    assert 2 <= len(body) <= 4  # a byte a second
