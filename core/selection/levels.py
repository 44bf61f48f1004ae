"""Turning the user's levels ("0-5,7"), scales ("591657527.59;295828763.8") or resolutions (map
units per pixel, "156543.03;78271.52") into level IDs."""
from __future__ import annotations

import math
import re
from typing import Optional

from ..errors import CacheError, Concern
from ..grid.tiling_scheme import TilingScheme

SCALE_RTOL = 1e-4
_SEPARATORS = re.compile(r"[;,\s]+")


def _valid_levels(scheme: TilingScheme) -> str:
    levels = scheme.levels
    return f"{levels[0]}-{levels[-1]}" if levels == list(range(levels[0], levels[-1] + 1)) else (
        ",".join(map(str, levels))
    )


LevelRange = tuple[int, int]
SHOWN_UNKNOWN = 10  # levels listed when some asked for are not in the scheme


def level_ranges(text: str, valid: str = "") -> list[LevelRange]:
    """Level IDs and ranges as exportTiles' `levels`: "0-5,7" (spaces and ';' also separate),
    kept as (first, last) pairs: a range is never expanded, so "0-100000000" costs nothing."""
    ranges: list[LevelRange] = []
    for part in re.split(r"[,;\s]+", text.strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d{1,18})(?:-(\d{1,18}))?", part)
        if not match:
            raise CacheError(f"{part!r} is not a level or a range like 0-5.{valid}",
                             Concern.LEVELS)
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise CacheError(f"The range {part!r} runs backwards; write {last}-{first}.",
                             Concern.LEVELS)
        ranges.append((first, last))
    return ranges


def in_ranges(level: int, ranges: list[LevelRange]) -> bool:
    return any(first <= level <= last for first, last in ranges)


def ranges_text(ranges: list[LevelRange]) -> str:
    """Ranges written back as level text: [(0, 3), (7, 7)] -> "0-3,7"."""
    return ",".join(str(first) if first == last else f"{first}-{last}"
                    for first, last in sorted(ranges))


def compact_levels(levels: list[int]) -> str:
    """Sorted level IDs written back as level text, runs as ranges: [0,1,2,3,7] -> "0-3,7"."""
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
    """Level text checked against the scheme's levels (ranges compared, not expanded)."""
    ranges = level_ranges(text, f" Valid levels: {_valid_levels(scheme)}.")
    if not ranges:
        raise CacheError(f"No level given. Valid levels: {_valid_levels(scheme)}.", Concern.LEVELS)
    known = set(scheme.levels)
    unknown: list[int] = []
    for first, last in sorted(ranges):
        inside = sum(1 for level in known if first <= level <= last)
        if inside < last - first + 1:
            level = first
            while level <= last and len(unknown) < SHOWN_UNKNOWN:
                if level not in known and level not in unknown:
                    unknown.append(level)
                level += 1
    if unknown:
        more = ",…" if len(unknown) == SHOWN_UNKNOWN else ""
        raise CacheError(
            f"level(s) {','.join(map(str, sorted(unknown)))}{more} are not in the cache's tiling "
            f"scheme. Valid levels: {_valid_levels(scheme)}.", Concern.LEVELS)
    return [level for level in scheme.levels if in_ranges(level, ranges)]


def parse_scales(text: str) -> list[float]:
    return _parse_numbers(text, "scale denominators", "591657527.591555;295828763.795777",
                          Concern.SCALES)


def parse_resolutions(text: str) -> list[float]:
    return _parse_numbers(text, "resolutions (map units per pixel)",
                          "156543.033928;78271.516964", Concern.RESOLUTIONS)


def _parse_numbers(text: str, what: str, example: str, concern: Concern) -> list[float]:
    values = []
    for part in _SEPARATORS.split(text.strip()):
        if not part:
            continue
        number = part.split(":", 1)[1] if part.startswith("1:") else part
        try:
            value = float(number)
        except ValueError:
            raise CacheError(
                f"{part!r} is not a number. Give {what} separated by ';' or ',', e.g. "
                f"{example}.", concern) from None
        if not (value > 0 and math.isfinite(value)):
            raise CacheError(f"{part!r} is not a positive number.", concern)
        values.append(value)
    return values


def match_resolutions(values: list[float], scheme: TilingScheme) -> list[int]:
    """Each resolution to the LOD whose resolution is within a relative 1e-4 of it."""
    levels = set()
    for value in values:
        matches = [lod.level for lod in scheme.lods
                   if math.isclose(lod.resolution, value, rel_tol=SCALE_RTOL)]
        if not matches:
            valid = "; ".join(f"{lod.resolution:.6f} (level {lod.level})" for lod in scheme.lods)
            raise CacheError(
                f"{value:g} map units per pixel is not a resolution of the cache's tiling "
                f"scheme. Valid resolutions: {valid}.", Concern.RESOLUTIONS)
        levels.add(matches[-1])
    if not levels:
        raise CacheError("No resolution given.", Concern.RESOLUTIONS)
    return sorted(levels)


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
                f"1:{value:g} is not a scale of the cache's tiling scheme. "
                f"Valid scales: {valid}.", Concern.SCALES
            )
        levels.add(best)
    if not levels:
        raise CacheError("No scale given.", Concern.SCALES)
    return sorted(levels)


def select_levels(levels_text: str, scales_text: str, scheme: TilingScheme,
                  resolutions_text: str = "") -> list[int]:
    """Levels, scales or resolutions (one of them); none means every level of the scheme."""
    if levels_text.strip() and scales_text.strip():
        raise CacheError(
            "Give either scales or levels, not both: they select the same thing in two ways.",
            Concern.LEVELS)
    if resolutions_text.strip():
        if levels_text.strip() or scales_text.strip():
            raise CacheError("Give resolutions, scales or levels, only one of them: they "
                             "select the same thing in different ways.", Concern.RESOLUTIONS)
        return match_resolutions(parse_resolutions(resolutions_text), scheme)
    if levels_text.strip():
        return parse_levels(levels_text, scheme)
    if scales_text.strip():
        return match_scales(parse_scales(scales_text), scheme)
    return list(scheme.levels)
