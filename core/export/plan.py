"""Planning an export: which bundles of a cache hold selected tiles."""
from __future__ import annotations

from ..selection.tile_selection import Coverage, Selection
from ..sources.source import CacheSource


def plan_bundles(
    cache: CacheSource, levels: list[int], selection: Selection
) -> list[tuple[int, int, int]]:
    """The cache's bundles (level, row, col) that hold selected tiles, level by level."""
    tasks = []
    present = cache.layout.levels()
    for level in levels:
        if level not in present:
            continue
        for brow, bcol in cache.layout.bundle_keys(level, selection.window(level)):
            if selection.bundle_coverage(level, brow, bcol) is not Coverage.NONE:
                tasks.append((level, brow, bcol))
    return tasks
