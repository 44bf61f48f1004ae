"""The algorithm's parameters read as the engine's values: the input (a cache or a service),
the levels, the selection, the token, the download limits and the tile options. The algorithm
and the dialog's level list both read them here, each with its own parameters and context."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsProcessingParameters,
)
from qgis.PyQt.QtGui import QColor

from ..core.errors import CacheError, Concern
from ..core.export.estimate import area_tile_count
from ..core.grid.tiling_scheme import TilingScheme
from ..core.selection.levels import select_levels
from ..core.selection.tile_selection import ExtentSelection, PolygonSelection, Selection
from ..core.sources.http_client import FetchPolicy
from ..core.sources.local_cache import open_cache
from ..core.sources.service import open_service
from ..core.sources.service_url import is_service_url
from ..core.sources.source import CacheSource
from .input_layers import ResolvedInput
from .qgis_network import QgisTransport
from .qgis_values import aoi_wkb, cache_crs, lonlat_extent, to_extent
from .secret_parameter import ENV_PREFIX
from .translation import tr

# TILE_FORMAT options; "keep" = the input's format (the existing target's when merging)
TILE_FORMATS = ("keep", "PNG", "PNG8", "JPEG", "MIXED", "PNG24", "PNG32")


class ExportParameters:
    """One run's (or one dialog state's) parameter values, read through the parameters'
    definitions (the algorithm's, or the dialog fields' own: the dialog needs no algorithm).
    A parameter without a definition reads as empty."""

    def __init__(self, definitions: Mapping[str, QgsProcessingParameterDefinition],
                 parameters: dict, context: QgsProcessingContext):
        self._definitions, self._parameters, self._context = definitions, parameters, context

    def _read(self, how, name: str, *more):
        return how(self._definitions.get(name), self._parameters, self._context, *more)

    def _string(self, name: str) -> str:
        return self._read(QgsProcessingParameters.parameterAsString, name)

    def _bool(self, name: str) -> bool:
        return self._read(QgsProcessingParameters.parameterAsBool, name)

    def _int(self, name: str) -> int:
        return self._read(QgsProcessingParameters.parameterAsInt, name)

    def _double(self, name: str) -> float:
        return self._read(QgsProcessingParameters.parameterAsDouble, name)

    def _enum(self, name: str) -> int:
        return self._read(QgsProcessingParameters.parameterAsEnum, name)

    def _color(self, name: str) -> QColor:
        return self._read(QgsProcessingParameters.parameterAsColor, name)

    def _source(self, name: str):
        return self._read(QgsProcessingParameters.parameterAsSource, name)

    def _extent(self, name: str, crs):
        return self._read(QgsProcessingParameters.parameterAsExtent, name, crs)

    def open_input(self, resolved: ResolvedInput, workers: int
                   ) -> tuple[CacheSource, Optional[QgisTransport]]:
        """The input as a cache source, and the transport that reads it when it is a service
        (the caller closes both)."""
        if not is_service_url(resolved.location):
            return open_cache(resolved.location), None
        transport = QgisTransport(
            workers, resolved.authcfg or self._string("AUTHCFG") or "")
        policy = FetchPolicy(
            requests_per_second=self._double("MAX_REQUESTS_PER_SECOND"),
            max_tile_bytes=round((self._double("MAX_TILE_SIZE_MB")
                                  or FetchPolicy.max_tile_bytes / (1 << 20)) * (1 << 20)))
        try:
            return open_service(resolved.location, transport, self.token(), policy), transport
        except BaseException:
            transport.close()
            raise

    def levels(self, scheme: TilingScheme) -> list[int]:
        """LEVELS, SCALES or RESOLUTIONS as the cache's level IDs (all levels when none is
        given)."""
        levels = self._string("LEVELS") or ""
        scales = self._string("SCALES") or ""
        if levels.strip() and scales.strip():
            raise QgsProcessingException(tr(
                "Give either SCALES or LEVELS, not both: they select the same thing in two "
                "ways."))
        return select_levels(levels, scales, scheme, self._string("RESOLUTIONS") or "")

    def selection(self, feedback, scheme: TilingScheme) -> Selection:
        """EXPORT_EXTENT or AREA_OF_INTEREST in the cache's CRS (also for the level list)."""
        has_aoi = self._parameters.get("AREA_OF_INTEREST") not in (None, "")
        has_extent = self._parameters.get("EXPORT_EXTENT") not in (None, "")
        if not has_aoi and not has_extent:
            return Selection()
        crs = cache_crs(scheme.spatial_reference)
        if has_aoi:
            source = self._source("AREA_OF_INTEREST")
            if source is None:
                raise QgsProcessingException(tr(
                    "AREA_OF_INTEREST could not be opened as a vector layer."))
            if has_extent:
                feedback.pushWarning(tr(
                    "Both AREA_OF_INTEREST and EXPORT_EXTENT are set: the area of interest is "
                    "used and the extent ignored."))
            clip = not self._bool("DISABLE_CLIPPING")
            polygon = aoi_wkb(source, crs, self._context, scheme.spatial_reference,
                              scheme.world_span() is not None)
            return PolygonSelection(scheme, polygon, clip)
        rect = self._extent("EXPORT_EXTENT", crs)
        if rect.isNull() or rect.isEmpty():
            raise QgsProcessingException(tr(
                "EXPORT_EXTENT is empty or could not be transformed into the cache's CRS."))
        return ExtentSelection(scheme, to_extent(rect))

    def token(self) -> Optional[str]:
        """TOKEN as given, or read from the environment variable NAME for `env:NAME` (so that
        it does not appear on a qgis_process command line, which qgis_process echoes)."""
        text = self._string("TOKEN").strip()
        if not text.startswith(ENV_PREFIX):
            return text or None
        name = text[len(ENV_PREFIX):]
        if not os.environ.get(name):
            raise QgsProcessingException(tr(
                "TOKEN names the environment variable {!r}, which is not set or empty.")
                .format(name))
        return os.environ[name].strip()

    def tile_options(self) -> dict:
        """TILE_FORMAT, COMPRESSION_QUALITY, OPTIMIZE_TILES_FOR_SIZE and BACKGROUND_COLOR as
        ExportOptions fields."""
        choice = TILE_FORMATS[self._enum("TILE_FORMAT")]
        tile_format = None if choice == "keep" else choice
        quality = None
        if self._parameters.get("COMPRESSION_QUALITY") not in (None, ""):
            quality = self._int("COMPRESSION_QUALITY")
        optimize = self._bool("OPTIMIZE_TILES_FOR_SIZE")
        if optimize and quality is None:
            raise QgsProcessingException(tr(
                "OPTIMIZE_TILES_FOR_SIZE recompresses JPEG tiles at COMPRESSION_QUALITY: give "
                "a quality from 1 (smallest) to 100 (best), e.g. 60."))
        colour = QColor(255, 255, 255)
        if self._parameters.get("BACKGROUND_COLOR") not in (None, ""):
            colour = self._color("BACKGROUND_COLOR")
            if not colour.isValid():
                raise QgsProcessingException(tr(
                    "BACKGROUND_COLOR is not a colour; give it as #rrggbb or r,g,b."))
        return {"tile_format": tile_format, "quality": quality, "optimize": optimize,
                "background": (colour.red(), colour.green(), colour.blue())}

    @staticmethod
    def service_levels(source: CacheSource, levels: list[int], feedback) -> list[int]:
        """Levels outside the service's minLOD..maxLOD have no tiles to download."""
        info = source.info
        kept = [level for level in levels if info.min_level <= level <= info.max_level]
        if len(kept) < len(levels):
            left_out = sorted(set(levels) - set(kept))
            feedback.pushWarning(tr(
                "Levels {} are outside the service's levels {}-{} and are left out.").format(
                ",".join(map(str, left_out)), info.min_level, info.max_level))
        if not kept:
            raise QgsProcessingException(tr(
                "None of the chosen levels is served: the service has levels {}-{}.").format(
                info.min_level, info.max_level))
        return kept

    def check_tile_limit(self, source: CacheSource, levels: list[int],
                         selection: Selection) -> None:
        """MAX_TILE_COUNT, counted as exportTiles counts: tiles of the export area."""
        limit = self._int("MAX_TILE_COUNT")
        if limit <= 0:
            return
        counts = {}
        for level in levels:
            counts[level] = area_tile_count(source, level, selection)
            if sum(counts.values()) > limit:
                break
        total = sum(counts.values())
        if total > limit:
            shown = ", ".join(tr("level {}: {}").format(level, n) for level, n in counts.items())
            more = " or more" if len(counts) < len(levels) else ""
            raise QgsProcessingException(tr(
                "The export would download {}{} tiles ({}{}), more than MAX_TILE_COUNT ({}). "
                "Choose fewer levels or a smaller extent or area of interest, or raise "
                "MAX_TILE_COUNT (0 = no limit) if you may download that many tiles from this "
                "service.").format(total, more, shown, more and ", …", limit))

    @staticmethod
    def lonlat(extent, scheme: TilingScheme):
        if extent is None:
            return None
        try:
            return lonlat_extent(extent, cache_crs(scheme.spatial_reference))
        except QgsProcessingException:
            return None


PARAMETERS_OF = {
    Concern.INPUT: "INPUT_SERVICE",
    Concern.LEVELS: "LEVELS",
    Concern.SCALES: "SCALES",
    Concern.RESOLUTIONS: "RESOLUTIONS",
    Concern.AREA: "EXPORT_EXTENT / AREA_OF_INTEREST",
    Concern.TILE_FORMAT: "TILE_FORMAT",
    Concern.REQUEST_RATE: "NUM_OF_CACHING_SERVICE_INSTANCES / MAX_REQUESTS_PER_SECOND",
    Concern.CREDENTIALS: "TOKEN / AUTHCFG",
    Concern.TARGET: "TARGET_CACHE_PATH",
}


def user_message(error: CacheError) -> str:
    """The engine's message, led by the parameters it is about: the engine speaks of levels
    and areas, the user sets LEVELS and EXPORT_EXTENT."""
    parameters = PARAMETERS_OF.get(error.concern) if error.concern else None
    return f"{parameters}: {error}" if parameters else str(error)
