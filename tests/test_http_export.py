"""Exports from ArcGIS REST tile services over real HTTP on 127.0.0.1 (the loopback server in
scripts/arcgis_rest_server.py), checked from the server's side (its request log) and against a
local export of the very cache the server serves.
"""
from __future__ import annotations

import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import (  # noqa: E402
    read_all_tiles,
    read_output,
    snapshot,
    web_mercator_scheme,
    write_cache,
)
from http_helpers import rest_server_module  # noqa: E402
from independent_readers import v2_folder_tiles  # noqa: E402
from recording import recording_feedback  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample" / "world_map"
srv = rest_server_module()

FIXTURES = {
    "tpk-v1": "arcmap-10.3-states_filled.tpk",
    "tpkx-wgs84-512": "arcgis-pro-wgs84.tpkx",
    "server-v1-folder": "arcgis-server-10.1-compact-v1",
    "sample-v2-folder": "esri-sample-compact-v2",
}
MAX_WORKERS = 8  # concurrent requests to a service by default (README)
KINDS = {"dataset-v1": (0, 0), "dataset-v2": (0, 1), "dataset-exploded": (0, 2), "tpk": (1, 0),
         "tpkx": (1, 1)}


def run_export(params: dict, feedback=None) -> dict:
    import processing

    full = {"EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1}
    full.update(params)
    return processing.run(ALG, full, feedback=feedback)


def export_error(params: dict, feedback=None) -> str:
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as info:
        run_export(params, feedback)
    return str(info.value)


def cache_name(path: Path) -> str:
    from export_map_server_cache.core.sources.local_cache import open_cache

    source = open_cache(str(path))
    try:
        return source.name
    finally:
        source.close()


def output_of(target: Path, name: str, kind: str) -> Path:
    if kind in ("tpk", "tpkx"):
        return target / f"{name}.{kind}"
    return target / name / "Layers"


def comparable(path: Path) -> dict[str, bytes]:
    """Every file of an output; package members unzipped; the item's GUID and dates blanked."""
    import zipfile

    if path.is_file():
        with zipfile.ZipFile(path) as archive:
            files = {info.filename: archive.read(info) for info in archive.infolist()}
    else:
        files = snapshot(path)
    volatile = rb"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|\d{4}-\d\d-\d\dT[\d:.]+Z?"
    return {name: re.sub(volatile, b"", data) for name, data in files.items()}


def same_metadata(a: bytes, b: bytes) -> bool:
    """conf.xml/conf.cdi read from a service carry the numbers REST JSON gives (doubles, not
    the original text) and no LeftLongitude; anything else must be identical."""

    def normal(data: bytes) -> bytes:
        data = re.sub(rb"<LeftLongitude>[^<]*</LeftLongitude>", b"", data)
        return re.sub(rb"(?<=>)-?[0-9][0-9.eE+-]*(?=<)",
                      lambda m: b"%.12g" % float(m.group(0)), data)

    return normal(a) == normal(b)


def sample_tiles() -> dict[tuple[int, int, int], bytes]:
    """The sample cache's tiles, read by the spec-only Compact V2 parser."""
    return v2_folder_tiles(SAMPLE / "Layers" / "_alllayers")


def assert_same_output(http: Path, local: Path, kind: str) -> None:
    assert read_output(http, kind) == read_output(local, kind)
    mine, theirs = comparable(http), comparable(local)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        if name.endswith(("conf.xml", "conf.cdi")):
            assert same_metadata(mine[name], theirs[name]), name
        else:
            assert mine[name] == theirs[name], name


def tile_requests(server) -> list[tuple[int, int, int]]:
    return [(e.level, e.row, e.col) for e in server.log.entries() if e.kind == "tile"]


@pytest.fixture
def sparse_cache(tmp_path) -> tuple[Path, dict]:
    """A Compact V2 dataset with holes: levels 0-3 and a window of level 8 spanning 2 bundles."""
    scheme = web_mercator_scheme()
    holes = {(3, 2, 5), (3, 4, 4), (3, 7, 7)} | {(8, 100, c) for c in range(120, 140)}
    windows = {0: TileRange(0, 0, 0, 0), 1: TileRange(0, 1, 0, 1), 2: TileRange(0, 3, 0, 3),
               3: TileRange(0, 7, 0, 7), 8: TileRange(96, 104, 120, 140)}
    tiles = write_cache(tmp_path / "sparse" / "Layers", scheme, windows, skip=holes)
    return tmp_path / "sparse", tiles


def local_and_http(serve, cache: Path, kind: str, tmp_path: Path, **params) -> tuple:
    """Export `cache` locally and through the server in the same way; return both outputs."""
    name = cache_name(cache)
    server = serve({name: cache})
    export_type, storage = KINDS[kind]
    common = {"EXPORT_CACHE_TYPE": export_type, "STORAGE_FORMAT_TYPE": storage, **params}
    run_export({"INPUT_SERVICE": str(cache), "TARGET_CACHE_PATH": str(tmp_path / "local"),
                **common})
    result = run_export({"INPUT_SERVICE": server.service_url(name),
                         "TARGET_CACHE_PATH": str(tmp_path / "http"), **common})
    return (output_of(tmp_path / "local", name, kind), output_of(tmp_path / "http", name, kind),
            result, server)


# --- the export equals a local export of the served cache ---------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_sample_over_http_equals_local_export(serve, tmp_path, kind):
    params = {"LEVELS": "0-4"}
    if kind == "dataset-exploded" or kind == "tpk":
        params["EXPORT_EXTENT"] = "-2000000,4000000,3000000,7000000 [EPSG:3857]"
    local, http, result, server = local_and_http(serve, SAMPLE, kind, tmp_path, **params)
    assert comparable(http) == comparable(local)
    tiles, sample = read_output(http, kind), sample_tiles()
    assert tiles and {key: sample[key] for key in tiles} == tiles
    assert result["TILE_COUNT"] == len(tiles)
    assert result["OUTPUT_CACHE_PATH"] == str(http)


@pytest.mark.parametrize("fixture", list(FIXTURES))
@pytest.mark.parametrize("kind", ["dataset-v2", "tpk"])
def test_esri_fixtures_over_http_equal_local_export(serve, tmp_path, fixtures_dir, fixture,
                                                     kind):
    cache = fixtures_dir / FIXTURES[fixture]
    levels = ",".join(map(str, sorted({level for level, _, _ in read_all_tiles(cache)})))
    local, http, _, server = local_and_http(serve, cache, kind, tmp_path, LEVELS=levels,
                                            MAX_TILE_COUNT=0)
    beyond = _beyond_the_world(cache)
    if not beyond:
        assert_same_output(http, local, kind)
        return
    # ArcGIS Pro's geographic package holds tiles past the world's edges (east of 180 degrees,
    # south of -90): a service is never asked for those, every other tile comes as it is
    assert read_output(http, kind) == {k: v for k, v in read_output(local, kind).items()
                                       if k not in beyond}
    assert not beyond & set(tile_requests(server))


def _beyond_the_world(cache: Path) -> set[tuple[int, int, int]]:
    """The cache's tiles outside its world grid (for world schemes)."""
    from export_map_server_cache.core.sources.local_cache import open_cache

    source = open_cache(str(cache))
    scheme = source.scheme
    source.close()
    beyond = set()
    for level, row, col in read_all_tiles(cache):
        grid = scheme.world_grid(level)
        if grid is not None and not grid.contains(row, col):
            beyond.add((level, row, col))
    return beyond


def test_missing_tiles_without_tilemap_are_404s(serve, sparse_cache, tmp_path):
    cache, tiles = sparse_cache
    server = serve({"sparse": cache}, tilemap=False)
    level8 = web_mercator_scheme().range_extent(8, TileRange(96, 104, 120, 140))
    for levels, extent, folder in (("3", None, "a"), ("8", level8, "b")):
        params = {"INPUT_SERVICE": server.service_url("sparse"), "LEVELS": levels,
                  "TARGET_CACHE_PATH": str(tmp_path / folder)}
        if extent is not None:
            params["EXPORT_EXTENT"] = (f"{extent.xmin},{extent.xmax},{extent.ymin},"
                                       f"{extent.ymax} [EPSG:3857]")
        result = run_export(params)
        exported = read_output(tmp_path / folder / "sparse" / "Layers")
        assert exported == {k: v for k, v in tiles.items() if str(k[0]) == levels}
        assert result["TILE_COUNT"] == len(exported)
    statuses = Counter(e.status for e in server.log.entries() if e.kind == "tile")
    assert statuses[404] >= 3 + 20  # every hole was asked for, and answered 404
    assert not [e for e in server.log.entries() if e.kind == "tilemap"]


def test_tilemap_skips_absent_tiles(serve, sparse_cache, tmp_path):
    cache, tiles = sparse_cache
    server = serve({"sparse": cache})
    run_export({"INPUT_SERVICE": server.service_url("sparse"), "LEVELS": "3,8",
                "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert read_output(tmp_path / "out" / "sparse" / "Layers") == {
        k: v for k, v in tiles.items() if k[0] in (3, 8)}
    requested = set(tile_requests(server))
    assert requested <= set(tiles), "a tile the tilemap marks absent was requested"
    assert all(e.status == 200 for e in server.log.entries() if e.kind == "tile")
    tilemaps = [e for e in server.log.entries() if e.kind == "tilemap"]
    assert tilemaps and all(e.status in (200, 422) for e in tilemaps)
    for entry in tilemaps:  # windows aligned inside one bundle
        level, row, col, width, height = map(int, entry.path.split("/tilemap/")[1].split("/"))
        assert row // 128 == (row + height - 1) // 128 and col // 128 == (col + width - 1) // 128


def test_a_broken_tilemap_gives_way_to_tile_requests(serve, tmp_path):
    server = serve({"world": SAMPLE}, fault="html", fault_fraction=1.0, fault_attempts=3,
                   fault_tilemap=True)
    feedback = recording_feedback()
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-1",
                "TARGET_CACHE_PATH": str(tmp_path / "out")}, feedback)
    assert read_output(tmp_path / "out" / "world" / "Layers") == {
        k: v for k, v in sample_tiles().items() if k[0] <= 1}
    tilemaps = [e for e in server.log.entries() if e.kind == "tilemap"]
    assert len(tilemaps) == 3  # three attempts, then plain tile requests for good
    assert feedback.text.count("The service's tilemap is unusable") == 1, feedback.text
    # every tile of the grid asked for (each faulty three times first), none beyond it
    assert set(tile_requests(server)) == {k for k in sample_tiles() if k[0] <= 1}


def test_blank_tiles_are_not_written(serve, sparse_cache, tmp_path):
    cache, tiles = sparse_cache
    server = serve({"sparse": cache}, tilemap=False, blank_tiles=True,
                   ignore_blank_tile_param=True)
    run_export({"INPUT_SERVICE": server.service_url("sparse"), "LEVELS": "3",
                "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert read_output(tmp_path / "out" / "sparse" / "Layers") == {
        k: v for k, v in tiles.items() if k[0] == 3}
    tile_entries = [e for e in server.log.entries() if e.kind == "tile"]
    assert all(e.query.get("blankTile") == "false" for e in tile_entries)


# --- failures, retries and politeness -------------------------------------------------------


def retry_gaps(server) -> list[tuple[float, float]]:
    """(seconds between a failed answer and the next request for the same tile, its status)."""
    by_tile = defaultdict(list)
    for entry in server.log.entries():
        if entry.kind == "tile":
            by_tile[(entry.level, entry.row, entry.col)].append(entry)
    gaps = []
    for entries in by_tile.values():
        entries.sort(key=lambda e: e.started)
        for failed, retry in zip(entries, entries[1:]):
            if failed.status != 200:
                gaps.append((retry.started - failed.finished, failed.status))
    return gaps


def test_429_with_retry_after_is_honoured(serve, tmp_path):
    """A 429's Retry-After holds back the tile and every worker: judged from the server's log
    by counts, with requests that last 0.2 s, so a worker sends at most one request while the
    client takes in the 429 (however slow a busy machine makes that), where without the pause
    the seven others would send some 30 in the second."""
    server = serve({"world": SAMPLE}, fault="429", fault_fraction=0.2, fault_attempts=1,
                   retry_after=1.0, latency=0.2)
    feedback = recording_feedback()
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-3",
                "TARGET_CACHE_PATH": str(tmp_path / "out")}, feedback)
    run_export({"INPUT_SERVICE": str(SAMPLE), "LEVELS": "0-3",
                "TARGET_CACHE_PATH": str(tmp_path / "local")})
    assert read_output(tmp_path / "out" / "world" / "Layers") == read_output(
        tmp_path / "local" / "world_map" / "Layers")
    gaps = [gap for gap, status in retry_gaps(server) if status == 429]
    assert gaps and min(gaps) >= 0.95, gaps
    entries = sorted(server.log.entries(), key=lambda e: e.started)
    throttled = [e for e in entries if e.status == 429]
    assert len(throttled) >= 5
    for answer in throttled:
        during = [e for e in entries if answer.finished < e.started < answer.finished + 0.95]
        assert len(during) <= 2 * MAX_WORKERS, (answer, len(during))
    assert re.search(r"retried: [1-9]", feedback.text)


def test_server_errors_are_retried_with_backoff(serve, tmp_path):
    server = serve({"world": SAMPLE}, fault="500", fault_fraction=0.3, fault_attempts=2)
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-3",
                "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert read_output(tmp_path / "out" / "world" / "Layers") == {
        k: v for k, v in sample_tiles().items() if k[0] <= 3}
    gaps = retry_gaps(server)
    first = sorted(g for g, status in gaps if status == 500)
    assert len(first) >= 10 and first[0] >= 0.24  # backoff 0.5 s, jittered down to half
    per_tile = Counter(tile_requests(server))
    assert max(per_tile.values()) >= 3  # two failures, then the tile


def test_persistent_failures_stop_the_run_with_a_count(serve, tmp_path):
    server = serve({"world": SAMPLE}, fault="503", fault_fraction=0.1, fault_attempts=1000)
    target = tmp_path / "out"
    started = time.monotonic()
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-4",
                            "TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": 1})
    assert time.monotonic() - started < 60
    match = re.search(r"(\d+) tiles? could not be downloaded after 6 attempts each", message)
    assert match and int(match.group(1)) >= 1, message
    assert "HTTP 503" in message and "nothing was written" in message
    per_tile = Counter(k for k, status in (((e.level, e.row, e.col), e.status)
                                           for e in server.log.entries() if e.kind == "tile")
                       if status == 503)
    assert max(per_tile.values()) == 6  # bounded retries
    assert not target.exists() or snapshot(target) == {}


def test_a_failed_download_leaves_an_existing_cache_unchanged(serve, tmp_path):
    target = tmp_path / "out"
    run_export({"INPUT_SERVICE": str(SAMPLE), "LEVELS": "0-2", "TARGET_CACHE_PATH": str(target)})
    (target / "world").mkdir()
    (target / "world_map").rename(target / "world" / "x")
    (target / "world" / "x" / "Layers").rename(target / "world" / "Layers")
    (target / "world" / "x").rmdir()
    before = snapshot(target)
    server = serve({"world": SAMPLE}, fault="500", fault_fraction=0.05, fault_attempts=1000)
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-4",
                            "TARGET_CACHE_PATH": str(target), "OVERWRITE": True})
    assert "could not be downloaded" in message
    assert snapshot(target) == before


@pytest.mark.parametrize("fault", ["json200", "html", "truncated", "short", "notimage"])
def test_bad_bodies_are_never_written(serve, tmp_path, fault):
    server = serve({"world": SAMPLE}, fault=fault, fault_fraction=0.3, fault_attempts=1)
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-3",
                "TARGET_CACHE_PATH": str(tmp_path / "out")})
    expected = {k: v for k, v in sample_tiles().items() if k[0] <= 3}
    assert read_output(tmp_path / "out" / "world" / "Layers") == expected
    faulty = {k for k, status in Counter(tile_requests(server)).items() if status > 1}
    assert faulty, "the fault was never served"


def test_a_json_error_that_persists_is_reported(serve, tmp_path):
    server = serve({"world": SAMPLE}, fault="json200", fault_fraction=0.05,
                   fault_attempts=1000)
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-3",
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "Error exporting tile" in message and "could not be downloaded" in message


def test_timeouts_are_retried(serve, tmp_path):
    from qgis.core import QgsNetworkAccessManager

    server = serve({"world": SAMPLE}, fault="hang", fault_fraction=0.1, fault_attempts=1,
                   hang_seconds=4)
    before = QgsNetworkAccessManager.timeout()
    QgsNetworkAccessManager.setTimeout(1000)
    try:
        run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-3",
                    "TARGET_CACHE_PATH": str(tmp_path / "out")})
    finally:
        QgsNetworkAccessManager.setTimeout(before)
    expected = {k: v for k, v in sample_tiles().items() if k[0] <= 3}
    assert read_output(tmp_path / "out" / "world" / "Layers") == expected
    assert max(Counter(tile_requests(server)).values()) >= 2


def test_concurrency_and_rate_limits_are_kept(serve, tmp_path):
    """Counted on the server: requests in flight at once (each lasting 0.25 s, so workers
    overlap however busy the machine is) and requests started per second."""
    server = serve({"world": SAMPLE}, latency=0.25)
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-2",
                "NUM_OF_CACHING_SERVICE_INSTANCES": 3,
                "TARGET_CACHE_PATH": str(tmp_path / "a")})
    assert server.log.max_concurrency == 3
    server.log.clear()
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-2",
                "TARGET_CACHE_PATH": str(tmp_path / "b")})
    assert 4 <= server.log.max_concurrency <= MAX_WORKERS  # automatic: at most 8 per host
    server.options.latency = 0.0
    server.log.clear()
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-2",
                "MAX_REQUESTS_PER_SECOND": 20, "TARGET_CACHE_PATH": str(tmp_path / "c")})
    starts = sorted(e.started for e in server.log.entries())
    assert len(starts) > 20
    # the client spaces its requests by 50 ms; the server sees them a little late, some later
    # than others: 20 a second, +1 for the window's edges, +2 for up to 100 ms of such jitter
    for i, start in enumerate(starts):
        assert sum(1 for s in starts[i:] if s < start + 1.0) <= 20 + 1 + 2
    assert starts[-1] - starts[0] >= (len(starts) - 1) / 20 - 0.1  # unthrottled: ~0.1 s


def test_server_rate_limit_is_survived(serve, tmp_path):
    server = serve({"world": SAMPLE}, rate_limit=40, retry_after=0.5)
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-3",
                "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert Counter(e.status for e in server.log.entries())[429] > 0
    expected = {k: v for k, v in sample_tiles().items() if k[0] <= 3}
    assert read_output(tmp_path / "out" / "world" / "Layers") == expected


# --- limits, estimate, cancel ---------------------------------------------------------------


def test_tile_limit_refuses_before_downloading(serve, tmp_path):
    server = serve({"world": SAMPLE})
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-5",
                            "MAX_TILE_COUNT": 1000, "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "1365 tiles" in message and "MAX_TILE_COUNT (1000)" in message
    assert "raise MAX_TILE_COUNT" in message
    assert tile_requests(server) == []
    assert not (tmp_path / "out").exists() or snapshot(tmp_path / "out") == {}
    result = run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-5",
                         "MAX_TILE_COUNT": 1365, "TARGET_CACHE_PATH": str(tmp_path / "ok")})
    assert result["TILE_COUNT"] == 1365


def test_default_tile_limit_is_the_rest_apis(serve, tmp_path):
    server = serve({"world": SAMPLE})
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-9",
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "MAX_TILE_COUNT (100000)" in message
    assert tile_requests(server) == []


@pytest.mark.parametrize("tilemap", [True, False])
def test_estimate_only_writes_nothing_and_matches_the_export(serve, sparse_cache, tmp_path,
                                                             tilemap):
    cache, tiles = sparse_cache
    server = serve({"sparse": cache}, tilemap=tilemap)
    levels = "0-3,8" if tilemap else "0-3"  # without a tilemap, level 8 means 65536 requests
    expected = [k for k in tiles if k[0] <= 3 or tilemap]
    feedback = recording_feedback()
    estimated = run_export({"INPUT_SERVICE": server.service_url("sparse"), "LEVELS": levels,
                            "ESTIMATE_ONLY": True, "TARGET_CACHE_PATH": str(tmp_path / "e")},
                           feedback)
    assert not (tmp_path / "e").exists() or snapshot(tmp_path / "e") == {}
    asked = Counter(e.kind for e in server.log.entries())
    # samples only, no tile downloads: 6 a level for sizes, 64 where they also count
    assert asked["tile"] <= (6 * 5 if tilemap else 1 + 4 + 16 + 64)
    exported = run_export({"INPUT_SERVICE": server.service_url("sparse"), "LEVELS": levels,
                           "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert exported["TILE_COUNT"] == len(expected)
    if tilemap:
        assert estimated["TILE_COUNT"] == len(expected)
        assert "Level 8: 169 tiles, about" in feedback.text
        assert "(65536 tiles in the export area)" in feedback.text
    else:  # extrapolated from samples: 3 holes in 85 tiles
        assert abs(estimated["TILE_COUNT"] - len(expected)) <= 0.2 * len(expected)
        # all 64 tiles of level 3 sampled: 61 exist
        assert ("Level 3: 61 tiles (estimated: 61 of 64 sampled tiles exist; 64 tiles to ask "
                "for)") in feedback.text
    assert 0.5 * exported["BYTE_COUNT"] <= estimated["BYTE_COUNT"] <= 2 * exported["BYTE_COUNT"]
    assert "Level 3: " in feedback.text and "nothing was written" in feedback.text


def test_cancel_during_downloads(serve, tmp_path):
    from qgis.core import QgsProcessingFeedback

    server = serve({"world": SAMPLE}, latency=0.2)

    class CancelSoon(QgsProcessingFeedback):
        def setProgress(self, progress):  # noqa: N802 - Qt name
            super().setProgress(progress)
            if len(tile_requests(server)) >= 10 and not self.isCanceled():
                self.canceled_at = time.monotonic()
                self.cancel()

    feedback = CancelSoon()
    target = tmp_path / "out"
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-5",
                            "TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": 1},
                           feedback)
    stopped = time.monotonic()
    assert "canceled" in message.lower()
    assert stopped - feedback.canceled_at < 1.5
    late = [e for e in server.log.entries() if e.started > feedback.canceled_at + 0.5]
    assert late == []
    assert len(tile_requests(server)) < 1365
    assert not target.exists() or snapshot(target) == {}


# --- inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "?f=json", "/?f=pjson", "/tile/{z}/{y}/{x}",
                                    "/tile/%7Bz%7D/%7By%7D/%7Bx%7D"])
def test_service_url_forms(serve, tmp_path, suffix):
    server = serve({"Folder/world": SAMPLE})
    result = run_export({"INPUT_SERVICE": server.service_url("Folder/world") + suffix,
                         "LEVELS": "0-1", "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert result["TILE_COUNT"] == 5
    assert result["OUTPUT_CACHE_PATH"] == str(tmp_path / "out" / "world" / "Layers")


def test_image_server(serve, tmp_path):
    server = serve({"world/ImageServer": SAMPLE})
    url = server.service_url("world/ImageServer")
    assert url.endswith("/world/ImageServer")
    result = run_export({"INPUT_SERVICE": url, "LEVELS": "0-2",
                         "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert result["TILE_COUNT"] == 21


def test_service_without_a_tile_cache(serve, tmp_path):
    server = serve({"world": SAMPLE}, json_overrides={"singleFusedMapCache": False,
                                                      "tileInfo": None})
    message = export_error({"INPUT_SERVICE": server.service_url("world"),
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "singleFusedMapCache is false" in message


def test_unreachable_service(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    message = export_error({
        "INPUT_SERVICE": f"http://127.0.0.1:{port}/arcgis/rest/services/x/MapServer",
        "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert time.monotonic() - started < 15
    assert "did not answer usably" in message and "network" in message
    assert not (tmp_path / "out").exists()


def test_not_a_service_url(tmp_path):
    message = export_error({"INPUT_SERVICE": "http://127.0.0.1:9/arcgis/rest/services/x",
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "not an ArcGIS REST tile service URL" in message


# --- credentials -----------------------------------------------------------------------------


SECRET = "tok-3f9a1c7e5b"


def test_missing_or_wrong_token(serve, tmp_path):
    server = serve({"world": SAMPLE}, token=SECRET)
    message = export_error({"INPUT_SERVICE": server.service_url("world"),
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "refused access (499" in message and "TOKEN" in message
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "TOKEN": "wrong-1",
                            "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert "refused access (498" in message and "wrong-1" not in message
    message = export_error({"INPUT_SERVICE": server.service_url("world"),
                            "TOKEN": "env:NOT_SET_ANYWHERE_42",
                            "TARGET_CACHE_PATH": str(tmp_path / "x")})
    assert "NOT_SET_ANYWHERE_42" in message and "not set" in message


def test_basic_auth_through_an_authcfg(serve, tmp_path, make_authcfg):
    server = serve({"world": SAMPLE}, basic_auth=("gisuser", "s3cret pass"))
    authcfg = make_authcfg("Basic", username="gisuser", password="s3cret pass")
    result = run_export({"INPUT_SERVICE": server.service_url("world"), "AUTHCFG": authcfg,
                         "LEVELS": "0-2", "TARGET_CACHE_PATH": str(tmp_path / "out")})
    assert result["TILE_COUNT"] == 21
    assert all(e.status != 401 for e in server.log.entries())
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-2",
                            "TARGET_CACHE_PATH": str(tmp_path / "denied")})
    assert "refused access (401" in message and "AUTHCFG" in message


# --- project layers --------------------------------------------------------------------------


def test_project_layers_resolve_to_their_service(serve, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer

    server = serve({"world": SAMPLE})
    url = server.service_url("world")
    xyz = QgsRasterLayer(
        f"type=xyz&url={url}/tile/%7Bz%7D/%7By%7D/%7Bx%7D&zmin=0&zmax=5", "xyz world", "wms")
    ams = QgsRasterLayer(f"crs='EPSG:3857' format='PNG' layer='' url='{url}'", "ams world",
                         "arcgismapserver")
    assert xyz.isValid() and ams.isValid()
    QgsProject.instance().addMapLayers([xyz, ams])
    try:
        for value, folder in ((xyz.id(), "a"), ("ams world", "b")):
            result = run_export({"INPUT_SERVICE": value, "LEVELS": "0-1",
                                 "TARGET_CACHE_PATH": str(tmp_path / folder)})
            assert result["TILE_COUNT"] == 5
            assert read_output(result["OUTPUT_CACHE_PATH"]) == {
                k: v for k, v in sample_tiles().items() if k[0] <= 1}
    finally:
        QgsProject.instance().removeMapLayers([xyz.id(), ams.id()])


def test_an_xyz_layer_that_is_not_arcgis(tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer

    layer = QgsRasterLayer(
        "type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin=0&zmax=5", "osm", "wms")
    QgsProject.instance().addMapLayer(layer)
    try:
        message = export_error({"INPUT_SERVICE": layer.id(),
                                "TARGET_CACHE_PATH": str(tmp_path / "out")})
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    assert "does not come from an ArcGIS REST tile service" in message


def test_tiles_do_not_go_into_the_users_network_cache(serve, tmp_path):
    from qgis.core import QgsNetworkAccessManager
    from qgis.PyQt.QtCore import QUrl

    server = serve({"world": SAMPLE})
    run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-1",
                "TARGET_CACHE_PATH": str(tmp_path / "out")})
    cache = QgsNetworkAccessManager.instance().cache()
    assert cache is not None  # the main thread's manager keeps the user's cache
    tiles = [e for e in server.log.entries() if e.kind == "tile"]
    assert len(tiles) >= 5
    for entry in tiles:
        url = QUrl(f"{server.base_url.split('/arcgis')[0]}{entry.path}?blankTile=false")
        assert not cache.metaData(url).isValid(), url.toString()
