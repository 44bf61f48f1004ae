"""The rows of the dialog's level list: level, scale, resolution and tiles of the export area.

Counted from tile arithmetic alone (no tile is read), so the list can follow every change of the
extent or area of interest: exact for extents, and for a polygon exact up to COUNT_LIMIT tiles
of its bounding window and scaled by the polygon's share of the window above that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..grid.extent import Extent
from ..grid.tiling_scheme import TilingScheme
from .tile_selection import Selection

COUNT_LIMIT = 20_000


@dataclass(frozen=True)
class LevelRow:
    level: int
    scale: float
    resolution: float
    tiles: int  # tiles of the export area at this level
    exact: bool

    def tiles_text(self) -> str:
        return f"{'' if self.exact else '≈ '}{self.tiles:,}"


def level_rows(scheme: TilingScheme, data_extent: Optional[Extent],
               selection: Selection) -> list[LevelRow]:
    """One row per level of the scheme; the area is the selection's, else the data extent."""
    area = selection.bounds() or data_extent
    rows = []
    for lod in scheme.lods:
        window = scheme.tile_range(lod.level, area) if area is not None else None
        tiles, exact = (window.count, True) if window is not None else (0, area is not None)
        if window is not None and not selection.fills_window:
            if window.count <= COUNT_LIMIT:
                tiles = selection.count_in(lod.level, window)
            else:
                tiles, exact = round(window.count * selection.area_share()), False
        rows.append(LevelRow(lod.level, lod.scale, lod.resolution, tiles, exact))
    return rows
