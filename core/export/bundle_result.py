"""What the work on one bundle gave: a plain value, summed up by the exporter, recorded in the
checkpoint, checked against the written output."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..grid.tiling_scheme import TileRange


@dataclass
class BundleResult:
    level: int
    brow: int
    bcol: int
    tiles: int = 0  # tiles exported from the source
    bytes: int = 0  # their bytes
    tile_range: Optional[TileRange] = None  # their bounds
    touched: bool = False  # the target's bundle was written (or dropped): not to be copied
    removals: list = field(default_factory=list)  # files to delete when the export commits
    damaged: dict = field(default_factory=dict)  # (row, col) -> what is wrong: left out
