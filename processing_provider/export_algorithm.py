"""`mapservercache:exportmapservercache`: a thin adapter from Processing parameters to the engine.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterColor,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtGui import QColor, QIcon

from ..core.errors import CacheError, ExportCanceled
from ..core.export.estimate import area_tile_count, estimate, format_size
from ..core.exporter import Exporter, ExportOptions, auto_workers
from ..core.grid.tiling_scheme import StorageFormat
from ..core.selection.levels import select_levels
from ..core.selection.tile_selection import ExtentSelection, PolygonSelection, Selection
from ..core.sources.http_client import FetchPolicy
from ..core.sources.local_cache import open_cache
from ..core.sources.service import open_service
from ..core.sources.service_url import is_service_url
from ..core.sources.source import CacheSource
from ..qgis_compat import NUMBER_DOUBLE, NUMBER_INTEGER, SOURCE_VECTOR_POLYGON
from .engine_log import engine_log_to
from .input_layers import resolve_input
from .qgis_network import QgisTransport
from .qgis_values import aoi_wkb, cache_crs, lonlat_extent, to_extent
from .result_layer import add_result_layer, viewable_path
from .secret_parameter import SecretStringParameter

ICON = Path(__file__).resolve().parent.parent / "icon.png"
HELP_URL = "https://github.com/export-map-server-cache/export_map_server_cache#readme"
UI = __package__.rsplit(".", 1)[0] + ".ui"  # imported by the dialogs only, never by qgis_process
DEFAULT_MAX_TILES = 100_000  # the REST API's default maxExportTilesCount
MAX_REQUESTS_PER_HOST = 8
CACHE_TYPES = ("CACHE_DATASET", "TILE_PACKAGE")
STORAGE_FORMATS = (StorageFormat.COMPACT, StorageFormat.COMPACT_V2, StorageFormat.EXPLODED)
# TILE_FORMAT options; "keep" = the input's format (the existing target's when merging)
TILE_FORMATS = ("keep", "PNG", "PNG8", "JPEG", "MIXED", "PNG24", "PNG32")

HELP = """<p>Exports tiles from an Esri tile cache into a cache dataset (Exploded, Compact V1 or
Compact V2) or a tile package (.tpk for Compact V1, .tpkx for Compact V2), as ArcGIS's "Export Map
Server Cache" tool does. Tiles are copied byte for byte; only tiles whose pixels change (clipped,
merged or converted) are decoded and encoded again.</p>
<p><b>Input cache or service</b> (INPUT_SERVICE): a cache dataset folder (the folder holding
conf.xml and _alllayers, or the ArcGIS Server cache folder above Layers), a conf.xml file, a .tpk
or a .tpkx; or an ArcGIS Server / ArcGIS Online tile service URL
(https://host/arcgis/rest/services/[folder/]Name/MapServer or ImageServer, also with ?f=json, a
token= or a /tile/{z}/{y}/{x} template); or a tiled layer of the project (an ArcGIS MapServer
layer, or an XYZ layer of an ArcGIS tile URL) by its id or name. Services are read through QGIS
networking (proxy, SSL, timeouts and authentication settings apply).</p>
<p><b>Target folder</b> (TARGET_CACHE_PATH): created if missing. A cache dataset is written to
&lt;folder&gt;/&lt;name&gt;/Layers, a package to &lt;folder&gt;/&lt;name&gt;.tpk(x);
&lt;name&gt; is the input's name.</p>
<p><b>Export cache type</b> (EXPORT_CACHE_TYPE): CACHE_DATASET or TILE_PACKAGE.</p>
<p><b>Copy data then move into place</b> (COPY_DATA_FROM_SERVER): when exporting into an existing
cache, write every changed bundle to a staging folder first and move them into place only when the
whole export succeeded. New outputs are always built this way.</p>
<p><b>Storage format</b> (STORAGE_FORMAT_TYPE): COMPACT (V1, .bundle + .bundlx), COMPACT_V2
(.bundle, ArcGIS 10.3+; the only format GDAL/QGIS can open) or EXPLODED (one file per tile; not
allowed in a tile package).</p>
<p><b>Scales</b> (SCALES) or <b>Levels</b> (LEVELS): which levels of detail to export. Scales are
scale denominators separated by ';' (a "1:" prefix is allowed), matched to the cache's levels
within 0.01 %. Levels are level IDs and ranges, e.g. 0-5,7. Give one or neither (all levels).</p>
<p><b>Number of workers</b> (NUM_OF_CACHING_SERVICE_INSTANCES): bundles processed in parallel;
-1 chooses from the number of CPUs. For a service: concurrent requests, 8 by default; raise it
only where the service's owner allows it.</p>
<p><b>Area of interest</b> (AREA_OF_INTEREST): a polygon layer in any CRS (all its polygons, or
the selected ones with "Selected features only"); it overrides the export extent. The export is
clipped at pixel resolution, as ArcGIS does: tiles wholly inside are copied unchanged, tiles
outside are left out, and in tiles on the boundary the pixels whose centres lie outside the
polygons become transparent (in JPEG tiles, which have no transparency, they take the background
colour; in a MIXED cache such tiles are written as PNG). Tiles left with no visible pixel are not
written. Polygons crossing the antimeridian of a world cache (Web Mercator, WGS 84) work, also
when given with longitudes beyond 180.</p>
<p><b>Keep boundary tiles whole</b> (DISABLE_CLIPPING): export the same tiles (those with a
pixel centre inside the area of interest) as they are, without clipping.</p>
<p><b>Export extent</b> (EXPORT_EXTENT): a rectangle in any CRS (without a CRS, the cache's own
CRS is assumed); tiles that overlap it are exported.</p>
<p><b>Overwrite</b> (OVERWRITE): when the target already holds a cache of the same name with the
same tiling scheme (CRS, origin, tile size, levels' resolutions, storage format), the export is
merged into it; tiles and pixels outside the export area are always kept. Without OVERWRITE
(merge) exported tiles are drawn over the existing ones: their transparent pixels, including
those clipped away by the area of interest, let the existing tile show through. With OVERWRITE
every pixel inside the area of interest (or every tile of the extent) is replaced by the
input's, transparent ones included, and existing tiles there that the input does not have are
removed. Tiles are written in the existing cache's tile format; changed bundles are rewritten
compactly.</p>
<p><b>Authentication</b> (AUTHCFG): a QGIS authentication configuration (Basic, EsriToken…)
used for every request to the service.</p>
<p><b>ArcGIS token</b> (TOKEN): sent as the X-Esri-Authorization header, never in a URL, log or
message. env:NAME reads it from the environment variable NAME, which keeps it off a qgis_process
command line.</p>
<p><b>Most requests per second</b> (MAX_REQUESTS_PER_SECOND): 0 = no limit. Whatever the limit,
HTTP 429 and 5xx answers and timeouts are retried with exponential backoff and Retry-After (at
most 6 attempts a tile); tiles that keep failing stop the export with a count of them and
nothing is written.</p>
<p><b>Most tiles</b> (MAX_TILE_COUNT): a download of more tiles of the export area is refused
(default 100,000 as the REST API's maxExportTilesCount; 0 = no limit).</p>
<p><b>Estimate only</b> (ESTIMATE_ONLY): report per-level tile counts and the estimated size
(from the service's tilemap where it has one, else from sampled tiles) and write nothing.</p>
<p><b>Tile format</b> (TILE_FORMAT): keep (the input's format, or the existing target's), PNG,
PNG8, JPEG, MIXED (JPEG where a tile is opaque, PNG where it has transparency), PNG24 or PNG32.
Tiles already in the chosen format are copied unchanged; the others are converted.</p>
<p><b>Compression quality</b> (COMPRESSION_QUALITY): 1-100, the JPEG quality of tiles the export
encodes (converted, clipped or merged tiles); empty = the cache's own quality, else 75.</p>
<p><b>Optimize tiles for size</b> (OPTIMIZE_TILES_FOR_SIZE): recompress the JPEG tiles at
COMPRESSION_QUALITY (as exportTiles does); a tile whose recompressed version is not smaller keeps
its bytes.</p>
<p><b>Background colour</b> (BACKGROUND_COLOR): the colour of clipped or transparent pixels in
JPEG tiles (default white).</p>
<p><b>Add the result to the map</b> (LOAD_RESULT): when the export is done, add a Compact V2
cache dataset (and a .tpkx where QGIS's GDAL is 3.8 or newer) to the map through GDAL; other
outputs get a message saying how to view them.</p>
<p>Outputs: OUTPUT_CACHE_PATH (the Layers folder or the package file), TILE_COUNT (tiles
exported or estimated) and BYTE_COUNT (bytes of tile data).</p>"""


class ExportMapServerCacheAlgorithm(QgsProcessingAlgorithm):
    INPUT_SERVICE = "INPUT_SERVICE"
    TARGET_CACHE_PATH = "TARGET_CACHE_PATH"
    EXPORT_CACHE_TYPE = "EXPORT_CACHE_TYPE"
    COPY_DATA_FROM_SERVER = "COPY_DATA_FROM_SERVER"
    STORAGE_FORMAT_TYPE = "STORAGE_FORMAT_TYPE"
    SCALES = "SCALES"
    LEVELS = "LEVELS"
    NUM_OF_CACHING_SERVICE_INSTANCES = "NUM_OF_CACHING_SERVICE_INSTANCES"
    AREA_OF_INTEREST = "AREA_OF_INTEREST"
    EXPORT_EXTENT = "EXPORT_EXTENT"
    OVERWRITE = "OVERWRITE"
    AUTHCFG = "AUTHCFG"
    TOKEN = "TOKEN"
    MAX_REQUESTS_PER_SECOND = "MAX_REQUESTS_PER_SECOND"
    MAX_TILE_COUNT = "MAX_TILE_COUNT"
    ESTIMATE_ONLY = "ESTIMATE_ONLY"
    DISABLE_CLIPPING = "DISABLE_CLIPPING"
    TILE_FORMAT = "TILE_FORMAT"
    COMPRESSION_QUALITY = "COMPRESSION_QUALITY"
    OPTIMIZE_TILES_FOR_SIZE = "OPTIMIZE_TILES_FOR_SIZE"
    BACKGROUND_COLOR = "BACKGROUND_COLOR"
    LOAD_RESULT = "LOAD_RESULT"
    OUTPUT_CACHE_PATH = "OUTPUT_CACHE_PATH"
    TILE_COUNT = "TILE_COUNT"
    BYTE_COUNT = "BYTE_COUNT"

    def name(self) -> str:
        return "exportmapservercache"

    def displayName(self) -> str:
        return "Export map server cache"

    def shortHelpString(self) -> str:
        return " ".join(HELP.split())  # the dialog turns line breaks into <br>

    def helpUrl(self) -> str:
        return HELP_URL

    def tags(self):
        return ["arcgis", "esri", "tile", "cache", "tpk", "tpkx", "bundle", "compact", "offline",
                "export", "mapserver", "basemap"]

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def createInstance(self):
        return ExportMapServerCacheAlgorithm()

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(_with_wrapper(QgsProcessingParameterString(
            self.INPUT_SERVICE,
            "Input cache or service (folder, conf.xml, .tpk, .tpkx, MapServer URL or layer)"),
            "input_wrapper.InputServiceWrapper"))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.TARGET_CACHE_PATH, "Target folder"))
        self.addParameter(QgsProcessingParameterEnum(
            self.EXPORT_CACHE_TYPE, "Export cache type", options=list(CACHE_TYPES),
            defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean(
            self.COPY_DATA_FROM_SERVER, "Stage all data, then move it into place",
            defaultValue=False))
        self.addParameter(QgsProcessingParameterEnum(
            self.STORAGE_FORMAT_TYPE, "Storage format",
            options=[storage.name for storage in STORAGE_FORMATS], defaultValue=1))
        self.addParameter(QgsProcessingParameterString(
            self.SCALES, "Scales (denominators separated by ';')", optional=True))
        self.addParameter(_with_wrapper(QgsProcessingParameterString(
            self.LEVELS, "Levels (e.g. 0-5,7)", optional=True), "level_wrapper.LevelListWrapper"))
        self.addParameter(QgsProcessingParameterNumber(
            self.NUM_OF_CACHING_SERVICE_INSTANCES, "Number of workers (-1 = automatic)",
            type=NUMBER_INTEGER, defaultValue=-1, minValue=-1,
            maxValue=64))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AREA_OF_INTEREST, "Area of interest", [SOURCE_VECTOR_POLYGON],
            optional=True))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXPORT_EXTENT, "Export extent", optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, "Overwrite the export area in an existing cache",
            defaultValue=False))
        self.addParameter(QgsProcessingParameterAuthConfig(
            self.AUTHCFG, "Authentication (services)", optional=True))
        self.addParameter(SecretStringParameter(
            self.TOKEN, "ArcGIS token (services; sent as a header, never logged)"))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_REQUESTS_PER_SECOND, "Most requests per second (services; 0 = no limit)",
            type=NUMBER_DOUBLE, defaultValue=0, minValue=0,
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_TILE_COUNT, "Most tiles to download (services; 0 = no limit)",
            type=NUMBER_INTEGER, defaultValue=DEFAULT_MAX_TILES,
            minValue=0, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.ESTIMATE_ONLY, "Only estimate the tile count and size; write nothing",
            defaultValue=False, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.DISABLE_CLIPPING,
            "Keep boundary tiles whole (do not clip them to the area of interest)",
            defaultValue=False, optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.TILE_FORMAT, "Tile format", options=list(TILE_FORMATS), defaultValue=0,
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.COMPRESSION_QUALITY, "JPEG compression quality (1-100; empty = the cache's)",
            type=NUMBER_INTEGER, minValue=1, maxValue=100,
            optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OPTIMIZE_TILES_FOR_SIZE,
            "Optimize tiles for size (recompress JPEG tiles at the compression quality)",
            defaultValue=False, optional=True))
        self.addParameter(QgsProcessingParameterColor(
            self.BACKGROUND_COLOR, "Background colour (outside pixels of JPEG tiles)",
            defaultValue=QColor(255, 255, 255), opacityEnabled=False, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.LOAD_RESULT, "Add the exported cache to the map (Compact V2 datasets; .tpkx "
            "with GDAL 3.8 or newer)", defaultValue=True, optional=True))
        self.addOutput(QgsProcessingOutputFile(
            self.OUTPUT_CACHE_PATH, "Exported cache (Layers folder or package file)"))
        self.addOutput(QgsProcessingOutputNumber(self.TILE_COUNT, "Tiles exported (estimated)"))
        self.addOutput(QgsProcessingOutputNumber(self.BYTE_COUNT, "Bytes exported (estimated)"))

    def prepareAlgorithm(self, parameters, context, feedback) -> bool:
        """Project layers are read here, on the main thread (qgis-notes §5)."""
        text = self.parameterAsString(parameters, self.INPUT_SERVICE, context).strip()
        try:
            self._input = resolve_input(text, context)
        except QgsProcessingException as exc:
            self._input = exc  # raised by processAlgorithm, where every input error is reported
        self._to_load: Optional[Path] = None
        return True

    def postProcessAlgorithm(self, context, feedback):
        """The result goes on the map from here, on the main thread (qgis-notes §5)."""
        if self._to_load is not None:
            add_result_layer(self._to_load, context, feedback, self.OUTPUT_CACHE_PATH)
        return {}

    def processAlgorithm(self, parameters, context, feedback):
        try:
            with engine_log_to(feedback):
                return self._export(parameters, context, feedback)
        except ExportCanceled as exc:
            raise QgsProcessingException(str(exc)) from None
        except CacheError as exc:
            raise QgsProcessingException(str(exc)) from None
        except OSError as exc:
            raise QgsProcessingException(
                f"A file could not be read or written: {exc}. Nothing half-written was left in "
                "the target."
            ) from None

    def _export(self, parameters, context, feedback):
        resolved = self._input  # set by prepareAlgorithm
        if isinstance(resolved, QgsProcessingException):
            raise resolved
        package = self.parameterAsEnum(parameters, self.EXPORT_CACHE_TYPE, context) == 1
        storage = STORAGE_FORMATS[
            self.parameterAsEnum(parameters, self.STORAGE_FORMAT_TYPE, context)]
        if package and storage is StorageFormat.EXPLODED:
            raise QgsProcessingException(
                "A tile package cannot hold an Exploded cache: choose COMPACT (.tpk) or "
                "COMPACT_V2 (.tpkx) as the storage format, or export a CACHE_DATASET."
            )
        target = self.parameterAsString(parameters, self.TARGET_CACHE_PATH, context)
        workers = self.parameterAsInt(parameters, self.NUM_OF_CACHING_SERVICE_INSTANCES, context)
        remote = is_service_url(resolved.location)
        if workers <= 0:
            workers = MAX_REQUESTS_PER_HOST if remote else auto_workers()

        source, transport = self.open_input(resolved, parameters, context, workers)
        try:
            return self._run(source, parameters, context, feedback, target, package, storage,
                             workers)
        finally:
            source.close()
            if transport is not None:
                transport.close()

    def open_input(self, resolved, parameters, context, workers: int
                   ) -> tuple[CacheSource, Optional[QgisTransport]]:
        """The input as a cache source, and the transport that reads it when it is a service
        (the caller closes both)."""
        if not is_service_url(resolved.location):
            return open_cache(resolved.location), None
        transport = QgisTransport(workers, resolved.authcfg or self.parameterAsString(
            parameters, self.AUTHCFG, context) or "")
        rate = self.parameterAsDouble(parameters, self.MAX_REQUESTS_PER_SECOND, context)
        try:
            return open_service(resolved.location, transport, self._token(parameters, context),
                                FetchPolicy(requests_per_second=rate)), transport
        except BaseException:
            transport.close()
            raise

    def _run(self, source: CacheSource, parameters, context, feedback, target, package, storage,
             workers):
        scheme = source.scheme
        levels = select_levels(
            self.parameterAsString(parameters, self.LEVELS, context) or "",
            self.parameterAsString(parameters, self.SCALES, context) or "",
            scheme,
        )
        selection = self.selection(parameters, context, feedback, scheme)
        kind = "service" if source.is_service else scheme.storage_format.label
        feedback.pushInfo(
            f"Input: {source.location} ({kind}, {scheme.tile_format}, "
            f"{scheme.tile_cols}x{scheme.tile_rows} px, {scheme.spatial_reference.describe()})")
        if source.is_service:
            feedback.pushInfo(f"Service: {source.info.describe()}")
            levels = self._service_levels(source, levels, feedback)
            self._check_tile_limit(source, levels, selection, parameters, context)
        feedback.pushInfo(f"Levels: {','.join(map(str, levels))}")
        estimate_only = self.parameterAsBool(parameters, self.ESTIMATE_ONLY, context)
        expected = None
        # a download starts with its estimate (the tilemaps it reads serve the export too); a
        # local copy reads its bundle indexes once, while copying, and reports at the end
        if source.is_service or estimate_only:
            estimates = estimate(source, levels, selection, feedback.isCanceled)
            for level in estimates:
                feedback.pushInfo(level.describe())
            expected = {e.level: e.tiles for e in estimates}
            planned = sum(e.tiles for e in estimates)
            planned_bytes = sum(e.bytes for e in estimates)
            feedback.pushInfo(f"Total: {planned} tiles, about {format_size(planned_bytes)}")
            if estimate_only:
                feedback.pushInfo("ESTIMATE_ONLY is set: nothing was written.")
                return {self.TARGET_CACHE_PATH: target, self.OUTPUT_CACHE_PATH: "",
                        self.TILE_COUNT: planned, self.BYTE_COUNT: planned_bytes}
        crs_extent = selection.bounds() or source.data_extent
        options = ExportOptions(
            target_dir=Path(target),
            storage=storage,
            package=package,
            overwrite=self.parameterAsBool(parameters, self.OVERWRITE, context),
            # a download can fail halfway: an existing cache is then only changed at the end
            staged=source.is_service or self.parameterAsBool(
                parameters, self.COPY_DATA_FROM_SERVER, context),
            workers=workers,
            geographic_extent=self._lonlat(crs_extent, scheme),
            **self._tile_options(parameters, context, feedback),
        )
        feedback.pushInfo(
            f"{'Concurrent requests' if source.is_service else 'Workers'}: {options.workers}")
        result = Exporter(
            source, levels, selection, options,
            progress=lambda fraction: feedback.setProgress(100.0 * fraction),
            is_canceled=feedback.isCanceled,
            report=feedback.pushInfo,
            expected=expected,
        ).run()
        for level in result.levels:
            feedback.pushInfo(
                f"Level {level.level}: {level.tiles} tiles, {level.bytes} bytes")
        rate = result.tile_count / result.seconds if result.seconds else 0.0
        feedback.pushInfo(
            f"Exported {result.tile_count} tiles ({result.byte_count} bytes) in "
            f"{result.seconds:.2f} s ({rate:.0f} tiles/s) to {result.output_path}")
        if source.is_service:
            client = source.layout.client
            feedback.pushInfo(
                f"Requests: {client.requests}, retried: {client.tally.retries}")
        if self.parameterAsBool(parameters, self.LOAD_RESULT, context):
            self._to_load = viewable_path(result.output_path, storage, package, feedback)
        return {
            self.TARGET_CACHE_PATH: target,
            self.OUTPUT_CACHE_PATH: str(result.output_path),
            self.TILE_COUNT: result.tile_count,
            self.BYTE_COUNT: result.byte_count,
        }

    def _tile_options(self, parameters, context, feedback) -> dict:
        """TILE_FORMAT, COMPRESSION_QUALITY, OPTIMIZE_TILES_FOR_SIZE and BACKGROUND_COLOR as
        ExportOptions fields."""
        choice = TILE_FORMATS[self.parameterAsEnum(parameters, self.TILE_FORMAT, context)]
        tile_format = None if choice == "keep" else choice
        quality = None
        if parameters.get(self.COMPRESSION_QUALITY) not in (None, ""):
            quality = self.parameterAsInt(parameters, self.COMPRESSION_QUALITY, context)
        optimize = self.parameterAsBool(parameters, self.OPTIMIZE_TILES_FOR_SIZE, context)
        if optimize and quality is None:
            raise QgsProcessingException(
                "OPTIMIZE_TILES_FOR_SIZE recompresses JPEG tiles at COMPRESSION_QUALITY: give "
                "a quality from 1 (smallest) to 100 (best), e.g. 60.")
        colour = QColor(255, 255, 255)
        if parameters.get(self.BACKGROUND_COLOR) not in (None, ""):
            colour = self.parameterAsColor(parameters, self.BACKGROUND_COLOR, context)
            if not colour.isValid():
                raise QgsProcessingException(
                    "BACKGROUND_COLOR is not a colour; give it as #rrggbb or r,g,b.")
        return {"tile_format": tile_format, "quality": quality, "optimize": optimize,
                "background": (colour.red(), colour.green(), colour.blue())}

    def _token(self, parameters, context) -> Optional[str]:
        """TOKEN as given, or read from the environment variable NAME for `env:NAME` (so that
        it does not appear on a qgis_process command line, which qgis_process echoes)."""
        text = self.parameterAsString(parameters, self.TOKEN, context).strip()
        if not text.startswith("env:"):
            return text or None
        name = text[len("env:"):]
        if not os.environ.get(name):
            raise QgsProcessingException(
                f"TOKEN names the environment variable {name!r}, which is not set or empty.")
        return os.environ[name].strip()

    @staticmethod
    def _service_levels(source: CacheSource, levels: list[int], feedback) -> list[int]:
        """Levels outside the service's minLOD..maxLOD have no tiles to download."""
        info = source.info
        kept = [level for level in levels if info.min_level <= level <= info.max_level]
        if len(kept) < len(levels):
            left_out = sorted(set(levels) - set(kept))
            feedback.pushWarning(
                f"Levels {','.join(map(str, left_out))} are outside the service's levels "
                f"{info.min_level}-{info.max_level} and are left out.")
        if not kept:
            raise QgsProcessingException(
                f"None of the chosen levels is served: the service has levels "
                f"{info.min_level}-{info.max_level}.")
        return kept

    def _check_tile_limit(self, source, levels, selection, parameters, context) -> None:
        """MAX_TILE_COUNT, counted as exportTiles counts: tiles of the export area."""
        limit = self.parameterAsInt(parameters, self.MAX_TILE_COUNT, context)
        if limit <= 0:
            return
        counts = {}
        for level in levels:
            counts[level] = area_tile_count(source, level, selection)
            if sum(counts.values()) > limit:
                break
        total = sum(counts.values())
        if total > limit:
            shown = ", ".join(f"level {level}: {n}" for level, n in counts.items())
            more = " or more" if len(counts) < len(levels) else ""
            raise QgsProcessingException(
                f"The export would download {total}{more} tiles ({shown}{more and ', …'}), more "
                f"than MAX_TILE_COUNT ({limit}). Choose fewer levels or a smaller extent or "
                "area of interest, or raise MAX_TILE_COUNT (0 = no limit) if you may download "
                "that many tiles from this service.")

    def selection(self, parameters, context, feedback, scheme) -> Selection:
        """EXPORT_EXTENT or AREA_OF_INTEREST in the cache's CRS (also for the level list)."""
        has_aoi = parameters.get(self.AREA_OF_INTEREST) not in (None, "")
        has_extent = parameters.get(self.EXPORT_EXTENT) not in (None, "")
        if not has_aoi and not has_extent:
            return Selection()
        crs = cache_crs(scheme.spatial_reference)
        if has_aoi:
            source = self.parameterAsSource(parameters, self.AREA_OF_INTEREST, context)
            if source is None:
                raise QgsProcessingException(
                    "AREA_OF_INTEREST could not be opened as a vector layer.")
            if has_extent:
                feedback.pushWarning(
                    "Both AREA_OF_INTEREST and EXPORT_EXTENT are set: the area of interest is "
                    "used and the extent ignored.")
            clip = not self.parameterAsBool(parameters, self.DISABLE_CLIPPING, context)
            polygon = aoi_wkb(source, crs, context, scheme.spatial_reference,
                              scheme.world_span() is not None)
            return PolygonSelection(scheme, polygon, clip)
        rect = self.parameterAsExtent(parameters, self.EXPORT_EXTENT, context, crs)
        if rect.isNull() or rect.isEmpty():
            raise QgsProcessingException(
                "EXPORT_EXTENT is empty or could not be transformed into the cache's CRS.")
        return ExtentSelection(scheme, to_extent(rect))

    @staticmethod
    def _lonlat(extent, scheme):
        if extent is None:
            return None
        try:
            return lonlat_extent(extent, cache_crs(scheme.spatial_reference))
        except QgsProcessingException:
            return None


def _with_wrapper(parameter, wrapper: str):
    """The parameter with its dialog widget (a class in ui/, named by its dotted path), where
    Processing still has the Python WidgetWrapper API it builds on: QGIS removed that API after
    4.0 (QEP 427), and there the parameter keeps QGIS's own text field."""
    if _legacy_widget_wrappers():
        parameter.setMetadata({"widget_wrapper": {"class": f"{UI}.{wrapper}"}})
    return parameter


def _legacy_widget_wrappers() -> bool:
    try:
        from processing.gui.wrappers import WidgetWrapper  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True
