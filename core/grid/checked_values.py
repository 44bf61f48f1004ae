"""Numbers read from a cache's description files (conf.xml, conf.cdi, root.json,
mapserver.json, a service's JSON), checked before anything is computed or written from them:
finite, of the right type, in range, with a message naming the file and the field. A NaN tile
size or a LevelID of 1e400 would otherwise surface as a traceback, or end up in the output."""
from __future__ import annotations

import math
from typing import Union

from ..errors import CacheError
from .tiling_scheme import Lod

MAX_LEVEL = 99  # LevelIDs of real caches stay below 32
MAX_TILE_PIXELS = 4096  # tile width or height (Esri: 128 to 1024)
MAX_COORDINATE = 1e12  # origins and extents, in any CRS's units
MAX_SCALE = 1e15


def number(value, what: str, field: str, low: float, high: float,
           integer: bool = False) -> Union[int, float]:
    """`value` (a JSON number, or the text of an XML element or JSON string) as a float, or an
    int with `integer`, within [low, high]; else a CacheError naming `what` and `field`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CacheError(f"{what}: {field} is not a number ({value!r}).")
    try:
        result = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise CacheError(f"{what}: {field} is not a number ({str(value)[:40]!r}).") from None
    if not math.isfinite(result):
        raise CacheError(f"{what}: {field} is not a finite number ({str(value)[:40]!r}).")
    if not low <= result <= high:
        raise CacheError(
            f"{what}: {field} is {str(value)[:40]}, outside the range {low:g} to {high:g}.")
    if integer:
        if not result.is_integer():
            raise CacheError(f"{what}: {field} is {str(value)[:40]}, not a whole number.")
        return int(result)
    return result


def level_id(value, what: str) -> int:
    return number(value, what, "LevelID", 0, MAX_LEVEL, integer=True)


def resolution(value, what: str, level: int) -> float:
    return number(value, what, f"the resolution of level {level}", 1e-12, MAX_COORDINATE)


def scale(value, what: str, level: int) -> float:
    return number(value, what, f"the scale of level {level}", 0, MAX_SCALE)


def coordinate(value, what: str, field: str) -> float:
    return number(value, what, field, -MAX_COORDINATE, MAX_COORDINATE)


def tile_pixels(value, what: str, field: str) -> int:
    return number(value, what, field, 1, MAX_TILE_PIXELS, integer=True)


def dpi(value, what: str) -> int:
    return round(number(value, what, "DPI", 1, 10000))


def quality(value, what: str) -> int:
    return round(number(value, what, "CompressionQuality", 0, 100))


def checked_lods(lods: list[Lod], what: str) -> tuple[Lod, ...]:
    """The levels sorted, each LevelID once."""
    ordered = sorted(lods, key=lambda lod: lod.level)
    for before, after in zip(ordered, ordered[1:]):
        if before.level == after.level:
            raise CacheError(f"{what}: LevelID {after.level} is listed twice.")
    return tuple(ordered)
