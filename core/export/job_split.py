"""An export cut into server jobs that each stay under 90 % of the service's
`maxExportTilesCount`: whole levels go together while they fit, a level that alone is too big is
cut into quadrants of its tile window until each fits. The parts never share a tile: a quadrant's
extent is its tiles' own, inset by a quarter pixel, so a tile on a split line belongs to one part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from shapely import wkb
from shapely.geometry import box

from ..errors import CacheError, Concern
from ..grid.extent import Extent
from ..grid.tiling_scheme import TileRange, bundle_range
from ..selection.tile_selection import Coverage, Selection
from ..sources.export_tiles_request import ExportTilesRequest
from ..sources.service import ServiceSource
from .estimate import area_tile_count

SHARE_OF_LIMIT = 0.9
INSET_PIXELS = 0.25


@dataclass(frozen=True)
class JobPart:
    """The tiles of one job: `levels`, and per level the window of tiles it is limited to
    (none: the whole selection of those levels)."""

    levels: tuple[int, ...]
    tiles: int
    windows: Optional[dict[int, TileRange]] = None

    def request(self, source: ServiceSource, selection: Selection, **options
                ) -> ExportTilesRequest:
        """The exportTiles request of this part: the selection's extent and polygon, narrowed
        to the part's window where it has one."""
        scheme = source.scheme
        polygon = selection.polygon
        extent = selection.bounds()
        if self.windows is not None:
            (level, window), = self.windows.items()
            inset = scheme.lod(level).resolution * INSET_PIXELS
            whole = scheme.range_extent(level, window)
            extent = Extent(whole.xmin + inset, whole.ymin + inset, whole.xmax - inset,
                            whole.ymax - inset)
            if polygon is not None:
                polygon = polygon.intersection(box(extent.xmin, extent.ymin, extent.xmax,
                                                   extent.ymax))
        return ExportTilesRequest(
            levels=self.levels, extent=extent,
            polygon_wkb=wkb.dumps(polygon) if polygon is not None and not polygon.is_empty
            else None, **options)

    def selection(self, selection: Selection) -> Selection:
        return selection if self.windows is None else PartSelection(selection, self.windows)


class PartSelection(Selection):
    """A selection limited to some tile windows (the tiles of one job), so that the packages of
    several jobs each deliver only their own tiles."""

    def __init__(self, inner: Selection, windows: dict[int, TileRange]):
        self._inner, self._windows = inner, windows
        self.fills_window = inner.fills_window

    def area_share(self) -> float:
        return self._inner.area_share()

    def bounds(self) -> Optional[Extent]:
        return self._inner.bounds()

    def window(self, level: int) -> Optional[TileRange]:
        part = self._windows.get(level)
        inner = self._inner.window(level)
        if part is None:
            return TileRange(0, -1, 0, -1)  # nothing of this level
        return part if inner is None else part.intersection(inner) or TileRange(0, -1, 0, -1)

    def bundle_coverage(self, level: int, brow: int, bcol: int) -> Coverage:
        window = self.window(level)
        bundle = bundle_range(brow, bcol)
        inside = window.intersection(bundle) if window.count > 0 else None
        if inside is None:
            return Coverage.NONE
        coverage = self._inner.bundle_coverage(level, brow, bcol)
        return coverage if coverage is Coverage.NONE or inside == bundle else Coverage.SOME

    def contains(self, level: int, row: int, col: int) -> bool:
        window = self.window(level)
        return window.count > 0 and window.contains(row, col) and self._inner.contains(
            level, row, col)

    def count_in(self, level: int, window: TileRange) -> int:
        return self._inner.count_in(level, window)

    def clipper(self, level: int, brow: int, bcol: int):
        return self._inner.clipper(level, brow, bcol)


def split_jobs(source: ServiceSource, levels: list[int], selection: Selection, limit: int
               ) -> list[JobPart]:
    """The jobs of an export, each under 90 % of `limit` tiles (the tile counts the estimate
    uses, as exportTiles counts them)."""
    budget = max(1, math.ceil(SHARE_OF_LIMIT * limit) - 1)
    parts: list[JobPart] = []
    group: list[int] = []
    group_tiles = 0
    for level in levels:
        tiles = area_tile_count(source, level, selection)
        if tiles == 0:
            continue
        if tiles > budget:
            window = source.layout.area(level, selection.window(level))
            parts.extend(_quadrants(source, selection, level, window, budget))
            continue
        if group_tiles + tiles > budget:
            parts.append(JobPart(tuple(group), group_tiles))
            group, group_tiles = [], 0
        group.append(level)
        group_tiles += tiles
    if group:
        parts.append(JobPart(tuple(group), group_tiles))
    return parts


def _quadrants(source: ServiceSource, selection: Selection, level: int, window: TileRange,
               budget: int) -> list[JobPart]:
    tiles = window.count if selection.fills_window else selection.count_in(level, window)
    if tiles == 0:
        return []
    if tiles <= budget:
        return [JobPart((level,), tiles, {level: window})]
    if window.count == 1:
        raise CacheError("A job of one tile exceeds the service's tile limit.", Concern.AREA)
    row_mid = (window.row_min + window.row_max) // 2
    col_mid = (window.col_min + window.col_max) // 2
    rows = [(window.row_min, row_mid), (row_mid + 1, window.row_max)]
    cols = [(window.col_min, col_mid), (col_mid + 1, window.col_max)]
    parts = []
    for row_min, row_max in rows:
        for col_min, col_max in cols:
            if row_min <= row_max and col_min <= col_max:
                parts.extend(_quadrants(source, selection, level,
                                        TileRange(row_min, row_max, col_min, col_max), budget))
    return parts
