"""Promises of README.md that no other module tests, each by a test that fails when the promise
is broken. The README's words are quoted in each test's docstring.

Elsewhere: repeated updates (test_merge_and_formats), antimeridian clipping (test_clipping),
the EsriToken authcfg and the token (test_token_secrecy), the Web menu (test_plugin_loading),
the corrupt-input update (test_bad_input).
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import changed_files, snapshot, web_mercator_scheme, write_cache  # noqa: E402
from independent_readers import output_tiles  # noqa: E402
from recording import recording_feedback  # noqa: E402
from test_algorithm import KINDS, output_path, overlaps  # noqa: E402
from test_clipping import polygon, write_layer  # noqa: E402
from test_http_export import SAMPLE  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
REPO = Path(__file__).resolve().parent.parent
Key = tuple[int, int, int]


def run(params: dict, feedback=None) -> dict:
    import processing

    full = {"EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1,
            "NUM_OF_CACHING_SERVICE_INSTANCES": 2, "LOAD_RESULT": False}
    full.update(params)
    return processing.run(ALG, full, feedback=feedback)


def noise_tiles(count: int, size: int = 256, noisy_rows: int = 24, seed: int = 7) -> list[bytes]:
    """`count` distinct PNG tiles with a band of random pixels (so they weigh some KB)."""
    rng = np.random.default_rng(seed)
    tiles = []
    for number in range(count):
        pixels = np.zeros((size, size, 4), np.uint8)
        pixels[...] = (40 + 20 * number % 200, 90, 160, 255)
        pixels[:noisy_rows] = rng.integers(0, 256, (noisy_rows, size, 4), np.uint8)
        pixels[:noisy_rows, :, 3] = 255
        out = io.BytesIO()
        Image.fromarray(pixels, "RGBA").save(out, "PNG")
        tiles.append(out.getvalue())
    return tiles


# --- cancel: "Cancel stops it within a second, leaving nothing half-written" -----------------

CANCEL_LEVEL = 11
CANCEL_WINDOW = TileRange(0, 7, 0, 16 * 128 - 1)  # 16 bundles of 8 x 128 tiles


@pytest.fixture(scope="module")
def cancel_caches(tmp_path_factory) -> dict[str, Path]:
    """A PNG cache of 16,384 tiles at one level (its export as JPEG decodes and encodes every
    tile, so it lasts many seconds), and a JPEG dataset with the same tiling scheme to update
    (also as a .tpkx)."""
    root = tmp_path_factory.mktemp("cancel")
    pngs = noise_tiles(16)
    write_cache(root / "png" / "big" / "Layers", web_mercator_scheme(12), {
        CANCEL_LEVEL: CANCEL_WINDOW}, make=lambda level, row, col: pngs[(row * 7 + col) % 16])
    jpeg_scheme = web_mercator_scheme(12, tile_format="JPEG")
    existing = root / "existing"
    write_cache(existing / "dataset" / "big" / "Layers", jpeg_scheme,
                {CANCEL_LEVEL: TileRange(0, 3, 0, 4 * 128 - 1)}, fmt="JPEG")
    run({"INPUT_SERVICE": str(existing / "dataset" / "big"), "EXPORT_CACHE_TYPE": 1,
         "TARGET_CACHE_PATH": str(existing / "package")})
    return {"source": root / "png" / "big", "existing": existing}


class CancelWhenUnderWay:
    """A feedback that cancels once the export has reported progress (bundles are done and
    more are being written), remembering when."""

    def __new__(cls):
        from qgis.core import QgsProcessingFeedback

        class Feedback(QgsProcessingFeedback):
            canceled_at = None
            progress_at_cancel = None

            def setProgress(self, progress):  # noqa: N802 - QGIS API
                super().setProgress(progress)
                if progress > 0 and self.canceled_at is None:
                    self.progress_at_cancel = progress
                    self.canceled_at = time.monotonic()
                    self.cancel()

        return Feedback()


CANCEL_CASES = {
    # case: (EXPORT_CACHE_TYPE, STORAGE_FORMAT_TYPE, existing target to copy, extra parameters)
    "new dataset": (0, 1, None, {"TILE_FORMAT": 3}),
    "new V1 dataset": (0, 0, None, {"TILE_FORMAT": 3}),
    "new tpkx": (1, 1, None, {"TILE_FORMAT": 3}),
    "new tpk": (1, 0, None, {"TILE_FORMAT": 3}),
    "staged update of a dataset": (0, 1, "dataset", {"COPY_DATA_FROM_SERVER": True}),
    "update of a tpkx": (1, 1, "package", {}),
    "update of a dataset in place": (0, 1, "dataset", {}),
}

@pytest.mark.parametrize("case", CANCEL_CASES)
def test_cancel_stops_within_a_second_and_leaves_nothing_half_written(case, cancel_caches,
                                                                     tmp_path):
    """README: "*Cancel* stops it within a second, leaving nothing half-written" (and Safety:
    "nothing half-written"), for local exports into new datasets and packages and for
    updates of existing ones."""
    import shutil

    from qgis.core import QgsProcessingException

    cache_type, storage, existing, extra = CANCEL_CASES[case]
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("not ours", encoding="utf-8")
    if existing == "dataset":
        shutil.copytree(cancel_caches["existing"] / "dataset" / "big", target / "big")
    elif existing == "package":
        shutil.copy(cancel_caches["existing"] / "package" / "big.tpkx", target)
    before = snapshot(target)
    feedback = CancelWhenUnderWay()
    with pytest.raises(QgsProcessingException, match="canceled") as raised:
        run({"INPUT_SERVICE": str(cancel_caches["source"]), "TARGET_CACHE_PATH": str(target),
             "EXPORT_CACHE_TYPE": cache_type, "STORAGE_FORMAT_TYPE": storage, **extra},
            feedback)
    stopped = time.monotonic()
    assert feedback.canceled_at is not None and feedback.progress_at_cancel < 50
    assert "left unchanged" in str(raised.value)
    assert stopped - feedback.canceled_at < 1.0
    assert not changed_files(before, snapshot(target))


# --- retries: "exponential backoff, jitter and `Retry-After`, at most 6 attempts a tile" -----


def failing_requests(server, policy, level: int) -> dict[Key, list]:
    """Ask a service for every tile of `level` through QGIS networking with `policy`; return
    the server's log of each tile's requests, in order."""
    from export_map_server_cache.core.sources.http_client import ServiceClient, TileFailed
    from export_map_server_cache.core.sources.service_url import parse_service_url
    from export_map_server_cache.processing_provider.qgis_network import QgisTransport

    transport = QgisTransport(8)
    try:
        client = ServiceClient(parse_service_url(server.service_url("world")), transport,
                               policy=policy)
        futures = [transport.submit(client.tile, level, row, col)
                   for row in range(2**level) for col in range(2**level)]
        for future in futures:
            with contextlib.suppress(TileFailed):  # every tile is meant to fail
                transport.result(future)
    finally:
        transport.close()
    by_tile: dict[Key, list] = {}
    for entry in sorted(server.log.entries(), key=lambda e: e.started):
        if entry.kind == "tile":
            by_tile.setdefault((entry.level, entry.row, entry.col), []).append(entry)
    return by_tile


LOAD_MARGIN = 0.5  # seconds a busy machine may add to a wait; never taken off a lower bound


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap(serve):
    """README: "failures are retried with exponential backoff, jitter and `Retry-After`, at
    most 6 attempts a tile". Measured on the server: the wait before attempt k+1 is
    drawn from [c/2, c] with c = min(cap, base * 2**(k-1))."""
    from export_map_server_cache.core.sources.http_client import FetchPolicy

    base, cap = 0.2, 0.8
    server = serve({"world": SAMPLE}, fault="500", fault_fraction=1.0, fault_attempts=1000)
    by_tile = failing_requests(server, FetchPolicy(backoff_base=base, backoff_cap=cap), 2)
    assert len(by_tile) == 16
    capped = []
    for key, entries in by_tile.items():
        assert len(entries) == 6, key  # at most 6 attempts, and every one made
        for attempt, (failed, retry) in enumerate(zip(entries, entries[1:]), start=1):
            ceiling = min(cap, base * 2 ** (attempt - 1))
            gap = retry.started - failed.finished
            assert ceiling / 2 - 0.01 <= gap <= ceiling + LOAD_MARGIN, (key, attempt, gap)
            if ceiling == cap:
                capped.append(gap)
    # growth: the waits' lower bounds double (checked above: attempt 3 waits >= 0.4 s where
    # attempt 1 waits < 0.2 s + margin); cap: an uncapped attempt 5 would wait >= 1.6 s
    assert max(gap for gap in capped) < 1.6
    # jitter: without it every capped wait would be >= the cap
    assert sum(gap < 0.8 * cap for gap in capped) >= len(capped) // 4, sorted(capped)


def test_retry_after_is_honoured_up_to_its_cap(serve):
    """A `Retry-After` longer than FetchPolicy.retry_after_cap is waited for that long only;
    a shorter backoff gives way to it."""
    from export_map_server_cache.core.sources.http_client import FetchPolicy

    server = serve({"world": SAMPLE}, fault="429", fault_fraction=1.0, fault_attempts=1,
                   retry_after=30.0)
    started = time.monotonic()
    by_tile = failing_requests(server, FetchPolicy(backoff_base=0.1, retry_after_cap=0.6), 1)
    assert time.monotonic() - started < 10  # not 30 s
    for key, entries in by_tile.items():
        assert [e.status for e in entries] == [429, 200], key
        gap = entries[1].started - entries[0].finished
        assert 0.6 - 0.01 <= gap <= 0.6 + LOAD_MARGIN, (key, gap)


# --- BYTE_COUNT: "bytes of tile data exported" ------------------------------------------------


@pytest.fixture(scope="module")
def byte_caches(tmp_path_factory) -> dict[str, Path]:
    """A PNG cache (tiles with a transparent corner) at levels 0-3, and another one with
    other tiles to merge into its exports; an area of interest that clips them."""
    root = tmp_path_factory.mktemp("bytes")
    write_cache(root / "a" / "bytes" / "Layers", web_mercator_scheme(6),
                {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(4)})
    write_cache(root / "b" / "bytes" / "Layers", web_mercator_scheme(6),
                {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(4)},
                make=lambda level, row, col: noise_tiles(1, seed=level * 64 + row * 8 + col)[0])
    aoi = write_layer(root / "aoi.gpkg", 3857, [polygon(
        [(-15.3e6, 12.1e6), (9.7e6, 16.9e6), (4.1e6, -13.3e6), (-11.9e6, -6.2e6)])])
    return {"a": root / "a" / "bytes", "b": root / "b" / "bytes", "aoi": aoi}


BYTE_CASES = {"copied": {}, "clipped": {"AREA_OF_INTEREST": "aoi"}, "converted": {
    "TILE_FORMAT": 3}}


@pytest.mark.parametrize("how", list(BYTE_CASES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_byte_count_is_the_bytes_of_the_tiles_written(kind, how, byte_caches, tmp_path):
    """README: "`BYTE_COUNT` | output | bytes of tile data exported", counted here from the
    output's tiles by a reader independent of the engine."""
    cache_type, storage = KINDS[kind]
    extra = {name: str(byte_caches[value]) if value == "aoi" else value
             for name, value in BYTE_CASES[how].items()}
    result = run({"INPUT_SERVICE": str(byte_caches["a"]), "TARGET_CACHE_PATH": str(tmp_path),
                  "EXPORT_CACHE_TYPE": cache_type, "STORAGE_FORMAT_TYPE": storage, **extra})
    tiles = output_tiles(output_path(tmp_path, "bytes", kind), kind)
    assert result["TILE_COUNT"] == len(tiles) > 0
    assert result["BYTE_COUNT"] == sum(len(data) for data in tiles.values())


@pytest.mark.parametrize("kind", ["dataset-v2", "dataset-v1", "tpkx"])
def test_byte_count_of_an_update_is_the_bytes_it_wrote(kind, byte_caches, tmp_path):
    """An export merged into an existing cache (clipped tiles drawn over the old ones) counts
    the tiles it wrote, not those it left alone."""
    cache_type, storage = KINDS[kind]
    common = {"TARGET_CACHE_PATH": str(tmp_path), "EXPORT_CACHE_TYPE": cache_type,
              "STORAGE_FORMAT_TYPE": storage}
    run({**common, "INPUT_SERVICE": str(byte_caches["a"])})
    out = output_path(tmp_path, "bytes", kind)
    before = output_tiles(out, kind)
    result = run({**common, "INPUT_SERVICE": str(byte_caches["b"]), "LEVELS": "2-3",
                  "AREA_OF_INTEREST": str(byte_caches["aoi"])})
    after = output_tiles(out, kind)
    assert after.keys() == before.keys()
    written = {key: data for key, data in after.items() if data != before[key]}
    assert written and all(key[0] in (2, 3) for key in written)
    assert result["TILE_COUNT"] == len(written)
    assert result["BYTE_COUNT"] == sum(len(data) for data in written.values())


# --- the download log --------------------------------------------------------------------------


@pytest.mark.parametrize("allowed,limit", [(True, 50000), (False, 1234)])
def test_a_download_logs_export_tiles_allowed_and_max_count_before_it_starts(serve, tmp_path,
                                                                            allowed, limit):
    """README: "Every download logs the service's `exportTilesAllowed` and
    `maxExportTilesCount` ...; a download by tile requests then logs per-level tile counts ...
    and the estimated size, before it starts"."""
    server = serve({"world": SAMPLE}, export_tiles_allowed=allowed,
                   max_export_tiles_count=limit)
    feedback = recording_feedback()
    run({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-2", "EXPORT_METHOD": 2,
         "TARGET_CACHE_PATH": str(tmp_path)}, feedback)
    lines = feedback.infos
    service = [i for i, line in enumerate(lines) if line.startswith("Service: ")]
    assert len(service) == 1
    stated = f"exportTiles {'allowed' if allowed else 'not allowed'}, maxExportTilesCount {limit}"
    assert lines[service[0]].endswith(stated), lines[service[0]]
    levels = [next(i for i, line in enumerate(lines) if line.startswith(f"Level {z}: "))
              for z in range(3)]
    total = next(i for i, line in enumerate(lines) if line.startswith("Total: 21 tiles, about"))
    first_done = next(i for i, line in enumerate(lines) if " done: " in line)
    assert service[0] < levels[0] < levels[1] < levels[2] < total < first_done, lines


# --- EXPORT_EXTENT: "(no CRS given = the cache's CRS)" -----------------------------------------


@pytest.mark.parametrize("project_crs", ["EPSG:4326", "EPSG:3857", "EPSG:2154"])
def test_an_extent_without_a_crs_is_in_the_caches_crs(project_crs, byte_caches, tmp_path):
    """README: "`EXPORT_EXTENT` | extent | tiles overlapping it (no CRS given = the cache's
    CRS)", whatever the project's CRS is."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject

    rect = (-7.1e6, -3.3e6, 2.9e6, 8.6e6)  # Web Mercator metres: xmin, ymin, xmax, ymax
    project = QgsProject.instance()
    before = project.crs()
    project.setCrs(QgsCoordinateReferenceSystem(project_crs))
    try:
        result = run({"INPUT_SERVICE": str(byte_caches["a"]), "TARGET_CACHE_PATH": str(tmp_path),
                      "EXPORT_EXTENT": f"{rect[0]},{rect[2]},{rect[1]},{rect[3]}"})
    finally:
        project.setCrs(before)
    tiles = output_tiles(Path(result["OUTPUT_CACHE_PATH"]), "dataset-v2")
    expected = {(z, r, c) for z in range(4) for r in range(2**z) for c in range(2**z)
                if overlaps(z, r, c, rect)}
    assert set(tiles) == expected


# --- ESTIMATE_ONLY ---------------------------------------------------------------------------

LOCAL_INPUTS = {
    "dataset folder": lambda fixtures: SAMPLE,
    "conf.xml": lambda fixtures: SAMPLE / "Layers" / "conf.xml",
    "tpk": lambda fixtures: fixtures / "arcmap-10.3-states_filled.tpk",
    "tpkx": lambda fixtures: fixtures / "arcgis-pro-wgs84.tpkx",
    "V1 server folder": lambda fixtures: fixtures / "arcgis-server-10.1-compact-v1",
}


@pytest.mark.parametrize("source", list(LOCAL_INPUTS))
def test_estimate_only_on_local_inputs_counts_exactly_and_writes_nothing(source, fixtures_dir,
                                                                         tmp_path):
    """README: "`ESTIMATE_ONLY` | bool | report per-level tile counts and an estimated size,
    write nothing", for local caches too (counted from their indexes: exact)."""
    path = LOCAL_INPUTS[source](fixtures_dir)
    feedback = recording_feedback()
    estimated = run({"INPUT_SERVICE": str(path), "TARGET_CACHE_PATH": str(tmp_path / "e"),
                     "ESTIMATE_ONLY": True, "MAX_TILE_COUNT": 0}, feedback)
    assert not (tmp_path / "e").exists() or snapshot(tmp_path / "e") == {}
    assert estimated["OUTPUT_CACHE_PATH"] == ""
    assert "ESTIMATE_ONLY is set: nothing was written." in feedback.infos
    exported = run({"INPUT_SERVICE": str(path), "TARGET_CACHE_PATH": str(tmp_path / "x"),
                    "MAX_TILE_COUNT": 0})
    tiles = output_tiles(Path(exported["OUTPUT_CACHE_PATH"]), "dataset-v2")
    assert estimated["TILE_COUNT"] == exported["TILE_COUNT"] == len(tiles)
    assert estimated["BYTE_COUNT"] == exported["BYTE_COUNT"]
    for level in sorted({key[0] for key in tiles}):
        count = sum(1 for key in tiles if key[0] == level)
        assert any(line.startswith(f"Level {level}: {count} tiles, about")
                   for line in feedback.infos), (level, count, feedback.infos)


# --- the package thumbnail: "a thumbnail drawn from the exported tiles" ----------------------

QUADRANTS = {(0, 0): (220, 30, 30), (0, 1): (30, 200, 30), (1, 0): (30, 30, 220),
             (1, 1): (230, 210, 20)}


def colour_tile(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (256, 256), colour).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("kind", ["tpkx", "tpk"])
def test_the_package_thumbnail_shows_the_exported_tiles(kind, tmp_path):
    """README: packages hold "a thumbnail drawn from the exported tiles": clipped away
    pixels are not in it. The source's four level-1 tiles are flat colours; the area of
    interest (the triangle above the diagonal y = x) keeps the red tile whole, half of the
    green and blue ones, nothing of the yellow one."""
    source = tmp_path / "quads"
    write_cache(source / "Layers", web_mercator_scheme(3), {1: TileRange(0, 1, 0, 1)},
                make=lambda level, row, col: colour_tile(QUADRANTS[(row, col)]))
    edge = 20037508.0
    aoi = write_layer(tmp_path / "triangle.gpkg", 3857, [polygon(
        [(-edge, edge), (edge, edge), (-edge, -edge)])])
    cache_type, storage = KINDS[kind]
    result = run({"INPUT_SERVICE": str(source), "TARGET_CACHE_PATH": str(tmp_path / "out"),
                  "EXPORT_CACHE_TYPE": cache_type, "STORAGE_FORMAT_TYPE": storage,
                  "AREA_OF_INTEREST": str(aoi)})
    member = "thumbnail.png" if kind == "tpkx" else "esriinfo/thumbnail/thumbnail.png"
    with zipfile.ZipFile(result["OUTPUT_CACHE_PATH"]) as archive:
        thumbnail = np.asarray(Image.open(io.BytesIO(archive.read(member))).convert("RGB"))
    assert thumbnail.shape == (133, 200, 3)
    counts = {quadrant: int((np.abs(thumbnail.astype(int) - colour).max(axis=2) < 24).sum())
              for quadrant, colour in QUADRANTS.items()}
    red = counts[(0, 0)]
    assert red > 2000, counts
    assert counts[(1, 1)] == 0, counts
    for half in ((0, 1), (1, 0)):  # the whole tile would count as much as the red one
        assert 0.35 * red < counts[half] < 0.65 * red, counts


# --- memory: "memory stays flat" ---------------------------------------------------------------

RSS_WRAPPER = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-3000:],
                  "kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""
BIG_WINDOW = TileRange(0, 124, 0, 159)  # 20,000 tiles at level 8, over two bundles


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory) -> Path:
    """20,000 tiles of about 16 KB at level 8 (some 320 MB) and one tile at level 0."""
    folder = tmp_path_factory.mktemp("big") / "big"
    tiles = noise_tiles(32, noisy_rows=16)
    written = write_cache(folder / "Layers", web_mercator_scheme(10),
                          {0: TileRange(0, 0, 0, 0), 8: BIG_WINDOW},
                          make=lambda level, row, col: tiles[(row * 31 + col) % 32])
    assert len(written) == 20_001
    assert sum(map(len, written.values())) > 300e6
    return folder


def peak_rss(qgis_process_env, base: Path, arguments: list[str]) -> tuple[int, dict]:
    """(peak resident memory in bytes, results) of a qgis_process run, measured in a
    process of its own (getrusage of its only child)."""
    done = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, "qgis_process.bin", "--json", "run", ALG, "--",
         *arguments], env=qgis_process_env(base), capture_output=True, text=True, timeout=600,
        cwd=str(base))
    report = json.loads(done.stdout)
    assert report["rc"] == 0, report["stderr"]
    return report["kb"] * 1024, json.loads(report["stdout"])["results"]


@pytest.mark.parametrize("kind", ["dataset-v2", "tpkx"])
def test_memory_stays_flat_over_20000_tiles(kind, big_cache, qgis_process_env, tmp_path):
    """README: "memory stays flat": a 20,000-tile (320 MB) export peaks within 150 MB of a
    one-tile export of the same cache, each in a qgis_process of its own."""
    cache_type, storage = KINDS[kind]
    common = [f"INPUT_SERVICE={big_cache}", f"EXPORT_CACHE_TYPE={cache_type}",
              f"STORAGE_FORMAT_TYPE={storage}", "LOAD_RESULT=false", "MAX_TILE_COUNT=0"]
    small, small_results = peak_rss(qgis_process_env, tmp_path / "one", [
        *common, "LEVELS=0", f"TARGET_CACHE_PATH={tmp_path / 'one' / 'out'}"])
    big, big_results = peak_rss(qgis_process_env, tmp_path / "all", [
        *common, "LEVELS=8", f"TARGET_CACHE_PATH={tmp_path / 'all' / 'out'}"])
    assert (small_results["TILE_COUNT"], big_results["TILE_COUNT"]) == (1, 20_000)
    assert big_results["BYTE_COUNT"] > 300e6
    assert big - small <= 150 * 2**20, (small / 2**20, big / 2**20)
