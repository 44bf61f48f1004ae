"""The parameters of one REST `exportTiles` / `estimateExportTilesSize` request, as ArcGIS clients
send them (esri-tile-formats, REST): levels by LevelID, Scale or Resolution, the export extent as
an envelope with its spatial reference, the area of interest as a polygon feature set, and the
package's storage format.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from shapely import wkb
from shapely.geometry import MultiPolygon, Polygon

from ..grid.extent import Extent
from ..grid.tiling_scheme import StorageFormat, TilingScheme

EXPORT_BY = ("LevelID", "Scale", "Resolution")
STORAGE_TYPES = {
    StorageFormat.COMPACT: "esriMapCacheStorageModeCompact",  # .tpk
    StorageFormat.COMPACT_V2: "esriMapCacheStorageModeCompactV2",  # .tpkx
}


@dataclass(frozen=True)
class ExportTilesRequest:
    """What one server job is asked for; `query()` gives the REST parameters (without `f` and
    without the token, which travels as a header like every other request's)."""

    levels: tuple[int, ...]
    extent: Optional[Extent]  # in the cache's CRS; None: the service's default
    polygon_wkb: Optional[bytes]  # the area of interest in the cache's CRS
    storage: StorageFormat = StorageFormat.COMPACT_V2
    export_by: str = "LevelID"
    quality: Optional[int] = None
    optimize: bool = False

    def query(self, scheme: TilingScheme, package: bool = True) -> dict[str, str]:
        sr = scheme.spatial_reference.to_json()
        query = {
            "tilePackage": "true" if package else "false",
            "exportBy": self.export_by,
            "levels": ",".join(_level_value(scheme, level, self.export_by)
                               for level in self.levels),
            "storageFormatType": STORAGE_TYPES[self.storage],
        }
        if self.extent is not None:
            query["exportExtent"] = json.dumps({**self.extent.as_dict(), "spatialReference": sr},
                                               separators=(",", ":"))
        if self.polygon_wkb is not None:
            query["areaOfInterest"] = json.dumps(area_of_interest(self.polygon_wkb, sr),
                                                 separators=(",", ":"))
        if self.optimize:
            query["optimizeTilesForSize"] = "true"
            if self.quality is not None:
                query["compressionQuality"] = str(self.quality)
        return query


def _level_value(scheme: TilingScheme, level: int, export_by: str) -> str:
    lod = scheme.lod(level)
    if export_by == "Scale":
        return repr(lod.scale)
    if export_by == "Resolution":
        return repr(lod.resolution)
    return str(level)


def area_of_interest(polygon_wkb: bytes, sr: dict) -> dict:
    """A polygon feature set (the REST GPFeatureRecordSetLayer form) of a (multi)polygon."""
    shape = wkb.loads(polygon_wkb)
    polygons = list(shape.geoms) if isinstance(shape, MultiPolygon) else [shape]
    rings = []
    for polygon in polygons:
        if not isinstance(polygon, Polygon) or polygon.is_empty:
            continue
        # Esri rings: outer rings clockwise, holes counter-clockwise
        rings.append(_ring(polygon.exterior.coords, clockwise=True))
        rings.extend(_ring(hole.coords, clockwise=False) for hole in polygon.interiors)
    return {
        "geometryType": "esriGeometryPolygon",
        "spatialReference": sr,
        "fields": [],
        "features": [{"geometry": {"rings": rings, "spatialReference": sr}, "attributes": {}}],
    }


def _ring(coords, clockwise: bool) -> list[list[float]]:
    points = [[x, y] for x, y, *_ in coords]
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    if (area2 < 0) != clockwise:  # shoelace: negative area = clockwise
        points.reverse()
    return points
