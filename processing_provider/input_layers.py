"""INPUT_SERVICE may name a tiled layer of the project: its service URL (and authentication)
are read here, on the main thread, before the algorithm runs (qgis-notes §5, §7)."""
from __future__ import annotations

from dataclasses import dataclass

from qgis.core import (
    QgsDataSourceUri,
    QgsProcessingException,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterLayer,
)

from ..core.errors import CacheError
from ..core.sources.service_url import parse_service_url
from .translation import tr


@dataclass(frozen=True)
class ResolvedInput:
    location: str  # a path or a service URL
    authcfg: str = ""


def resolve_input(text: str, context) -> ResolvedInput:
    """A path or URL as typed, or the service/file behind a project layer (id or name)."""
    if not text:
        raise QgsProcessingException(tr(
            "INPUT_SERVICE is empty: give a cache folder, a .tpk/.tpkx, a MapServer or "
            "ImageServer URL, or a tiled layer of the project."))
    if "://" in text or "/" in text or "\\\\" in text:
        return ResolvedInput(text)
    layer = QgsProcessingUtils.mapLayerFromString(text, context, False)
    if not isinstance(layer, QgsRasterLayer):
        return ResolvedInput(text)
    return _from_layer(layer)


def _from_layer(layer: QgsRasterLayer) -> ResolvedInput:
    provider = layer.providerType()
    source = layer.source()
    if provider == "arcgismapserver":
        uri = QgsDataSourceUri(source)
        return ResolvedInput(_service(uri.param("url"), layer), uri.authConfigId() or
                             uri.param("authcfg"))
    if provider == "wms":
        parts = QgsProviderRegistry.instance().decodeUri("wms", source)
        if parts.get("type") == "xyz":
            return ResolvedInput(_service(parts.get("url", ""), layer),
                                 parts.get("authcfg", "") or "")
        raise QgsProcessingException(tr(
            "The layer {!r} is a WMS/WMTS layer: only ArcGIS MapServer layers, XYZ layers of "
            "ArcGIS tile services and Esri cache files can be exported.").format(layer.name()))
    if provider == "gdal":
        path = QgsProviderRegistry.instance().decodeUri("gdal", source).get("path", source)
        return ResolvedInput(path)
    raise QgsProcessingException(tr(
        "The layer {!r} ({}) is not an ArcGIS tile service or Esri cache.").format(
        layer.name(), provider))


def _service(url: str, layer: QgsRasterLayer) -> str:
    try:
        parse_service_url(url)
    except CacheError:
        raise QgsProcessingException(tr(
            "The layer {!r} does not come from an ArcGIS REST tile service (its URL has no "
            "…/MapServer or …/ImageServer, e.g. an XYZ URL ending in /MapServer/tile/{{z}}/"
            "{{y}}/{{x}}), so its tiles cannot be exported.").format(layer.name())) from None
    return url
