"""`mapservercache:exportmapservercache`: a thin adapter from Processing parameters to the engine.
"""
from __future__ import annotations

import errno
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
from ..core.export.estimate import LevelEstimate, estimate, format_size
from ..core.exporter import Exporter, ExportOptions, auto_workers
from ..core.grid.tiling_scheme import StorageFormat
from ..core.selection.tile_selection import Selection
from ..core.sources.http_client import FetchPolicy
from ..core.sources.service_url import is_service_url
from ..core.sources.source import CacheSource
from ..qgis_compat import (
    NUMBER_DOUBLE,
    NUMBER_INTEGER,
    PARAMETER_ADVANCED,
    SOURCE_VECTOR_POLYGON,
)
from .engine_log import engine_log_to
from .export_jobs import EXPORT_METHODS, choose_method, estimate_by_job, export_by_jobs
from .export_parameters import TILE_FORMATS, ExportParameters, user_message
from .help_text import HELP
from .input_layers import resolve_input
from .plugin_icon import plugin_icon
from .result_layer import add_result_layer, viewable_path
from .secret_parameter import SecretStringParameter, ServiceInputParameter
from .translation import tr

HELP_URL = "https://github.com/export-map-server-cache/export_map_server_cache#readme"
UI = __package__.rsplit(".", 1)[0] + ".ui"  # imported by the dialogs only, never by qgis_process
DEFAULT_MAX_TILES = 100_000  # the REST API's default maxExportTilesCount
DEFAULT_MAX_TILE_MB = FetchPolicy.max_tile_bytes / (1 << 20)
MAX_REQUESTS_PER_HOST = 8
CACHE_TYPES = ("CACHE_DATASET", "TILE_PACKAGE")
STORAGE_FORMATS = (StorageFormat.COMPACT, StorageFormat.COMPACT_V2, StorageFormat.EXPLODED)


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
    EXPORT_METHOD = "EXPORT_METHOD"
    RESOLUTIONS = "RESOLUTIONS"
    FAIL_ON_DAMAGED_TILES = "FAIL_ON_DAMAGED_TILES"
    MAX_TILE_SIZE_MB = "MAX_TILE_SIZE_MB"
    OUTPUT_CACHE_PATH = "OUTPUT_CACHE_PATH"
    TILE_COUNT = "TILE_COUNT"
    BYTE_COUNT = "BYTE_COUNT"

    def tr(self, text: str) -> str:
        return tr(text)

    def name(self) -> str:
        return "exportmapservercache"

    def displayName(self) -> str:
        return self.tr("Export map server cache")

    def shortHelpString(self) -> str:
        return " ".join(self.tr(HELP).split())  # the dialog turns line breaks into <br>

    def helpUrl(self) -> str:
        return HELP_URL

    def tags(self):
        return ["arcgis", "esri", "tile", "cache", "tpk", "tpkx", "bundle", "compact", "offline",
                "export", "mapserver", "basemap"]

    def icon(self) -> QIcon:
        return plugin_icon()

    def createInstance(self):
        return ExportMapServerCacheAlgorithm()

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(_with_wrapper(ServiceInputParameter(
            self.INPUT_SERVICE,
            self.tr("Input cache or service (folder, conf.xml, .tpk, .tpkx, MapServer URL or "
                    "layer)")),
            "input_wrapper.InputServiceWrapper"))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.TARGET_CACHE_PATH, self.tr("Target folder")))
        self.addParameter(QgsProcessingParameterEnum(
            self.EXPORT_CACHE_TYPE, self.tr("Export cache type"), options=list(CACHE_TYPES),
            defaultValue=0))
        self.addParameter(_advanced(QgsProcessingParameterBoolean(
            self.COPY_DATA_FROM_SERVER, self.tr("Stage all data, then move it into place"),
            defaultValue=False)))
        self.addParameter(QgsProcessingParameterEnum(
            self.STORAGE_FORMAT_TYPE, self.tr("Storage format"),
            options=[storage.name for storage in STORAGE_FORMATS], defaultValue=1))
        self.addParameter(QgsProcessingParameterString(
            self.SCALES, self.tr("Scales (denominators separated by ';')"), optional=True))
        self.addParameter(_with_wrapper(QgsProcessingParameterString(
            self.LEVELS, self.tr("Levels (e.g. 0-5,7)"), optional=True),
            "level_wrapper.LevelListWrapper"))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.NUM_OF_CACHING_SERVICE_INSTANCES, self.tr("Number of workers (-1 = automatic)"),
            type=NUMBER_INTEGER, defaultValue=-1, minValue=-1,
            maxValue=64)))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AREA_OF_INTEREST, self.tr("Area of interest"), [SOURCE_VECTOR_POLYGON],
            optional=True))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXPORT_EXTENT, self.tr("Export extent"), optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, self.tr("Overwrite the export area in an existing cache"),
            defaultValue=False))
        self.addParameter(_advanced(QgsProcessingParameterAuthConfig(
            self.AUTHCFG, self.tr("Authentication (services)"), optional=True)))
        self.addParameter(_advanced(SecretStringParameter(
            self.TOKEN, self.tr("ArcGIS token (services; sent as a header, never logged)"))))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.MAX_REQUESTS_PER_SECOND,
            self.tr("Most requests per second (services; 0 = no limit)"),
            type=NUMBER_DOUBLE, defaultValue=0, minValue=0,
            optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.MAX_TILE_COUNT, self.tr("Most tiles to download (services; 0 = no limit)"),
            type=NUMBER_INTEGER, defaultValue=DEFAULT_MAX_TILES,
            minValue=0, optional=True)))
        self.addParameter(QgsProcessingParameterBoolean(
            self.ESTIMATE_ONLY, self.tr("Only estimate the tile count and size; write nothing"),
            defaultValue=False, optional=True))
        self.addParameter(_advanced(QgsProcessingParameterBoolean(
            self.DISABLE_CLIPPING,
            self.tr("Keep boundary tiles whole (do not clip them to the area of interest)"),
            defaultValue=False, optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterEnum(
            self.TILE_FORMAT, self.tr("Tile format"), options=list(TILE_FORMATS), defaultValue=0,
            optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.COMPRESSION_QUALITY,
            self.tr("JPEG compression quality (1-100; empty = the cache's)"),
            type=NUMBER_INTEGER, minValue=1, maxValue=100,
            optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterBoolean(
            self.OPTIMIZE_TILES_FOR_SIZE,
            self.tr("Optimize tiles for size (recompress JPEG tiles at the compression quality)"),
            defaultValue=False, optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterColor(
            self.BACKGROUND_COLOR, self.tr("Background colour (outside pixels of JPEG tiles)"),
            defaultValue=QColor(255, 255, 255), opacityEnabled=False, optional=True)))
        self.addParameter(QgsProcessingParameterBoolean(
            self.LOAD_RESULT,
            self.tr("Add the exported cache to the map (Compact V2 datasets; .tpkx "
            "with GDAL 3.8 or newer)"), defaultValue=True, optional=True))
        self.addParameter(_advanced(QgsProcessingParameterEnum(
            self.EXPORT_METHOD, self.tr("Export method (services)"),
            options=[self.tr(method) for method in EXPORT_METHODS], defaultValue=0,
            optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterString(
            self.RESOLUTIONS,
            self.tr("Resolutions (map units per pixel separated by ';'; instead of levels)"),
            optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterBoolean(
            self.FAIL_ON_DAMAGED_TILES,
            self.tr("Fail on damaged tiles (else they are left out and reported per level)"),
            defaultValue=False, optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            self.MAX_TILE_SIZE_MB,
            self.tr("Largest tile to download, in MiB (services; a larger reply is refused)"),
            type=NUMBER_DOUBLE, defaultValue=DEFAULT_MAX_TILE_MB, minValue=0.01,
            optional=True)))
        self.addOutput(QgsProcessingOutputFile(
            self.OUTPUT_CACHE_PATH, self.tr("Exported cache (Layers folder or package file)")))
        self.addOutput(QgsProcessingOutputNumber(
            self.TILE_COUNT, self.tr("Tiles exported (estimated)")))
        self.addOutput(QgsProcessingOutputNumber(
            self.BYTE_COUNT, self.tr("Bytes exported (estimated)")))

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
            raise QgsProcessingException(user_message(exc)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QgsProcessingException(tr(
                    "The disk holding the target folder is full ({}). The target was left as "
                    "it was: free some space, or choose a target folder on another disk, and "
                    "export again.").format(exc)) from None
            raise QgsProcessingException(tr(
                "A file could not be read or written: {}. Nothing half-written was left in "
                "the target.").format(exc)) from None

    def _export(self, parameters, context, feedback):
        resolved = self._input  # set by prepareAlgorithm
        if isinstance(resolved, QgsProcessingException):
            raise resolved
        package = self.parameterAsEnum(parameters, self.EXPORT_CACHE_TYPE, context) == 1
        storage = STORAGE_FORMATS[
            self.parameterAsEnum(parameters, self.STORAGE_FORMAT_TYPE, context)]
        if package and storage is StorageFormat.EXPLODED:
            raise QgsProcessingException(tr(
                "A tile package cannot hold an Exploded cache: choose COMPACT (.tpk) or "
                "COMPACT_V2 (.tpkx) as the storage format, or export a CACHE_DATASET."))
        target = self.parameterAsString(parameters, self.TARGET_CACHE_PATH, context)
        workers = self.parameterAsInt(parameters, self.NUM_OF_CACHING_SERVICE_INSTANCES, context)
        remote = is_service_url(resolved.location)
        if workers <= 0:
            workers = MAX_REQUESTS_PER_HOST if remote else auto_workers()

        values = ExportParameters(
            {d.name(): d for d in self.parameterDefinitions()}, parameters, context)
        source, transport = values.open_input(resolved, workers)
        try:
            return self._run(source, values, parameters, context, feedback, target, package,
                             storage, workers)
        finally:
            source.close()
            if transport is not None:
                transport.close()

    def _run(self, source: CacheSource, values: ExportParameters, parameters, context, feedback,
             target, package, storage, workers):
        scheme = source.scheme
        levels = values.levels(scheme)
        selection = values.selection(feedback, scheme)
        kind = tr("service") if source.is_service else scheme.storage_format.label
        feedback.pushInfo(tr("Input: {} ({}, {}, {}x{} px, {})").format(
            source.location, kind, scheme.tile_format, scheme.tile_cols, scheme.tile_rows,
            scheme.spatial_reference.describe()))
        if source.is_service:
            feedback.pushInfo(tr("Service: {}").format(source.info.describe()))
            levels = values.service_levels(source, levels, feedback)
            values.check_tile_limit(source, levels, selection)
        feedback.pushInfo(tr("Levels: {}").format(",".join(map(str, levels))))
        estimate_only = self.parameterAsBool(parameters, self.ESTIMATE_ONLY, context)
        by_job, why = choose_method(
            self.parameterAsEnum(parameters, self.EXPORT_METHOD, context), source)
        if source.is_service:
            feedback.pushInfo(tr("Export method: {} ({}).").format(
                tr("the server's exportTiles job") if by_job else tr("tile requests"), why))
        if by_job and estimate_only:
            counted = estimate_by_job(source, levels, selection, feedback)
            if counted is not None:
                feedback.pushInfo(tr("ESTIMATE_ONLY is set: nothing was written."))
                return {self.TARGET_CACHE_PATH: target, self.OUTPUT_CACHE_PATH: "",
                        self.TILE_COUNT: counted[0], self.BYTE_COUNT: counted[1]}
        expected = expected_bytes = None
        # a download starts with its estimate (the tilemaps it reads serve the export too); a
        # local copy reads its bundle indexes once, while copying, and reports at the end
        if (source.is_service and not by_job) or estimate_only:
            estimates = self._estimate(source, levels, selection, feedback)
            expected = {e.level: e.tiles for e in estimates}
            expected_bytes = sum(e.bytes for e in estimates)
            if estimate_only:
                feedback.pushInfo(tr("ESTIMATE_ONLY is set: nothing was written."))
                return {self.TARGET_CACHE_PATH: target, self.OUTPUT_CACHE_PATH: "",
                        self.TILE_COUNT: sum(e.tiles for e in estimates),
                        self.BYTE_COUNT: sum(e.bytes for e in estimates)}
        crs_extent = selection.bounds() or source.data_extent
        options = ExportOptions(
            target_dir=Path(target),
            storage=storage,
            package=package,
            overwrite=self.parameterAsBool(parameters, self.OVERWRITE, context),
            workers=workers,
            geographic_extent=values.lonlat(crs_extent, scheme),
            fail_on_damaged=self.parameterAsBool(parameters, self.FAIL_ON_DAMAGED_TILES, context),
            **values.tile_options(),
        )
        if by_job:
            result = export_by_jobs(
                source, levels, selection, options,
                self.parameterAsInt(parameters, self.NUM_OF_CACHING_SERVICE_INSTANCES, context),
                selection.polygon is not None and not self.parameterAsBool(
                    parameters, self.DISABLE_CLIPPING, context), feedback)
            return self._finish(source, result, parameters, context, feedback, target,
                                storage, package)
        feedback.pushInfo((tr("Concurrent requests: {}") if source.is_service
                           else tr("Workers: {}")).format(options.workers))
        result = Exporter(
            source, levels, selection, options,
            progress=lambda fraction: feedback.setProgress(100.0 * fraction),
            is_canceled=feedback.isCanceled,
            report=feedback.pushInfo,
            expected=expected,
            expected_bytes=expected_bytes,
        ).run()
        return self._finish(source, result, parameters, context, feedback, target, storage,
                            package)

    def _finish(self, source: CacheSource, result, parameters, context, feedback, target,
                storage, package) -> dict:
        """The export's report, the layer to load and the outputs."""
        for level in result.levels:
            feedback.pushInfo(tr("Level {}: {} tiles, {} bytes").format(
                level.level, level.tiles, level.bytes))
        rate = result.tile_count / result.seconds if result.seconds else 0.0
        feedback.pushInfo(tr("Exported {} tiles ({} bytes) in {:.2f} s ({:.0f} tiles/s) to {}")
                          .format(result.tile_count, result.byte_count, result.seconds, rate,
                                  result.output_path))
        feedback.pushInfo(result.verified)
        if source.is_service:
            client = source.layout.client
            feedback.pushInfo(tr("Requests: {}, retried: {}").format(
                client.requests, client.tally.retries))
        if self.parameterAsBool(parameters, self.LOAD_RESULT, context):
            self._to_load = viewable_path(result.output_path, storage, package, feedback)
        return {
            self.TARGET_CACHE_PATH: target,
            self.OUTPUT_CACHE_PATH: str(result.output_path),
            self.TILE_COUNT: result.tile_count,
            self.BYTE_COUNT: result.byte_count,
        }

    @staticmethod
    def _estimate(source: CacheSource, levels: list[int], selection: Selection, feedback
                  ) -> list[LevelEstimate]:
        """Tiles and bytes per level, reported level by level and in total."""
        estimates = estimate(source, levels, selection, feedback.isCanceled)
        for level in estimates:
            feedback.pushInfo(level.describe())
        planned = sum(e.tiles for e in estimates)
        planned_bytes = sum(e.bytes for e in estimates)
        feedback.pushInfo(tr("Total: {} tiles, about {}").format(planned,
                                                                format_size(planned_bytes)))
        return estimates


def _advanced(parameter):
    """The parameter in the dialog's Advanced group: one a first-time user does not need."""
    parameter.setFlags(parameter.flags() | PARAMETER_ADVANCED)
    return parameter


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
