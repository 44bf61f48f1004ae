"""Pixel masks of a polygon: which pixel centres of a tile lie inside it.

A scanline fill with the even-odd rule over every ring edge (outer rings and holes alike), so
multipolygons and holes need no special case. Edges wholly left of a tile still count (they
flip the whole row), which is why edges are subset by their y-range only.
"""
from __future__ import annotations

import numpy as np

from .geometry import Extent


class PolygonRaster:
    """Edges of a valid (multi)polygon, ready to be scan-converted at any resolution."""

    def __init__(self, edges: np.ndarray):
        self._edges = edges  # (n, 4): x0, y0, x1, y1; no horizontal edge
        self._ymin = np.minimum(edges[:, 1], edges[:, 3])
        self._ymax = np.maximum(edges[:, 1], edges[:, 3])

    @classmethod
    def from_geometry(cls, geometry) -> PolygonRaster:
        polygons = getattr(geometry, "geoms", [geometry])
        parts = []
        for polygon in polygons:
            for ring in [polygon.exterior, *polygon.interiors]:
                xy = np.asarray(ring.coords, dtype=np.float64)[:, :2]
                parts.append(np.hstack([xy[:-1], xy[1:]]))
        edges = np.vstack(parts) if parts else np.zeros((0, 4))
        return cls(edges[edges[:, 1] != edges[:, 3]])

    def band(self, ymin: float, ymax: float) -> PolygonRaster:
        """The edges that reach into the rows between ymin and ymax (for one bundle row)."""
        keep = (self._ymax >= ymin) & (self._ymin <= ymax)
        return PolygonRaster(self._edges[keep])

    def mask(self, extent: Extent, width: int, height: int) -> np.ndarray:
        """(height, width) bools: pixel centres of a width x height grid over `extent` that lie
        inside the polygon (row 0 at the top)."""
        res_x = (extent.xmax - extent.xmin) / width
        res_y = (extent.ymax - extent.ymin) / height
        centres_y = extent.ymax - (np.arange(height) + 0.5) * res_y
        keep = (self._ymax >= centres_y[-1]) & (self._ymin <= centres_y[0])
        x0, y0, x1, y1 = self._edges[keep].T
        if not len(x0):
            return np.zeros((height, width), bool)
        y = centres_y[:, None]
        # half-open test: a row through a vertex meets exactly one of its two edges
        crosses = ((y0 <= y) & (y < y1)) | ((y1 <= y) & (y < y0))
        rows, index = np.nonzero(crosses)
        ys = centres_y[rows]
        xs = x0[index] + (ys - y0[index]) * (x1[index] - x0[index]) / (y1[index] - y0[index])
        # first pixel whose centre lies right of the crossing
        first = np.floor((xs - extent.xmin) / res_x - 0.5).astype(np.int64) + 1
        return _parity(rows, np.clip(first, 0, width), height, width)

    def tile_states(self, extent: Extent, tiles: tuple[int, int], size: tuple[int, int]
                    ) -> np.ndarray:
        """(rows, cols) of a grid of `tiles` (cols, rows) tiles of `size` (width, height) px
        over `extent`: 0 = no pixel centre inside, 1 = some, 2 = all; the same answer as
        `mask` tile by tile, from the tiles' pixel-centre rows only.

        A tile is mixed when a centre row's crossing falls between two of its centres, or
        when its rows (each uniform then) disagree at the tile's first centre.
        """
        cols, rows = tiles
        width, height = size
        res_x = (extent.xmax - extent.xmin) / (cols * width)
        res_y = (extent.ymax - extent.ymin) / (rows * height)
        states = np.zeros((rows, cols), np.int8)
        for tile_row in range(rows):
            centres_y = extent.ymax - (tile_row * height + np.arange(height) + 0.5) * res_y
            keep = (self._ymax >= centres_y[-1]) & (self._ymin <= centres_y[0])
            x0, y0, x1, y1 = self._edges[keep].T
            lines = first = np.zeros(0, np.int64)
            mixed = np.zeros(cols, bool)
            if len(x0):
                y = centres_y[:, None]
                crosses = ((y0 <= y) & (y < y1)) | ((y1 <= y) & (y < y0))
                lines, index = np.nonzero(crosses)
                ys = centres_y[lines]
                xs = x0[index] + (ys - y0[index]) * (x1[index] - x0[index]) / (
                    y1[index] - y0[index])
                # first bundle pixel whose centre lies right of the crossing, as in `mask`
                first = np.floor((xs - extent.xmin) / res_x - 0.5).astype(np.int64) + 1
                tile, offset = np.divmod(first, width)
                split = (offset != 0) & (tile >= 0) & (tile < cols)
                mixed[tile[split]] = True
                first = np.clip(-(-first // width), 0, cols)
            parity = _parity(lines, first, height, cols).view(np.uint8)
            mixed |= parity.min(axis=0) != parity.max(axis=0)
            states[tile_row] = np.where(mixed, 1, parity[0] * 2)
        return states


def _parity(rows: np.ndarray, starts: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) bools: odd number of crossings starting at or left of each cell, from
    crossings given as (row, first cell right of it); counted modulo 256, which keeps parity."""
    counts = np.bincount(rows * (width + 1) + starts, minlength=height * (width + 1))
    counts = counts.astype(np.uint8).reshape(height, width + 1)[:, :width]
    return (np.cumsum(counts, axis=1, dtype=np.uint8) & 1).view(bool)
