"""Turning the user's LEVELS ("0-5,7") or SCALES ("591657527.59;295828763.8") into level IDs."""
from __future__ import annotations

import math
import re
from typing import Optional

from ..errors import CacheError
from ..grid.tiling_scheme import TilingScheme

SCALE_RTOL = 1e-4
_SEPARATORS = re.compile(r"[;,\s]+")


def _valid_levels(scheme: TilingScheme) -> str:
    levels = scheme.levels
    return f"{levels[0]}-{levels[-1]}" if levels == list(range(levels[0], levels[-1] + 1)) else (
        ",".join(map(str, levels))
    )


def level_ranges(text: str, valid: str = "") -> list[tuple[int, int]]:
    """LEVELS text as exportTiles' `levels` ("0-5,7"; spaces and ';' also separate): the
    (first, last) ranges as written, never expanded (0-100000000 costs nothing)."""
    ranges = []
    for part in re.split(r"[,;\s]+", text.strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise CacheError(
                f"LEVELS: {part!r} is not a level or a range like 0-5.{valid}"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise CacheError(f"LEVELS: the range {part!r} runs backwards; write {last}-{first}.")
        ranges.append((first, last))
    return ranges


def level_ids(text: str, among: range = range(0, 100)) -> set[int]:
    """The levels of LEVELS text that lie `among` the possible ones (for the level picker)."""
    ranges = level_ranges(text)
    return {level for level in among if any(first <= level <= last for first, last in ranges)}


def compact_levels(levels: list[int]) -> str:
    """Sorted level IDs written back as LEVELS text, runs as ranges: [0,1,2,3,7] -> "0-3,7"."""
    parts: list[str] = []
    start = previous = None
    for level in levels + [None]:
        if level is not None and previous is not None and level == previous + 1:
            previous = level
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = level
    return ",".join(parts)


def parse_levels(text: str, scheme: TilingScheme) -> list[int]:
    """LEVELS text checked against the scheme's levels, range by range."""
    valid = f" Valid levels: {_valid_levels(scheme)}."
    ranges = level_ranges(text, valid)
    known = set(scheme.levels)
    wanted = {level for level in known if any(first <= level <= last for first, last in ranges)}
    unknown: list[str] = []
    for first, last in ranges:
        inside = sum(first <= level <= last for level in known)
        if inside < last - first + 1:
            missing = next(lv for lv in range(first, last + 1) if lv not in known)
            unknown.append(str(first) if first == last else f"{missing} (in {first}-{last})")
    if unknown:
        raise CacheError(
            f"LEVELS: level(s) {','.join(unknown[:10])} are not in the cache's tiling scheme."
            f"{valid}"
        )
    if not wanted:
        raise CacheError(f"LEVELS is empty.{valid}")
    return sorted(wanted)


def parse_scales(text: str) -> list[float]:
    values = []
    for part in _SEPARATORS.split(text.strip()):
        if not part:
            continue
        number = part.split(":", 1)[1] if part.startswith("1:") else part
        try:
            value = float(number)
        except ValueError:
            raise CacheError(
                f"SCALES: {part!r} is not a number. Give scale denominators separated by ';' "
                "or ',', e.g. 591657527.591555;295828763.795777."
            ) from None
        if not (value > 0 and math.isfinite(value)):
            raise CacheError(f"SCALES: {part!r} is not a positive scale.")
        values.append(value)
    return values


def match_scales(values: list[float], scheme: TilingScheme) -> list[int]:
    """Each scale to the LOD whose scale is within a relative 1e-4 of it."""
    levels = set()
    for value in values:
        best: Optional[int] = None
        for lod in scheme.lods:
            if math.isclose(lod.scale, value, rel_tol=SCALE_RTOL):
                best = lod.level
        if best is None:
            valid = "; ".join(f"{lod.scale:.6f} (level {lod.level})" for lod in scheme.lods)
            raise CacheError(
                f"SCALES: 1:{value:g} is not a scale of the cache's tiling scheme. "
                f"Valid scales: {valid}."
            )
        levels.add(best)
    if not levels:
        raise CacheError("SCALES is empty.")
    return sorted(levels)


def select_levels(levels_text: str, scales_text: str, scheme: TilingScheme) -> list[int]:
    """LEVELS or SCALES (not both); neither means every level of the scheme."""
    if levels_text.strip() and scales_text.strip():
        raise CacheError(
            "Give either SCALES or LEVELS, not both: they select the same thing in two ways."
        )
    if levels_text.strip():
        return parse_levels(levels_text, scheme)
    if scales_text.strip():
        return match_scales(parse_scales(scales_text), scheme)
    return list(scheme.levels)
