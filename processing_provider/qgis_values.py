"""QGIS values -> plain engine values: the cache's CRS, extents and AOI geometry in that CRS."""
from __future__ import annotations

from typing import Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeatureRequest,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeatureSource,
    QgsProject,
    QgsRectangle,
    QgsWkbTypes,
)

from ..core.grid.extent import Extent
from ..core.grid.spatial_reference import SpatialReference
from ..core.selection.aoi import lonlat_in_world
from ..qgis_compat import POLYGON_GEOMETRY
from .translation import tr

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")


def cache_crs(sr: SpatialReference) -> QgsCoordinateReferenceSystem:
    """The cache's CRS: latest WKID, then WKID (EPSG, else ESRI authority), then its WKT."""
    for code in (sr.latest_wkid, sr.wkid):
        if code is None:
            continue
        if sr.is_web_mercator:
            return QgsCoordinateReferenceSystem("EPSG:3857")
        for authority in ("EPSG", "ESRI"):
            crs = QgsCoordinateReferenceSystem(f"{authority}:{code}")
            if crs.isValid():
                return crs
    if sr.wkt:
        crs = QgsCoordinateReferenceSystem.fromWkt(sr.wkt)
        if crs.isValid():
            return crs
    raise QgsProcessingException(tr(
        "The cache's coordinate system ({}) is not known to QGIS, so an extent or area of "
        "interest cannot be converted into it. Export without EXPORT_EXTENT and "
        "AREA_OF_INTEREST, or fix the cache's WKT.").format(sr.describe()))


def to_extent(rect: QgsRectangle) -> Extent:
    return Extent(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())


def aoi_wkb(source: QgsProcessingFeatureSource, crs: QgsCoordinateReferenceSystem,
            context, sr: SpatialReference, world: bool) -> bytes:
    """The union of the AOI's polygons, transformed by QGIS into the cache's CRS, as WKB.

    For a cache that wraps around the world (`world`), polygons in another CRS go through
    longitude/latitude, where parts crossing the antimeridian are cut and brought into
    -180..180 before QGIS projects them (a direct transformation would wrap each vertex on its
    own and turn such a polygon inside out).
    """
    if QgsWkbTypes.geometryType(source.wkbType()) != POLYGON_GEOMETRY:
        raise QgsProcessingException(tr(
            "AREA_OF_INTEREST must be a polygon layer; the layer given has {} geometries.")
            .format(QgsWkbTypes.displayString(source.wkbType())))
    via_lonlat = world and source.sourceCrs() != crs
    request = QgsFeatureRequest().setDestinationCrs(
        WGS84 if via_lonlat else crs, context.transformContext())
    request.setNoAttributes()
    parts = []
    try:
        for feature in source.getFeatures(request):
            geometry = feature.geometry()
            if geometry.isNull() or geometry.isEmpty():
                continue
            if QgsWkbTypes.isCurvedType(geometry.wkbType()):
                geometry = QgsGeometry(geometry.constGet().segmentize())
            if via_lonlat:
                geometry = _lonlat_to_cache(geometry, not source.sourceCrs().isGeographic(),
                                            crs, sr, context)
            if not geometry.isEmpty():
                parts.append(geometry)
    except QgsCsException as exc:
        raise QgsProcessingException(tr(
            "The area of interest cannot be transformed into the cache's CRS ({}).").format(
            exc)) from exc
    if not parts:
        raise QgsProcessingException(tr("AREA_OF_INTEREST has no polygon to export."))
    union = QgsGeometry.unaryUnion(parts)
    if union.isNull() or union.isEmpty():
        raise QgsProcessingException(tr("AREA_OF_INTEREST has no polygon area to export."))
    return bytes(union.asWkb())


def _lonlat_to_cache(geometry: QgsGeometry, projected_source: bool,
                     crs: QgsCoordinateReferenceSystem, sr: SpatialReference,
                     context) -> QgsGeometry:
    result = QgsGeometry()
    result.fromWkb(lonlat_in_world(bytes(geometry.asWkb()), projected_source,
                                   sr.is_web_mercator))
    if not result.isEmpty():
        result.transform(QgsCoordinateTransform(WGS84, crs, context.transformContext()))
    return result


def lonlat_extent(extent: Optional[Extent], crs: QgsCoordinateReferenceSystem) -> Optional[Extent]:
    """Longitude/latitude bounds for package metadata; None when QGIS cannot transform them."""
    if extent is None:
        return None
    transform = QgsCoordinateTransform(crs, WGS84, QgsProject.instance())
    try:
        rect = transform.transformBoundingBox(
            QgsRectangle(extent.xmin, extent.ymin, extent.xmax, extent.ymax)
        )
    except QgsCsException:
        return None
    return to_extent(rect) if rect.isFinite() and not rect.isEmpty() else None
