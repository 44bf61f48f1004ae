"""Exports by the service's own exportTiles jobs (EXPORT_METHOD), over real HTTP on 127.0.0.1
against the loopback server's jobs (scripts/export_tiles_jobs.py): the outputs equal the tile
request path's tile for tile, the job calls and the split past the limit are counted on the
server's side, failures and cancels reach both ends, a dropped download is resumed.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import read_output, web_mercator_scheme, write_cache  # noqa: E402
from recording import recording_feedback  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402
from export_map_server_cache.core.sources.export_job import PACKAGE_PART  # noqa: E402
from export_map_server_cache.core.sources.http_client import ReplyLimits  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
KINDS = {"dataset-v1": (0, 0), "dataset-v2": (0, 1), "dataset-exploded": (0, 2), "tpk": (1, 0),
         "tpkx": (1, 1)}
JOB, TILES = 1, 2
TOKEN = "s3cret-t0ken-for-jobs"


def run_export(params: dict, feedback=None) -> dict:
    import processing

    return processing.run(ALG, {"EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1, **params},
                          feedback=feedback)


def export_error(params: dict, feedback=None) -> str:
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as info:
        run_export(params, feedback)
    return str(info.value)


@pytest.fixture
def cache(tmp_path) -> Path:
    """A Compact V2 dataset: levels 0-3 whole and a window of level 8 over two bundles, with
    holes."""
    scheme = web_mercator_scheme()
    holes = {(3, 2, 5), (8, 100, 130)}
    windows = {0: TileRange(0, 0, 0, 0), 1: TileRange(0, 1, 0, 1), 2: TileRange(0, 3, 0, 3),
               3: TileRange(0, 7, 0, 7), 8: TileRange(96, 104, 120, 140)}
    write_cache(tmp_path / "jobcache" / "Layers", scheme, windows, skip=holes)
    return tmp_path / "jobcache"


def job_calls(server) -> Counter:
    """The job-related requests the server answered, by operation."""
    calls: Counter = Counter()
    for entry in server.log.entries():
        parts = entry.path.split("/")
        if entry.kind == "job":
            at = parts.index("MapServer") + 1
            rest = parts[at:]
            calls[rest[0] if rest[0] != "jobs" else "/".join(["jobs", *rest[2:]]) or "jobs"] += 1
        elif entry.kind == "download":
            calls["download" if "." in parts[-1] else "listing"] += 1
    return calls


def both_ways(serve, cache: Path, tmp_path: Path, kind: str, **params) -> tuple:
    """The same export by a job and by tile requests; (job output, tile output, server)."""
    server = serve({"jobcache": cache}, export_tiles_allowed=True)
    export_type, storage = KINDS[kind]
    outputs = []
    for method in (JOB, TILES):
        result = run_export({"INPUT_SERVICE": server.service_url("jobcache"),
                             "TARGET_CACHE_PATH": str(tmp_path / f"out-{method}"),
                             "EXPORT_CACHE_TYPE": export_type, "STORAGE_FORMAT_TYPE": storage,
                             "EXPORT_METHOD": method, "LOAD_RESULT": False, **params})
        outputs.append(Path(result["OUTPUT_CACHE_PATH"]))
    return outputs[0], outputs[1], server


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_output_kind_from_a_job_equals_the_tile_path(serve, cache, tmp_path, kind):
    by_job, by_tiles, server = both_ways(serve, cache, tmp_path, kind, LEVELS="0-3,8")
    tiles = read_output(by_job, kind)
    assert tiles == read_output(by_tiles, kind)
    assert len(tiles) == 1 + 4 + 16 + 63 + 9 * 21 - 1
    calls = job_calls(server)
    assert calls["exportTiles"] == 1 and calls["download"] == 1
    assert server.jobs.submitted[0]["levels"] == "0,1,2,3,8"


@pytest.fixture
def big_cache(tmp_path) -> Path:
    """Levels 0-3 and a 70 x 70 window of level 8 (4,985 tiles)."""
    scheme = web_mercator_scheme()
    windows = {0: TileRange(0, 0, 0, 0), 1: TileRange(0, 1, 0, 1), 2: TileRange(0, 3, 0, 3),
               3: TileRange(0, 7, 0, 7), 8: TileRange(90, 159, 100, 169)}
    write_cache(tmp_path / "big" / "Layers", scheme, windows)
    return tmp_path / "big"


def test_past_the_limit_the_export_is_split_into_jobs_merged_into_one_output(
        serve, big_cache, tmp_path):
    server = serve({"big": big_cache}, export_tiles_allowed=True, max_export_tiles_count=1000)
    box = web_mercator_scheme().range_extent(8, TileRange(90, 159, 100, 169))
    extent = f"{box.xmin + 1},{box.xmax - 1},{box.ymin + 1},{box.ymax - 1} [EPSG:3857]"
    feedback = recording_feedback()
    outputs = {}
    for method in (JOB, TILES):
        result = run_export({"INPUT_SERVICE": server.service_url("big"),
                             "TARGET_CACHE_PATH": str(tmp_path / f"out-{method}"),
                             "EXPORT_METHOD": method, "LOAD_RESULT": False, "LEVELS": "0-3,8",
                             "EXPORT_EXTENT": extent,
                             "NUM_OF_CACHING_SERVICE_INSTANCES": -1 if method == JOB else 4},
                            feedback if method == JOB else None)
        outputs[method] = read_output(Path(result["OUTPUT_CACHE_PATH"]), "dataset-v2")
    assert sum(1 for level, _, _ in outputs[JOB] if level == 8) == 70 * 70
    assert outputs[JOB] == outputs[TILES]  # none missing
    jobs = server.jobs.finished()
    assert len(jobs) >= 6
    assert all(job.status == "esriJobSucceeded" and job.tiles < 900 for job in jobs)
    assert sum(job.tiles for job in jobs) == len(outputs[JOB])  # none exported twice
    assert "jobs of" in feedback.text and "maxExportTilesCount (1000)" in feedback.text


def test_a_failed_job_ends_the_run_with_the_servers_messages(serve, cache, tmp_path):
    reason = ("ERROR 001564: Requested tile count(5000) exceeds the maximum allowed number of "
              "tiles(1000) to be exported for service jobcache:MapServer.")
    server = serve({"jobcache": cache}, export_tiles_allowed=True, job_failure=reason)
    message = export_error({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-3",
                            "TARGET_CACHE_PATH": str(tmp_path / "out"), "EXPORT_METHOD": JOB})
    assert "esriJobFailed" in message and reason in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cancel_during_a_job_cancels_it_on_the_server(serve, cache, tmp_path):
    server = serve({"jobcache": cache}, export_tiles_allowed=True, job_latency=4.0)
    feedback = recording_feedback()

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(job.status == "esriJobExecuting" for job in server.jobs.all()):
                feedback.cancel()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=cancel_when_running)
    watcher.start()
    message = export_error({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-3",
                            "TARGET_CACHE_PATH": str(tmp_path / "out"), "EXPORT_METHOD": JOB},
                           feedback)
    watcher.join()
    assert "stopped" in message
    assert len(server.jobs.cancels) == 1
    assert job_calls(server)["jobs/cancel"] == 1 and job_calls(server)["download"] == 0
    deadline = time.monotonic() + 10
    while server.jobs.all()[0].status != "esriJobCancelled" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.jobs.all()[0].status == "esriJobCancelled"


def test_a_dropped_download_is_resumed_with_range(serve, cache, tmp_path):
    by_job, by_tiles, server = both_ways(serve, cache, tmp_path, "tpkx", LEVELS="0-3")
    assert read_output(by_job, "tpkx") == read_output(by_tiles, "tpkx")
    server.options.drop_downloads = 1
    server.log.clear()
    result = run_export({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-3",
                         "TARGET_CACHE_PATH": str(tmp_path / "again"), "EXPORT_CACHE_TYPE": 1,
                         "EXPORT_METHOD": JOB, "LOAD_RESULT": False})
    assert read_output(Path(result["OUTPUT_CACHE_PATH"]), "tpkx") == read_output(by_job, "tpkx")
    downloads = [e for e in server.log.entries() if e.kind == "download" and "." in e.path]
    assert len(downloads) == 2
    # parts of at most PACKAGE_PART bytes, the second from where the dropped one stopped
    first, second = (entry.headers["range"] for entry in downloads)
    assert first == f"bytes=0-{PACKAGE_PART - 1}" and downloads[1].status == 206
    start, _, end = second[6:].partition("-")
    assert int(start) > 0 and int(end) == int(start) + PACKAGE_PART - 1


def test_a_package_is_downloaded_in_range_parts(serve, cache, tmp_path, monkeypatch):
    """Never more than a part held at once: a package larger than a part comes in several."""
    from export_map_server_cache.core.sources import export_job

    monkeypatch.setattr(export_job, "PACKAGE_PART", 64 << 10)
    monkeypatch.setattr(export_job, "PACKAGE_LIMITS", ReplyLimits(64 << 10, deadline=False))
    by_job, by_tiles, server = both_ways(serve, cache, tmp_path, "tpkx", LEVELS="0-3")
    assert read_output(by_job, "tpkx") == read_output(by_tiles, "tpkx")
    downloads = [e for e in server.log.entries() if e.kind == "download" and "." in e.path]
    assert len(downloads) > 1 and all(entry.status == 206 for entry in downloads)
    assert [entry.headers["range"] for entry in downloads] == [
        f"bytes={start}-{start + (64 << 10) - 1}"
        for start in range(0, len(downloads) << 16, 64 << 10)]


def test_hosted_jobs_give_their_output_url(serve, cache, tmp_path):
    server = serve({"jobcache": cache}, export_tiles_allowed=True, job_hosted=True)
    result = run_export({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-3",
                         "TARGET_CACHE_PATH": str(tmp_path / "out"), "EXPORT_METHOD": JOB,
                         "LOAD_RESULT": False})
    assert result["TILE_COUNT"] == 1 + 4 + 16 + 63
    calls = job_calls(server)
    assert calls["download"] == 1 and calls["jobs/results/out_service_url"] == 0
    assert calls["listing"] == 0


def test_the_token_goes_as_a_header_and_is_never_shown(serve, cache, tmp_path):
    server = serve({"jobcache": cache}, export_tiles_allowed=True, token=TOKEN,
                   download_token=TOKEN)
    feedback = recording_feedback()
    result = run_export({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-3",
                         "TOKEN": TOKEN, "TARGET_CACHE_PATH": str(tmp_path / "out"),
                         "EXPORT_METHOD": JOB, "LOAD_RESULT": False}, feedback)
    assert result["TILE_COUNT"] == 84
    entries = server.log.entries()
    assert {e.kind for e in entries} >= {"job", "download"}
    assert {e.headers.get("x-esri-authorization") for e in entries} == {f"Bearer {TOKEN}"}
    assert not [e for e in entries if TOKEN in e.path or TOKEN in repr(e.query)]
    assert "exportTiles job" in feedback.text and TOKEN not in feedback.text


def test_a_download_that_is_not_the_package_is_refused(serve, cache, tmp_path):
    server = serve({"jobcache": cache}, export_tiles_allowed=True, download_token=TOKEN,
                   job_hosted=True)
    message = export_error({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-3",
                            "TARGET_CACHE_PATH": str(tmp_path / "out"), "EXPORT_METHOD": JOB})
    assert "did not give the file (error 499: Token Required)" in message


def test_estimate_only_through_the_job(serve, cache, tmp_path):
    server = serve({"jobcache": cache}, export_tiles_allowed=True)
    feedback = recording_feedback()
    result = run_export({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-3,8",
                         "TARGET_CACHE_PATH": str(tmp_path / "out"), "EXPORT_METHOD": 0,
                         "ESTIMATE_ONLY": True}, feedback)
    assert result["TILE_COUNT"] == 1 + 4 + 16 + 63 + 9 * 21 - 1  # as the server counts them
    calls = job_calls(server)
    assert calls["estimateExportTilesSize"] == 1 and calls["exportTiles"] == 0
    assert "the service allows exportTiles" in feedback.text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_automatic_takes_tile_requests_where_exporttiles_is_not_allowed(serve, cache,
                                                                        tmp_path):
    server = serve({"jobcache": cache})
    feedback = recording_feedback()
    run_export({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-1",
                "TARGET_CACHE_PATH": str(tmp_path / "out"), "LOAD_RESULT": False}, feedback)
    assert "Export method: tile requests (the service does not allow exportTiles" in (
        feedback.text)
    assert job_calls(server) == Counter()
    message = export_error({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-1",
                            "TARGET_CACHE_PATH": str(tmp_path / "o2"), "EXPORT_METHOD": JOB})
    assert "exportTilesAllowed is false" in message


def test_resolutions_select_levels_as_levels_do(serve, cache, tmp_path):
    from export_map_server_cache.core.selection.levels import select_levels

    scheme = web_mercator_scheme()
    text = ";".join(str(scheme.lod(level).resolution * (1 + 5e-5)) for level in (1, 3))
    assert select_levels("", "", scheme, text) == [1, 3]
    server = serve({"jobcache": cache}, export_tiles_allowed=True)
    result = run_export({"INPUT_SERVICE": server.service_url("jobcache"), "RESOLUTIONS": text,
                         "TARGET_CACHE_PATH": str(tmp_path / "out"), "EXPORT_METHOD": JOB,
                         "LOAD_RESULT": False})
    assert result["TILE_COUNT"] == 4 + 63
    message = export_error({"INPUT_SERVICE": server.service_url("jobcache"),
                            "RESOLUTIONS": "12345", "TARGET_CACHE_PATH": str(tmp_path / "o")})
    assert message.startswith("RESOLUTIONS: ") and "Valid resolutions" in message


def test_qgis_process_exports_by_a_job(serve, cache, tmp_path, run_qgis_process):
    server = serve({"jobcache": cache}, export_tiles_allowed=True)
    done = run_qgis_process(["run", ALG, "--", f"INPUT_SERVICE={server.service_url('jobcache')}",
                             f"TARGET_CACHE_PATH={tmp_path / 'out'}", "LEVELS=0-3",
                             "EXPORT_CACHE_TYPE=1", "STORAGE_FORMAT_TYPE=1", "EXPORT_METHOD=1",
                             "LOAD_RESULT=false"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Export method: the server's exportTiles job" in done.stdout
    assert len(read_output(tmp_path / "out" / "jobcache.tpkx", "tpkx")) == 84
    assert job_calls(server)["exportTiles"] == 1


def aoi_layer(wkt: str):
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer("Polygon?crs=EPSG:3857", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(wkt))
    layer.dataProvider().addFeatures([feature])
    return layer


@pytest.mark.parametrize("kind", ["dataset-v2", "tpkx"])
def test_an_area_of_interest_is_sent_and_clipped_as_the_tile_path_clips(serve, cache, tmp_path,
                                                                        kind):
    box = web_mercator_scheme().range_extent(8, TileRange(96, 104, 120, 140))
    w, h = box.xmax - box.xmin, box.ymax - box.ymin
    wkt = (f"POLYGON(({box.xmin + 0.1 * w} {box.ymin + 0.2 * h}, {box.xmin + 0.9 * w} "
           f"{box.ymin + 0.1 * h}, {box.xmin + 0.5 * w} {box.ymin + 0.93 * h}, "
           f"{box.xmin + 0.1 * w} {box.ymin + 0.2 * h}))")
    by_job, by_tiles, server = both_ways(serve, cache, tmp_path, kind, LEVELS="8",
                                         AREA_OF_INTEREST=aoi_layer(wkt))
    tiles = read_output(by_job, kind)
    assert tiles and tiles == read_output(by_tiles, kind)
    sent = json.loads(server.jobs.submitted[0]["areaOfInterest"])
    assert sent["features"][0]["geometry"]["spatialReference"]["wkid"] in (3857, 102100)
    assert len(sent["features"][0]["geometry"]["rings"][0]) == 4


def test_a_service_without_compact_v2_jobs_gives_a_tpk_made_into_the_asked_tpkx(
        serve, cache, tmp_path):
    server = serve({"jobcache": cache}, export_tiles_allowed=True,
                   json_overrides={"exportTileCacheCompactV2Allowed": False})
    result = run_export({"INPUT_SERVICE": server.service_url("jobcache"), "LEVELS": "0-3",
                         "TARGET_CACHE_PATH": str(tmp_path / "out"), "EXPORT_CACHE_TYPE": 1,
                         "EXPORT_METHOD": JOB, "LOAD_RESULT": False})
    assert server.jobs.submitted[0]["storageFormatType"] == "esriMapCacheStorageModeCompact"
    assert Path(result["OUTPUT_CACHE_PATH"]).suffix == ".tpkx"
    assert len(read_output(Path(result["OUTPUT_CACHE_PATH"]), "tpkx")) == 84
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_long_area_of_interest_is_posted(serve, cache, tmp_path):
    import math

    box = web_mercator_scheme().range_extent(8, TileRange(96, 104, 120, 140))
    cx, cy = (box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2
    radius = 0.4 * (box.ymax - box.ymin)
    points = [(cx + radius * math.cos(a / 200 * 2 * math.pi),
               cy + radius * math.sin(a / 200 * 2 * math.pi)) for a in range(200)]
    wkt = "POLYGON((" + ",".join(f"{x} {y}" for x, y in [*points, points[0]]) + "))"
    by_job, by_tiles, server = both_ways(serve, cache, tmp_path, "dataset-v2", LEVELS="8",
                                         AREA_OF_INTEREST=aoi_layer(wkt))
    assert read_output(by_job, "dataset-v2") == read_output(by_tiles, "dataset-v2")
    submits = [e for e in server.log.entries() if e.path.endswith("/exportTiles")]
    assert [e.method for e in submits] == ["POST"]
    assert len(json.loads(server.jobs.submitted[0]["areaOfInterest"])["features"][0]
               ["geometry"]["rings"][0]) == 201
