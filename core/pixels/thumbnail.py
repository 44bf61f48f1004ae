"""A package thumbnail drawn from the exported tiles (a 200x133 RGB PNG, as ArcGIS writes), as
the package holds them: clipped, converted or merged."""
from __future__ import annotations

import io
from typing import Callable, Optional

from PIL import Image

from ..formats.records import RecordFileReader
from ..grid.tiling_scheme import TileRange

# (level, bundle row, bundle column) -> a reader of the bundle as written, None when there is none
OpenBundle = Callable[[int, int, int], Optional[RecordFileReader]]

SIZE = (200, 133)
MAX_TILES = 4  # per side of the mosaic


def draw_thumbnail(open_bundle: OpenBundle, ranges: dict[int, TileRange],
                   tile_size: tuple[int, int]) -> bytes:
    """Mosaic up to 4x4 written tiles of the first level, coarse to fine, whose exported tiles
    (`ranges`, per level) span two or more tiles."""
    chosen: Optional[int] = None
    for level in sorted(ranges):
        chosen = level
        if ranges[level].count > 1:
            break
    canvas = Image.new("RGB", SIZE, "white")
    if chosen is not None:
        mosaic = _mosaic(open_bundle, chosen, ranges[chosen], tile_size)
        canvas.paste(mosaic, (0, 0))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def _mosaic(open_bundle: OpenBundle, level: int, tiles: TileRange, tile_size) -> Image.Image:
    """The 4x4 (at most) tiles around the middle of the exported range."""
    mid_row, mid_col = (tiles.row_min + tiles.row_max) // 2, (tiles.col_min + tiles.col_max) // 2
    row0 = max(tiles.row_min, min(mid_row - MAX_TILES // 2, tiles.row_max - MAX_TILES + 1))
    col0 = max(tiles.col_min, min(mid_col - MAX_TILES // 2, tiles.col_max - MAX_TILES + 1))
    window = TileRange(row0, min(tiles.row_max, row0 + MAX_TILES - 1),
                       col0, min(tiles.col_max, col0 + MAX_TILES - 1))
    width, height = tile_size
    mosaic = Image.new("RGBA", ((window.col_max - col0 + 1) * width,
                                (window.row_max - row0 + 1) * height), (255, 255, 255, 255))
    for brow, bcol in window.bundles():
        reader = open_bundle(level, brow, bcol)
        if reader is None:
            continue
        for row, col in reader.present():
            if window.contains(row, col):
                try:
                    tile = Image.open(io.BytesIO(reader.read(row, col))).convert("RGBA")
                except OSError:
                    continue  # an undecodable tile leaves a white square, not a failed export
                mosaic.alpha_composite(tile, ((col - col0) * width, (row - row0) * height))
        reader.close()
    mosaic.thumbnail(SIZE)
    framed = Image.new("RGB", SIZE, "white")
    framed.paste(mosaic.convert("RGB"), ((SIZE[0] - mosaic.width) // 2,
                                         (SIZE[1] - mosaic.height) // 2))
    return framed
