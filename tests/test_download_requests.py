"""What a download asks a server, counted on the server's side: never a tile or a tilemap
window outside the level's grid, never a tile twice, and with a tilemap exactly the tiles that
exist, whichever way the server answers tilemaps (spec §7.3 leaves room); estimates and progress
count the tiles that can exist.
"""
from __future__ import annotations

import io
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import read_all_tiles, web_mercator_scheme, write_cache  # noqa: E402
from independent_readers import v2_folder_tiles  # noqa: E402
from recording import recording_feedback  # noqa: E402
from test_http_export import run_export  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

LEVELS = range(7)  # levels 0-6 of a world Web Mercator cache: 5,461 tiles where all exist
EMPTY_BLOCK = TileRange(32, 63, 0, 31)  # a 32x32 block of level 6 without a tile
# Tilemap behaviours of servers: (label, server options)
TILEMAP_SERVERS = {
    "whole-window": {"tilemap_clip": "window"},
    "clip-at-bundle": {"tilemap_clip": "bundle"},
    "clip-at-grid": {"tilemap_clip": "grid"},
    "clip-at-8x8-block": {"tilemap_clip": "block", "tilemap_block": 8},
    "422-when-clipped-part-empty": {"tilemap_clip": "bundle", "tilemap_422": "answered"},
    "zeros-instead-of-422": {"tilemap_422": "never"},
}


def _hole(level: int, row: int, col: int) -> bool:
    return level >= 2 and ((row * 5 + col * 3 + level) % 7 == 0 or (
        level == 6 and EMPTY_BLOCK.contains(row, col)))


def _tile(level: int, row: int, col: int) -> bytes:
    """A small distinct PNG (the address in its first pixels)."""
    image = Image.new("RGB", (256, 256), (level * 30, row % 256, col % 256))
    image.putpixel((0, 0), (level, row // 256, col // 256))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    """A world cache, levels 0-6, with holes from level 2 on and an empty block at level 6."""
    folder = tmp_path_factory.mktemp("world") / "world"
    windows = {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in LEVELS}
    skip = [(z, r, c) for z, w in windows.items() for r in range(w.row_max + 1)
            for c in range(w.col_max + 1) if _hole(z, r, c)]
    tiles = write_cache(folder / "Layers", web_mercator_scheme(), windows, skip=skip, make=_tile)
    return folder, tiles


def _requests(server, kind: str) -> list:
    return [e for e in server.log.entries() if e.kind == kind]


def _window(entry) -> tuple[int, int, int, int, int]:
    level, row, col, width, height = map(int, entry.path.split("/tilemap/")[1].split("/"))
    return level, row, col, width, height


def _export(server, target: Path, feedback=None, **params) -> dict:
    return run_export({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-6",
                       "TARGET_CACHE_PATH": str(target), **params}, feedback)


@pytest.mark.parametrize("behaviour", list(TILEMAP_SERVERS))
def test_with_a_tilemap_exactly_the_tiles_present_are_requested(serve, world, tmp_path,
                                                                behaviour):
    cache, tiles = world
    server = serve({"world": cache}, **TILEMAP_SERVERS[behaviour])
    result = _export(server, tmp_path / "out")
    assert v2_folder_tiles(tmp_path / "out" / "world" / "Layers" / "_alllayers") == tiles
    assert result["TILE_COUNT"] == len(tiles)
    asked = Counter((e.level, e.row, e.col) for e in _requests(server, "tile"))
    assert set(asked) == set(tiles), "with a tilemap only tiles that exist are requested"
    assert max(asked.values()) == 1, "a tile was requested twice"
    tilemaps = _requests(server, "tilemap")
    windows = Counter(_window(e) for e in tilemaps)
    assert max(windows.values()) == 1, "a tilemap window was asked twice"
    for level, row, col, width, height in windows:
        assert row + height <= 2**level and col + width <= 2**level, "window beyond the grid"
        assert width <= 32 and height <= 32 and row // 32 == (row + height - 1) // 32
    assert all(e.status in (200, 422) for e in tilemaps)
    # 1+1+1+1+1+4+4 blocks of 32x32 at most, plus the follow-ups of clipped answers
    assert len(tilemaps) <= (13 if behaviour != "clip-at-8x8-block" else 13 * 16)


def test_without_a_tilemap_the_tiles_of_the_grid_are_requested_once(serve, world, tmp_path):
    cache, tiles = world
    server = serve({"world": cache}, tilemap=False)
    result = _export(server, tmp_path / "out")
    assert v2_folder_tiles(tmp_path / "out" / "world" / "Layers" / "_alllayers") == tiles
    assert result["TILE_COUNT"] == len(tiles)
    asked = Counter((e.level, e.row, e.col) for e in _requests(server, "tile"))
    grid = {(z, r, c) for z in LEVELS for r in range(2**z) for c in range(2**z)}
    assert set(asked) == grid and max(asked.values()) == 1
    assert sum(e.status == 404 for e in _requests(server, "tile")) == len(grid) - len(tiles)
    assert not _requests(server, "tilemap")


def test_a_smaller_full_extent_bounds_the_requests(serve, world, tmp_path):
    """The service states a full extent smaller than its tiles: with a tilemap the bundles it
    touches are looked at whole (within the world); without one only its own tiles."""
    cache, tiles = world
    scheme = web_mercator_scheme()
    small = TileRange(10, 20, 40, 50)  # level 6
    extent = scheme.range_extent(6, small)
    override = {"fullExtent": {**extent.as_dict(), "spatialReference": {"wkid": 102100}}}
    with_map = serve({"world": cache}, json_overrides=override)
    _export(with_map, tmp_path / "a")
    assert v2_folder_tiles(tmp_path / "a" / "world" / "Layers" / "_alllayers") == tiles
    without = serve({"world": cache}, json_overrides=override, tilemap=False)
    _export(without, tmp_path / "b")
    asked = {(e.level, e.row, e.col) for e in _requests(without, "tile")}
    expected = set()
    for level in LEVELS:
        window = scheme.tile_range(level, extent)
        expected |= {(level, r, c) for r in range(window.row_min, window.row_max + 1)
                     for c in range(window.col_min, window.col_max + 1)}
    assert asked == expected
    assert v2_folder_tiles(tmp_path / "b" / "world" / "Layers" / "_alllayers") == {
        key: data for key, data in tiles.items() if key in expected}


@pytest.mark.parametrize("tilemap", [True, False])
def test_estimate_counts_tiles_inside_the_grid(serve, world, tmp_path, tilemap):
    cache, tiles = world
    server = serve({"world": cache}, tilemap=tilemap)
    recorder = recording_feedback()
    result = _export(server, tmp_path / "e", recorder, ESTIMATE_ONLY=True)
    per_level = Counter(level for level, _, _ in tiles)
    for level in LEVELS:
        line = next(t for t in recorder.infos if t.startswith(f"Level {level}: "))
        area = re.search(r"\((\d+) tiles in the export area\)", line)
        assert area and int(area.group(1)) == 4**level, line
        count = int(re.match(rf"Level {level}: (\d+) tiles", line).group(1))
        if tilemap or level < 4:  # counted, or every tile sampled (64 samples a level)
            assert count == per_level[level], line
        else:  # extrapolated from 64 samples: 6 in 7 tiles exist
            assert abs(count - per_level[level]) <= 0.15 * 4**level, line
    assert "Level 0: 1 tiles" in recorder.text
    total = int(re.search(r"Total: (\d+) tiles", recorder.text).group(1))
    assert total == result["TILE_COUNT"]
    assert total == len(tiles) if tilemap else abs(total - len(tiles)) <= 0.15 * len(tiles)


def test_progress_counts_the_tiles_that_exist(serve, world, tmp_path):
    """A slow server, so the per-level progress lines come: their totals are the tiles of the
    level, and the time left shrinks as tiles come."""
    cache, tiles = world
    server = serve({"world": cache}, latency=0.02)
    recorder = recording_feedback()
    _export(server, tmp_path / "p", recorder, NUM_OF_CACHING_SERVICE_INSTANCES=4)
    per_level = Counter(level for level, _, _ in tiles)
    lines = [re.match(r"Level (\d+): ([\d,]+) of ([\d,]+) tiles", t) for t in recorder.infos]
    lines = [m for m in lines if m]
    assert lines, recorder.text
    for match in lines:
        level, done, total = (int(g.replace(",", "")) for g in match.groups())
        assert total == per_level[level] and done <= total, match.group(0)


def test_faults_latency_and_a_rate_limit_only_add_retries(serve, world, tmp_path):
    """A slow server clipping tilemaps at the grid, failing 1 request in 30 (tiles and
    tilemaps) once with 503 and holding clients to 1,000 requests/s: a tile is asked for again
    only after a failure, and the export equals the source."""
    cache, tiles = world
    server = serve({"world": cache}, tilemap_clip="grid", latency=0.005, fault="503",
                   fault_fraction=1 / 30, fault_attempts=1, fault_tilemap=True, rate_limit=1000)
    _export(server, tmp_path / "out", NUM_OF_CACHING_SERVICE_INSTANCES=4)
    assert v2_folder_tiles(tmp_path / "out" / "world" / "Layers" / "_alllayers") == tiles
    for kind in ("tile", "tilemap"):
        entries = _requests(server, kind)
        asked = Counter(e.path for e in entries)
        served = Counter(e.path for e in entries if e.status in (200, 404, 422))
        assert max(served.values()) == 1, f"a {kind} was fetched twice"
        for path, count in asked.items():  # repeats are retries of failures only
            failures = sum(1 for e in entries if e.path == path and e.status in (429, 503))
            assert count == served[path] + failures, path
    assert {(e.level, e.row, e.col) for e in _requests(server, "tile")} == set(tiles)


@pytest.mark.parametrize("answer", ["422", "empty-location"])
def test_windows_beyond_a_non_world_grid(serve, fixtures_dir, tmp_path, answer):
    """ArcGIS Server's geographic cache (origin -400, 400: no world grid) is asked tilemaps for
    whole bundles around its extent; a server that clips at its extent answers the windows
    beyond it with 422 or with an empty location: both mean no tile there, and only the tiles
    that exist are requested."""
    cache = fixtures_dir / "arcgis-server-10.1-compact-v1"
    tiles = read_all_tiles(cache)
    options = {"tilemap_clip": "grid", "tilemap_422": "never" if answer != "422" else "window"}
    server = serve({"v1": cache}, **options)
    recorder = recording_feedback()
    run_export({"INPUT_SERVICE": server.service_url("v1"), "LEVELS": "0-2",
                "TARGET_CACHE_PATH": str(tmp_path / "out"), "LOAD_RESULT": False}, recorder)
    assert "tilemap is unusable" not in recorder.text
    out = tmp_path / "out" / "v1" / "Layers" / "_alllayers"
    assert v2_folder_tiles(out) == tiles
    asked = Counter((e.level, e.row, e.col) for e in _requests(server, "tile"))
    assert set(asked) == set(tiles) and max(asked.values()) == 1
