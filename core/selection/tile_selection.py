"""Which tiles an export takes: everything, an extent, or the tiles with a pixel centre inside a
polygon."""
from __future__ import annotations

import enum
import hashlib
import threading
from typing import Callable, Optional

import numpy as np
from shapely.geometry import box
from shapely.prepared import prep

from ..errors import CacheError
from ..grid.extent import Extent
from ..grid.tiling_scheme import PACKET_SIZE, TileRange, TilingScheme, bundle_range
from .aoi import aoi_in_cache
from .scanline_mask import PolygonRaster

STATES_KEPT = 64  # bundles' tile states kept per thread (16 KiB each)


class Coverage(enum.Enum):
    NONE = 0
    SOME = 1
    ALL = 2


class Selection:
    """Everything: no window, every tile."""

    fills_window = True
    """Every tile of `window(level)` is selected (a rectangle); False for a polygon, whose
    window only bounds it: counting then needs `count_in` or `area_share`."""

    polygon = None
    """The area of interest (a shapely geometry in the cache's CRS) where there is one."""

    def area_share(self) -> float:
        """The selected share of the window (to scale tile counts of huge windows)."""
        return 1.0

    def identity(self) -> str:
        """What is selected, as text: the same selection gives the same text (an export's
        plan key, export/checkpoint.py)."""
        return "all"

    def bounds(self) -> Optional[Extent]:
        return None

    def window(self, level: int) -> Optional[TileRange]:
        return None

    def bundle_coverage(self, level: int, brow: int, bcol: int) -> Coverage:
        return Coverage.ALL

    def contains(self, level: int, row: int, col: int) -> bool:
        return True

    def count_in(self, level: int, window: TileRange) -> int:
        """Selected tiles of `window`, a window inside `self.window(level)`."""
        return window.count

    def clipper(self, level: int, brow: int, bcol: int) -> Optional[BundleClipper]:
        """Pixel masks for the tiles of one bundle; None where selected tiles are kept whole."""
        return None

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

    def identity(self) -> str:
        return f"extent {self._extent}"

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
    """Tiles with a pixel centre inside a (multi)polygon: tested per bundle first (shapely),
    then for all tiles of a partly covered bundle at once (PolygonRaster.tile_states).

    With `clip`, the pixels of a selected tile whose centres lie outside the polygon are cut
    away (see BundleClipper); without it selected tiles are kept whole. Either way the same
    tiles are selected, and the estimate counts exactly those.
    """

    fills_window = False

    def __init__(self, scheme: TilingScheme, polygon_wkb: bytes, clip: bool = True):
        geometry = aoi_in_cache(polygon_wkb, scheme)
        super().__init__(scheme, Extent(*geometry.bounds))
        self._shape = geometry
        self._per_thread = threading.local()
        self._share = geometry.area / max(geometry.envelope.area, 1e-300)
        self._raster = PolygonRaster.from_geometry(geometry)
        self._clip = clip

    def identity(self) -> str:
        digest = hashlib.sha256(self._shape.wkb).hexdigest()
        return f"polygon {digest} {'clipped' if self._clip else 'whole tiles'}"

    def _geometry(self):
        """The polygon prepared for fast predicates, one per thread: shapely 1.8's prepared
        geometries crash when two threads query the same one."""
        prepared = getattr(self._per_thread, "geometry", None)
        if prepared is None:
            prepared = self._per_thread.geometry = prep(self._shape)
        return prepared

    @property
    def polygon(self):
        """The area of interest in the cache's CRS (a shapely geometry), e.g. to send it on."""
        return self._shape

    def area_share(self) -> float:
        """The polygon's share of its bounding box."""
        return self._share

    def _box(self, level: int, tiles: TileRange, inset: float = 0.1):
        """The tiles' area shrunk by `inset` pixels."""
        extent = self._scheme.range_extent(level, tiles)
        shrink = self._scheme.lod(level).resolution * inset
        return box(extent.xmin + shrink, extent.ymin + shrink, extent.xmax - shrink,
                   extent.ymax - shrink)

    def bundle_coverage(self, level: int, brow: int, bcol: int) -> Coverage:
        window = self.window(level)
        inside = window.intersection(bundle_range(brow, bcol)) if window else None
        if inside is None:
            return Coverage.NONE
        area = self._box(level, inside)
        if not self._geometry().intersects(area):
            return Coverage.NONE
        if inside == bundle_range(brow, bcol) and self._geometry().contains(area):
            return Coverage.ALL
        return Coverage.SOME

    def contains(self, level: int, row: int, col: int) -> bool:
        if not super().contains(level, row, col):
            return False
        brow, bcol = row - row % PACKET_SIZE, col - col % PACKET_SIZE
        return bool(self._bundle_states(level, brow, bcol)[0][row - brow, col - bcol])

    def count_in(self, level: int, window: TileRange) -> int:
        return sum(1 for row in range(window.row_min, window.row_max + 1)
                   for col in range(window.col_min, window.col_max + 1)
                   if self.contains(level, row, col))

    def tile_filter(self, level: int, brow: int, bcol: int) -> Callable[[int, int], bool]:
        """From the bundle's tile states, without a geometry test per tile."""
        coverage = self.bundle_coverage(level, brow, bcol)
        if coverage is not Coverage.SOME:
            return lambda row, col: coverage is Coverage.ALL
        states = self._bundle_states(level, brow, bcol)[0]
        return lambda row, col: bool(states[row - brow, col - bcol])

    def clipper(self, level: int, brow: int, bcol: int) -> Optional[BundleClipper]:
        if not self._clip:
            return None
        # every pixel centre of the bundle inside: no tile needs a mask
        if self._geometry().contains(self._box(level, bundle_range(brow, bcol), inset=0.5)):
            return None
        states, raster = self._bundle_states(level, brow, bcol)
        return BundleClipper(self._scheme, level, brow, bcol, states, raster)

    def _bundle_states(self, level: int, brow: int, bcol: int
                       ) -> tuple[np.ndarray, PolygonRaster]:
        """The TileState values of a bundle's 128x128 tiles and the polygon's edges there;
        each thread keeps the bundles it asked for last (the filter and the clipper of a
        bundle both ask, the estimate asks tile by tile across a window)."""
        key = (level, brow, bcol)
        cache = getattr(self._per_thread, "states", None)
        if cache is None or (len(cache) >= STATES_KEPT and key not in cache):
            cache = self._per_thread.states = {}
        if key not in cache:
            extent = self._scheme.range_extent(level, bundle_range(brow, bcol))
            band = self._raster.band(extent.ymin, extent.ymax)
            cache[key] = band.tile_states(extent, (PACKET_SIZE, PACKET_SIZE),
                                          (self._scheme.tile_cols, self._scheme.tile_rows)), band
        return cache[key]


class TileState(enum.IntEnum):
    OUTSIDE = 0  # no pixel centre inside the area of interest
    BOUNDARY = 1
    INSIDE = 2  # every pixel centre inside


class BundleClipper:
    """The clipping of one bundle's tiles by the area of interest."""

    def __init__(self, scheme: TilingScheme, level: int, brow: int, bcol: int,
                 states: np.ndarray, raster: PolygonRaster):
        self._scheme, self._origin = scheme, (brow, bcol)
        self._extent = scheme.range_extent(level, bundle_range(brow, bcol))  # as for states
        self._states, self._raster = states, raster

    @property
    def states(self) -> np.ndarray:
        """(128, 128) TileState values of the bundle's tiles."""
        return self._states

    def state(self, row: int, col: int) -> TileState:
        return TileState(self._states[row - self._origin[0], col - self._origin[1]])

    def mask(self, row: int, col: int) -> np.ndarray:
        """(rows, cols) bools: pixel centres inside the area of interest."""
        return self.masks(row, [col])[0]

    def masks(self, row: int, cols: list[int]) -> np.ndarray:
        """The masks of some tiles of one row, in one pass (see PolygonRaster.tile_masks)."""
        scheme, (brow, bcol) = self._scheme, self._origin
        return self._raster.tile_masks(
            self._extent, (PACKET_SIZE, PACKET_SIZE), (scheme.tile_cols, scheme.tile_rows),
            row - brow, [col - bcol for col in cols])
