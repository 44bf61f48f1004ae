"""Which tiles an export takes: everything, an extent, or the tiles a polygon touches."""
from __future__ import annotations

import enum
from typing import Callable, Optional

from shapely import wkb
from shapely.geometry import box
from shapely.prepared import prep

from .errors import CacheError
from .geometry import Extent
from .tiling_scheme import TileRange, TilingScheme, bundle_range


class Coverage(enum.Enum):
    NONE = 0
    SOME = 1
    ALL = 2


class Selection:
    """Everything: no window, every tile."""

    def bounds(self) -> Optional[Extent]:
        return None

    def window(self, level: int) -> Optional[TileRange]:
        return None

    def bundle_coverage(self, level: int, brow: int, bcol: int) -> Coverage:
        return Coverage.ALL

    def contains(self, level: int, row: int, col: int) -> bool:
        return True

    def tile_filter(self, level: int, brow: int, bcol: int) -> Callable[[int, int], bool]:
        """(row, col) -> selected, for the tiles of one bundle: tested per tile only where the
        bundle is partly covered."""
        if self.bundle_coverage(level, brow, bcol) is Coverage.ALL:
            return lambda row, col: True
        return lambda row, col: self.contains(level, row, col)


class ExtentSelection(Selection):
    """Tiles overlapping a rectangle in the cache's CRS by more than a tenth of a pixel."""

    def __init__(self, scheme: TilingScheme, extent: Extent):
        if extent.is_empty:
            raise CacheError("The export extent is empty (its width or height is zero).")
        self._scheme, self._extent = scheme, extent
        self._windows: dict[int, Optional[TileRange]] = {}

    def bounds(self) -> Optional[Extent]:
        return self._extent

    def window(self, level: int) -> Optional[TileRange]:
        if level not in self._windows:
            self._windows[level] = self._scheme.tile_range(level, self._extent)
        return self._windows[level]

    def bundle_coverage(self, level: int, brow: int, bcol: int) -> Coverage:
        window = self.window(level)
        inside = window.intersection(bundle_range(brow, bcol)) if window else None
        if inside is None:
            return Coverage.NONE
        return Coverage.ALL if inside == bundle_range(brow, bcol) else Coverage.SOME

    def contains(self, level: int, row: int, col: int) -> bool:
        window = self.window(level)
        return window is not None and window.contains(row, col)


class PolygonSelection(ExtentSelection):
    """Tiles whose area meets a (multi)polygon, tested per bundle first and per tile after."""

    def __init__(self, scheme: TilingScheme, polygon_wkb: bytes):
        try:
            geometry = wkb.loads(bytes(polygon_wkb))
        except Exception as exc:  # shapely raises several types across 1.8 and 2.x
            raise CacheError(f"The area of interest is not a valid geometry ({exc}).") from exc
        if geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
            raise CacheError(
                f"The area of interest must be a polygon; got {geometry.geom_type or 'nothing'}."
            )
        if not geometry.is_valid:
            geometry = geometry.buffer(0)
        super().__init__(scheme, Extent(*geometry.bounds))
        self._geometry = prep(geometry)

    def _box(self, level: int, tiles: TileRange):
        extent = self._scheme.range_extent(level, tiles)
        shrink = self._scheme.lod(level).resolution / 10
        return box(extent.xmin + shrink, extent.ymin + shrink, extent.xmax - shrink,
                   extent.ymax - shrink)

    def bundle_coverage(self, level: int, brow: int, bcol: int) -> Coverage:
        window = self.window(level)
        inside = window.intersection(bundle_range(brow, bcol)) if window else None
        if inside is None:
            return Coverage.NONE
        area = self._box(level, inside)
        if not self._geometry.intersects(area):
            return Coverage.NONE
        if inside == bundle_range(brow, bcol) and self._geometry.contains(area):
            return Coverage.ALL
        return Coverage.SOME

    def contains(self, level: int, row: int, col: int) -> bool:
        return super().contains(level, row, col) and self._geometry.intersects(
            self._box(level, TileRange(row, row, col, col))
        )
