"""Pixel masks of a polygon: which pixel centres of a tile lie inside it.

A scanline fill with the even-odd rule over every ring edge (outer rings and holes alike), so
multipolygons and holes need no special case. Edges wholly left of a tile still count (they
flip the whole row), which is why edges are subset by their y-range only.
"""
from __future__ import annotations

import numpy as np

from ..grid.extent import Extent

TILE_ROWS_PER_PASS = 16  # tile rows of a bundle classified together (memory ~ 16 x 256 x 129 x 8 B)


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
        return self.tile_masks(extent, (1, 1), (width, height), 0, [0])[0]

    def tile_masks(self, extent: Extent, tiles: tuple[int, int], size: tuple[int, int],
                   tile_row: int, tile_cols: list[int]) -> np.ndarray:
        """(len(tile_cols), height, width) masks of some tiles of one row of a grid of `tiles`
        (cols, rows) tiles of `size` (width, height) px over `extent`: one pass for them all,
        with the arithmetic of `tile_states`, so a mask never contradicts its tile's state."""
        width, height = size
        lines, first = self._crossings(extent, tiles, size, tile_row, 1)
        cols = np.asarray(tile_cols, np.int64)
        starts = np.clip(first[None, :] - cols[:, None] * width, 0, width)
        cells = np.arange(len(cols))[:, None] * height + lines[None, :]
        return _parity(cells.ravel(), starts.ravel(), len(cols) * height, width).reshape(
            len(cols), height, width)

    def _crossings(self, extent: Extent, tiles: tuple[int, int], size: tuple[int, int],
                   top: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Where the edges cross the pixel-centre rows of tile rows top..top+count-1: (pixel
        row counted from the first of them, first pixel of the grid row whose centre lies right
        of the crossing)."""
        (cols, rows), (width, height) = tiles, size
        res_x = (extent.xmax - extent.xmin) / (cols * width)
        res_y = (extent.ymax - extent.ymin) / (rows * height)
        centres_y = extent.ymax - (top * height + np.arange(count * height) + 0.5) * res_y
        keep = (self._ymax >= centres_y[-1]) & (self._ymin <= centres_y[0])
        x0, y0, x1, y1 = self._edges[keep].T
        y = centres_y[:, None]
        # half-open test: a row through a vertex meets exactly one of its two edges
        crosses = ((y0 <= y) & (y < y1)) | ((y1 <= y) & (y < y0))
        lines, index = np.nonzero(crosses)
        ys = centres_y[lines]
        xs = x0[index] + (ys - y0[index]) * (x1[index] - x0[index]) / (y1[index] - y0[index])
        first = np.floor((xs - extent.xmin) / res_x - 0.5).astype(np.int64) + 1
        return lines, first

    def tile_states(self, extent: Extent, tiles: tuple[int, int], size: tuple[int, int]
                    ) -> np.ndarray:
        """(rows, cols) of a grid of `tiles` (cols, rows) tiles of `size` (width, height) px
        over `extent`: 0 = no pixel centre inside, 1 = some, 2 = all; the same answer as
        `tile_masks` tile by tile, from the tiles' pixel-centre rows only.

        A tile is mixed when a centre row's crossing falls between two of its centres, or
        when its rows (each uniform then) disagree at the tile's first centre.
        """
        cols, rows = tiles
        width, height = size
        states = np.zeros((rows, cols), np.int8)
        for top in range(0, rows, TILE_ROWS_PER_PASS):  # a few passes: numpy calls, not rows
            count = min(TILE_ROWS_PER_PASS, rows - top)
            lines, first = self._crossings(extent, tiles, size, top, count)
            mixed = np.zeros((count, cols), bool)
            tile, offset = np.divmod(first, width)
            split = (offset != 0) & (tile >= 0) & (tile < cols)
            mixed[lines[split] // height, tile[split]] = True
            first = np.clip(-(-first // width), 0, cols)
            parity = _parity(lines, first, count * height, cols).view(np.uint8)
            parity = parity.reshape(count, height, cols)
            mixed |= parity.min(axis=1) != parity.max(axis=1)
            states[top : top + count] = np.where(mixed, 1, parity[:, 0] * 2)
        return states


def _parity(rows: np.ndarray, starts: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) bools: odd number of crossings starting at or left of each cell, from
    crossings given as (row, first cell right of it); counted modulo 256, which keeps parity."""
    counts = np.bincount(rows * (width + 1) + starts, minlength=height * (width + 1))
    counts = counts.astype(np.uint8).reshape(height, width + 1)[:, :width]
    return (np.cumsum(counts, axis=1, dtype=np.uint8) & 1).view(bool)
