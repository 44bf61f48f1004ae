"""How many tiles an export takes and how big it will be, per level, before anything is written
(the `estimateExportTilesSize` of the REST API, esri-formats §7.4).

Local caches are counted exactly from their bundle indexes. Services are counted from their
tilemap where they have one; otherwise every tile of the export area is a candidate, and a few
sampled tiles per level give the share that exists and the average size.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import CacheError, Concern
from ..grid.tiling_scheme import TileRange, bundle_range
from ..selection.tile_selection import Coverage, Selection
from ..sources.source import CacheSource
from .plan import plan_bundles

SAMPLES_PER_LEVEL = 6  # tiles fetched per level for their size, where a tilemap counts them
# Without a tilemap the samples also tell which share of the candidates exists: more of them.
# They cost no extra request: the export keeps what they fetched.
SAMPLES_WITHOUT_TILEMAP = 64
MAX_SAMPLE_POOL = 512
MAX_COUNTED_BUNDLES = 1_000_000


@dataclass
class LevelEstimate:
    level: int
    area_tiles: int  # tiles of the export area (what the REST API's tile limit counts)
    tiles: int  # tiles expected to be exported
    bytes: int
    counted: bool  # tiles counted one by one (index or tilemap), not extrapolated
    requests: int = 0  # tile requests the download will make (services without a tilemap)
    sampled: tuple[int, int] = (0, 0)  # (tiles asked for, tiles found) when extrapolated

    def describe(self) -> str:
        how = ""
        if not self.counted:
            asked, found = self.sampled
            how = (f" (estimated: {found} of {asked} sampled tiles exist; "
                   f"{self.requests} tiles to ask for)")
        return (f"Level {self.level}: {self.tiles} tiles{how}, about {format_size(self.bytes)}"
                f" ({self.area_tiles} tiles in the export area)")


def area_tile_count(source: CacheSource, level: int, selection: Selection) -> int:
    """Tiles in the export area at one level, as exportTiles counts them; for a service it is
    bounded by the service's extent, for a local cache by its bundles."""
    layout = source.layout
    window = selection.window(level)
    if source.is_service:
        window = layout.area(level, window)
        if window is None:
            return 0
    if selection.fills_window and source.is_service:
        return window.count
    total = 0
    for number, (brow, bcol) in enumerate(layout.bundle_keys(level, window)):
        if number >= MAX_COUNTED_BUNDLES:
            raise CacheError(
                f"Level {level} spans more than {MAX_COUNTED_BUNDLES} bundles in the export "
                "area: choose fewer levels or a smaller export extent or area of interest.",
                Concern.AREA)
        total += _count_in_bundle(level, brow, bcol, window, selection)
    return total


def _count_in_bundle(level: int, brow: int, bcol: int, window: Optional[TileRange],
                     selection: Selection) -> int:
    block = bundle_range(brow, bcol)
    block = block.intersection(window) if window is not None else block
    if block is None:
        return 0
    coverage = selection.bundle_coverage(level, brow, bcol)
    if coverage is Coverage.NONE:
        return 0
    if coverage is Coverage.ALL:
        return block.count
    return selection.count_in(level, block)


def estimate(source: CacheSource, levels: list[int], selection: Selection,
             is_canceled: Callable[[], bool] = lambda: False) -> list[LevelEstimate]:
    """Per-level counts and sizes; the service is asked only for tilemaps and a few samples."""
    result = []
    present_levels = source.layout.levels()
    for level in levels:
        if is_canceled():
            raise CacheError("The estimate was canceled.")
        if level not in present_levels:
            result.append(LevelEstimate(level, 0, 0, 0, True))
            continue
        area = area_tile_count(source, level, selection)
        if source.is_service:
            result.append(_service_level(source, level, selection, area))
        else:
            result.append(_local_level(source, level, selection, area))
    return result


def _local_level(source: CacheSource, level: int, selection: Selection, area: int
                 ) -> LevelEstimate:
    tiles = size = 0
    layout = source.layout
    for _, brow, bcol in plan_bundles(source, [level], selection):
        wanted = selection.tile_filter(level, brow, bcol)
        reader = layout.open_bundle(level, brow, bcol, wanted)
        if reader is None:
            continue
        try:
            for row, col in reader.present():
                if wanted(row, col):
                    tiles += 1
                    size += (reader.locate(row, col)[1] if reader.indexed
                             else len(reader.read(row, col)))
        finally:
            reader.close()
    return LevelEstimate(level, area, tiles, size, True)


def _service_level(source: CacheSource, level: int, selection: Selection, area: int
                   ) -> LevelEstimate:
    layout = source.layout
    candidates = 0
    pool: list[tuple[int, int]] = []
    rng = random.Random(level)  # spread without the aliasing of a fixed stride; repeatable
    for _, brow, bcol in plan_bundles(source, [level], selection):
        keys = layout.wanted_tiles(level, brow, bcol, selection.tile_filter(level, brow, bcol))
        keys = layout.present(level, keys, keep=True)
        candidates += len(keys)
        if len(pool) < MAX_SAMPLE_POOL:
            pool.extend(rng.sample(keys, min(len(keys), SAMPLES_WITHOUT_TILEMAP)))
    counted = layout.tilemap_usable
    picked = rng.sample(pool, min(len(pool), SAMPLES_PER_LEVEL if counted
                                  else SAMPLES_WITHOUT_TILEMAP))
    sizes = [len(data) for data in layout.fetch_samples(level, picked) if data is not None]
    average = sum(sizes) / len(sizes) if sizes else 0
    tiles = candidates if counted or not picked else round(candidates * len(sizes) / len(picked))
    return LevelEstimate(level, area, tiles, round(tiles * average), counted, candidates,
                         (len(picked), len(sizes)))


def format_size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"
