"""A package thumbnail drawn from the exported tiles (a 200x133 RGB PNG, as ArcGIS writes)."""
from __future__ import annotations

import io
from typing import Callable, Optional

from PIL import Image

from .cache_storage import Layout

SIZE = (200, 133)
MAX_TILES = 4  # per side of the mosaic


def draw_thumbnail(
    layout: Layout,
    levels: list[int],
    tile_size: tuple[int, int],
    selected: Callable[[int, int, int], bool],
) -> bytes:
    """Mosaic up to 4x4 exported tiles (those `selected`) of the first level, coarse to fine,
    that spans two or more tiles."""
    chosen: Optional[tuple[int, list[tuple[int, int]]]] = None
    for level in sorted(levels):
        present = []
        for key in layout.bundle_keys(level, None):
            reader = layout.open_bundle(level, *key)
            if reader is not None:
                present.extend(k for k in reader.present() if selected(level, *k))
                reader.close()
        if present:
            chosen = (level, present)
            rows = {r for r, _ in present}
            cols = {c for _, c in present}
            if len(rows) > 1 or len(cols) > 1:
                break
    canvas = Image.new("RGB", SIZE, "white")
    if chosen is not None:
        level, present = chosen
        canvas.paste(_mosaic(layout, level, present, tile_size), (0, 0))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def _mosaic(layout: Layout, level: int, present: list[tuple[int, int]], tile_size) -> Image.Image:
    rows = sorted({r for r, _ in present})
    cols = sorted({c for _, c in present})
    mid_row, mid_col = rows[len(rows) // 2], cols[len(cols) // 2]
    row0 = max(rows[0], min(mid_row - MAX_TILES // 2, rows[-1] - MAX_TILES + 1))
    col0 = max(cols[0], min(mid_col - MAX_TILES // 2, cols[-1] - MAX_TILES + 1))
    nrows = min(MAX_TILES, rows[-1] - row0 + 1)
    ncols = min(MAX_TILES, cols[-1] - col0 + 1)
    width, height = tile_size
    mosaic = Image.new("RGBA", (ncols * width, nrows * height), (255, 255, 255, 255))
    wanted = {(r, c) for r, c in present if 0 <= r - row0 < nrows and 0 <= c - col0 < ncols}
    for brow, bcol in {(r - r % 128, c - c % 128) for r, c in wanted}:
        reader = layout.open_bundle(level, brow, bcol)
        if reader is None:
            continue
        for row, col in reader.present():
            if (row, col) in wanted:
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
