"""An area of interest as a valid polygon in the cache's CRS, wrapped into the cache's world.

Caches that cover the whole world east-west (Web Mercator, geographic with the origin at -180)
have no tiles beyond the antimeridian; parts of a polygon drawn there (x > 20037508 m or
longitude > 180) are the same places one world-width west, so they are cut and moved back.
"""
from __future__ import annotations

import math
from typing import Optional

from shapely import affinity, wkb
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.ops import unary_union

from ..errors import CacheError
from ..grid.tiling_scheme import TilingScheme

MERCATOR_MAX_LATITUDE = 85.0511287798066
HUGE = 1e12


def load_polygon(polygon_wkb: bytes):
    """A valid Polygon or MultiPolygon (overlapping parts merged) from WKB."""
    try:
        geometry = wkb.loads(bytes(polygon_wkb))
    except Exception as exc:  # shapely raises several types across 1.8 and 2.x
        raise CacheError(f"The area of interest is not a valid geometry ({exc}).") from exc
    if geometry.geom_type == "GeometryCollection":
        geometry = unary_union([g for g in geometry.geoms if isinstance(g, (Polygon,
                                                                                MultiPolygon))])
    if geometry.is_empty or geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise CacheError(
            f"The area of interest must be a polygon; got {geometry.geom_type or 'nothing'}."
        )
    if not geometry.is_valid:
        geometry = geometry.buffer(0)
    if geometry.is_empty:
        raise CacheError("The area of interest has no area (its polygons are degenerate).")
    return geometry


def wrap_into_world(geometry, west: float, width: float):
    """Parts of `geometry` east or west of [west, west + width] moved by whole world-widths."""
    xmin, _, xmax, _ = geometry.bounds
    if xmin >= west and xmax <= west + width:
        return geometry
    pieces = []
    first = math.floor((xmin - west) / width)
    last = math.floor((xmax - west) / width)
    for k in range(first, last + 1):
        window = box(west + k * width, -HUGE, west + (k + 1) * width, HUGE)
        piece = geometry.intersection(window)
        if not piece.is_empty:
            pieces.append(affinity.translate(piece, xoff=-k * width))
    merged = unary_union(pieces)
    polygons = [g for g in getattr(merged, "geoms", [merged]) if isinstance(g, Polygon)]
    polygons += [p for g in getattr(merged, "geoms", []) if isinstance(g, MultiPolygon)
                 for p in g.geoms]
    if not polygons:
        return Polygon()
    return MultiPolygon(polygons) if len(polygons) > 1 else polygons[0]


def unwrap_longitudes(geometry, width: float = 360.0):
    """Rings made continuous where consecutive vertices jump by more than half a world (a ring
    crossing the antimeridian after a transformation wrapped its longitudes)."""
    def ring(coords, near: Optional[float]) -> list[tuple[float, float]]:
        out, shift = [], 0.0
        previous = None
        for x, y, *_ in coords:
            if previous is not None and abs(x + shift - previous) > width / 2:
                shift -= math.copysign(width, x + shift - previous)
            previous = x + shift
            out.append((previous, y))
        if near is not None:  # a hole goes where its outer ring went
            k = round((near - out[0][0]) / width)
            out = [(x + k * width, y) for x, y in out]
        return out

    polygons = []
    for polygon in getattr(geometry, "geoms", [geometry]):
        shell = ring(polygon.exterior.coords, None)
        holes = [ring(hole.coords, shell[0][0]) for hole in polygon.interiors]
        polygons.append(Polygon(shell, holes))
    return MultiPolygon(polygons) if len(polygons) > 1 else polygons[0]


def lonlat_in_world(polygon_wkb: bytes, wrapped: bool, mercator: bool) -> bytes:
    """A lon/lat polygon cut and moved into -180..180 (first made continuous when `wrapped`:
    a transformation wrapped its longitudes vertex by vertex), without the poles for Web
    Mercator, where they are infinitely far away."""
    geometry = wkb.loads(polygon_wkb)
    if wrapped:  # first: a ring wrapped vertex by vertex crosses itself, and buffer(0) of
        geometry = unwrap_longitudes(geometry)  # that would drop whole parts of it
    if not geometry.is_valid:
        geometry = geometry.buffer(0)
    geometry = wrap_into_world(geometry, -180.0, 360.0)
    if mercator:
        geometry = geometry.intersection(
            box(-180.0, -MERCATOR_MAX_LATITUDE, 180.0, MERCATOR_MAX_LATITUDE))
    return geometry.wkb


def aoi_in_cache(polygon_wkb: bytes, scheme: TilingScheme):
    """The area of interest, valid and inside the cache's world where the cache wraps."""
    geometry = load_polygon(polygon_wkb)
    span = scheme.world_span()
    if span is not None:
        geometry = wrap_into_world(geometry, *span)
    return geometry
