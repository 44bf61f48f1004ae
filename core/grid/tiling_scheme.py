"""Tiling schemes and the tile/bundle arithmetic of Esri caches (esri-formats §0, §8)."""
from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Optional

from ..errors import CacheError
from .extent import Extent
from .spatial_reference import SpatialReference

PACKET_SIZE = 128
WEB_MERCATOR_HALF_WIDTH = 20037508.342789244
# GDAL's ESRIC driver refuses a level whose full-grid raster is wider than this (esri-formats §9.2).
GDAL_MAX_RASTER = 2**31 - 1
RESOLUTION_RTOL = 1e-9


class StorageFormat(enum.Enum):
    EXPLODED = "esriMapCacheStorageModeExploded"
    COMPACT = "esriMapCacheStorageModeCompact"
    COMPACT_V2 = "esriMapCacheStorageModeCompactV2"

    @property
    def label(self) -> str:
        return {"EXPLODED": "Exploded", "COMPACT": "Compact V1", "COMPACT_V2": "Compact V2"}[
            self.name
        ]


@dataclass(frozen=True)
class Lod:
    level: int
    resolution: float
    scale: float


@dataclass(frozen=True)
class TileRange:
    """Inclusive row/column bounds of a set of tiles on one level."""

    row_min: int
    row_max: int
    col_min: int
    col_max: int

    @property
    def count(self) -> int:
        return (self.row_max - self.row_min + 1) * (self.col_max - self.col_min + 1)

    def contains(self, row: int, col: int) -> bool:
        return self.row_min <= row <= self.row_max and self.col_min <= col <= self.col_max

    def intersection(self, other: TileRange) -> Optional[TileRange]:
        result = TileRange(
            max(self.row_min, other.row_min),
            min(self.row_max, other.row_max),
            max(self.col_min, other.col_min),
            min(self.col_max, other.col_max),
        )
        if result.row_min > result.row_max or result.col_min > result.col_max:
            return None
        return result

    def union(self, other: Optional[TileRange]) -> TileRange:
        if other is None:
            return self
        return TileRange(min(self.row_min, other.row_min), max(self.row_max, other.row_max),
                         min(self.col_min, other.col_min), max(self.col_max, other.col_max))

    def whole_bundles(self) -> TileRange:
        """The range widened to the edges of the bundles it touches."""
        return TileRange(bundle_origin(self.row_min), bundle_origin(self.row_max) + PACKET_SIZE - 1,
                         bundle_origin(self.col_min), bundle_origin(self.col_max) + PACKET_SIZE - 1)

    def bundles(self) -> Iterable[tuple[int, int]]:
        """Top-left (row, col) of every bundle the range touches, row-major."""
        for brow in range(bundle_origin(self.row_min), self.row_max + 1, PACKET_SIZE):
            for bcol in range(bundle_origin(self.col_min), self.col_max + 1, PACKET_SIZE):
                yield brow, bcol


def bundle_origin(index: int) -> int:
    return index - index % PACKET_SIZE


def bundle_range(brow: int, bcol: int) -> TileRange:
    return TileRange(brow, brow + PACKET_SIZE - 1, bcol, bcol + PACKET_SIZE - 1)


@dataclass(frozen=True)
class TilingScheme:
    spatial_reference: SpatialReference
    origin_x: float
    origin_y: float
    tile_cols: int
    tile_rows: int
    dpi: int
    lods: tuple[Lod, ...]
    tile_format: str = "PNG"
    compression_quality: int = 0
    storage_format: StorageFormat = StorageFormat.COMPACT_V2
    full_extent: Optional[Extent] = field(default=None, compare=False)
    initial_extent: Optional[Extent] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.tile_cols <= 0 or self.tile_rows <= 0:
            raise CacheError(f"Tile size {self.tile_cols}x{self.tile_rows} is not valid.")
        if not self.lods:
            raise CacheError("The tiling scheme has no levels of detail (LODs).")
        for lod in self.lods:
            if not (lod.resolution > 0 and math.isfinite(lod.resolution)):
                raise CacheError(f"Level {lod.level} has an invalid resolution {lod.resolution}.")

    @property
    def levels(self) -> list[int]:
        return [lod.level for lod in self.lods]

    def lod(self, level: int) -> Lod:
        for lod in self.lods:
            if lod.level == level:
                return lod
        raise CacheError(f"Level {level} is not in the tiling scheme (levels {self.levels}).")

    def tile_span(self, level: int) -> tuple[float, float]:
        res = self.lod(level).resolution
        return res * self.tile_cols, res * self.tile_rows

    def tile_extent(self, level: int, row: int, col: int) -> Extent:
        span_x, span_y = self.tile_span(level)
        xmin = self.origin_x + col * span_x
        ymax = self.origin_y - row * span_y
        return Extent(xmin, ymax - span_y, xmin + span_x, ymax)

    def range_extent(self, level: int, tiles: TileRange) -> Extent:
        top_left = self.tile_extent(level, tiles.row_min, tiles.col_min)
        bottom_right = self.tile_extent(level, tiles.row_max, tiles.col_max)
        return Extent(top_left.xmin, bottom_right.ymin, bottom_right.xmax, top_left.ymax)

    def tile_range(self, level: int, extent: Extent) -> Optional[TileRange]:
        """Tiles that overlap the extent by more than a tenth of a pixel (esri-formats §8.2)."""
        res = self.lod(level).resolution
        span_x, span_y = self.tile_span(level)
        shrink = res / 10
        col_min = math.floor((extent.xmin + shrink - self.origin_x) / span_x)
        col_max = math.floor((extent.xmax - shrink - self.origin_x) / span_x)
        row_min = math.floor((self.origin_y - (extent.ymax - shrink)) / span_y)
        row_max = math.floor((self.origin_y - (extent.ymin + shrink)) / span_y)
        col_min, row_min = max(col_min, 0), max(row_min, 0)
        if col_max < col_min or row_max < row_min:
            return None
        return TileRange(row_min, row_max, col_min, col_max)

    def world_span(self) -> Optional[tuple[float, float]]:
        """(west edge, width) of a scheme whose tiles wrap around the world east-west (Web
        Mercator, or geographic with the origin at -180), else None."""
        sr = self.spatial_reference
        if sr.is_web_mercator:
            half = WEB_MERCATOR_HALF_WIDTH
        elif sr.is_geographic:
            half = 180.0
        else:
            return None
        if not math.isclose(self.origin_x, -half, rel_tol=1e-6):
            return None
        return -half, 2 * half

    def world_grid(self, level: int) -> Optional[TileRange]:
        """Every tile a world scheme has at a level: none lies beyond the world's edges, so a
        client does not ask a service for them (a local cache may still hold some: ArcGIS Pro
        writes a column and rows beyond them in geographic packages); None for other
        schemes."""
        span = self.world_span()
        if span is None:
            return None
        west, width = span
        south = -90.0 if self.spatial_reference.is_geographic else west
        span_x, span_y = self.tile_span(level)
        cols = math.ceil((west + width - self.origin_x) / span_x - 1e-6)
        rows = math.ceil((self.origin_y - south) / span_y - 1e-6)
        return TileRange(0, max(rows, 1) - 1, 0, max(cols, 1) - 1)

    def differences(self, other: TilingScheme, levels: Iterable[int] = ()) -> list[str]:
        """What makes `other` incompatible with this scheme for the given exported levels."""
        found = []
        if not self.spatial_reference.same_crs(other.spatial_reference):
            found.append(
                f"CRS {self.spatial_reference.describe()} vs {other.spatial_reference.describe()}"
            )
        if not (_close(self.origin_x, other.origin_x) and _close(self.origin_y, other.origin_y)):
            found.append(
                f"tile origin ({self.origin_x!r}, {self.origin_y!r}) vs "
                f"({other.origin_x!r}, {other.origin_y!r})"
            )
        if (self.tile_cols, self.tile_rows) != (other.tile_cols, other.tile_rows):
            mine, theirs = (self.tile_cols, self.tile_rows), (other.tile_cols, other.tile_rows)
            found.append("tile size %dx%d vs %dx%d" % (*mine, *theirs))
        if self.storage_format != other.storage_format:
            found.append(
                f"storage format {self.storage_format.label} vs {other.storage_format.label}"
            )
        theirs = {lod.level: lod.resolution for lod in other.lods}
        for lod in self.lods:
            if lod.level in theirs and not _close(lod.resolution, theirs[lod.level]):
                found.append(
                    f"level {lod.level} resolution {lod.resolution!r} vs {theirs[lod.level]!r}"
                )
        missing = sorted(set(levels) - set(theirs))
        if missing:
            found.append(f"levels {missing} are missing from the target's scheme")
        return found

    def gdal_readable_lods(self, keep_levels: Iterable[int] = ()) -> tuple[Lod, ...]:
        """The LODs without trailing ones GDAL cannot open (esri-formats §9.2) unless they hold
        tiles."""
        keep = set(keep_levels)
        width = 2 * max(abs(self.origin_x), abs(self.origin_y))
        lods = list(self.lods)
        while len(lods) > 1 and lods[-1].level not in keep and (
            width / lods[-1].resolution > GDAL_MAX_RASTER
        ):
            lods.pop()
        return tuple(lods)

    def with_storage(self, storage: StorageFormat) -> TilingScheme:
        return replace(self, storage_format=storage)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RESOLUTION_RTOL, abs_tol=1e-9)
