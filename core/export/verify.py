"""Verification after writing (issue 13, item 7): the written bundles are re-read through the
engine's readers — each index parsed, each indexed tile's record located inside its file —
and the tiles found are counted per level against what the export wrote.

A new target must hold exactly the tiles written; a merged target at least those (its own tiles
outside the export stay in the same bundles).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import CacheError
from ..sources.local_cache import open_cache
from .bundle_result import BundleResult


def verify_output(path: Path, results: list[BundleResult], exact: bool) -> str:
    """Re-read the bundles that received tiles; the line the result shows, or CacheError."""
    written = [r for r in results if r.tiles]
    found: Counter = Counter()
    expected: Counter = Counter()
    output = open_cache(str(path))
    try:
        layout = output.layout
        for r in written:
            reader = layout.open_bundle(r.level, r.brow, r.bcol)
            count = 0
            if reader is not None:
                try:
                    present = reader.present()
                    bad = _bad_records(reader, present)
                    if bad:
                        raise CacheError(
                            f"Verification failed: {bad} index entries of bundle "
                            f"R{r.brow:04x}C{r.bcol:04x} at level {r.level} of {str(path)!r} do "
                            "not point at their tile's record. Export again."
                        )
                    count = len(present)
                finally:
                    reader.close()
            if count < r.tiles or (exact and count != r.tiles):
                raise CacheError(
                    f"Verification failed: bundle R{r.brow:04x}C{r.bcol:04x} at level {r.level} "
                    f"of {str(path)!r} holds {count} tiles where the export wrote {r.tiles}. "
                    "The disk or another program may have changed it; export again."
                )
            found[r.level] += count
            expected[r.level] += r.tiles
    finally:
        output.close()
    levels = ", ".join(f"L{level}: {found[level]}" for level in sorted(found))
    return (f"Verified: {len(written)} bundles re-read, tiles per level "
            f"{'as written' if exact else 'at least as written'} ({levels or 'none'}).")


def _bad_records(reader, present: list[tuple[int, int]]) -> int:
    """Index entries whose record's u32 size prefix is missing or disagrees (0 for exploded
    tiles, which have no index)."""
    try:
        located = np.array([reader.locate(row, col) for row, col in present],
                           dtype=np.int64).reshape(-1, 2)
    except NotImplementedError:
        return 0
    offsets, sizes = located[:, 0], located[:, 1]
    inside = offsets >= 4
    try:
        prefixes = reader.size_prefixes(offsets[inside])
    except CacheError:
        return len(present)
    return int((~inside).sum() + (prefixes != sizes[inside]).sum())
