"""`mapservercache:exportmapservercache`: a thin adapter from Processing parameters to the engine.
"""
from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtGui import QIcon

from ..core.cache_source import open_cache
from ..core.errors import CacheError, ExportCanceled
from ..core.exporter import Exporter, ExportOptions, auto_workers
from ..core.level_selection import select_levels
from ..core.selection import ExtentSelection, PolygonSelection, Selection
from ..core.tiling_scheme import StorageFormat
from .qgis_values import aoi_wkb, cache_crs, lonlat_extent, to_extent

ICON = Path(__file__).resolve().parent.parent / "icon.png"
CACHE_TYPES = ("CACHE_DATASET", "TILE_PACKAGE")
STORAGE_FORMATS = (StorageFormat.COMPACT, StorageFormat.COMPACT_V2, StorageFormat.EXPLODED)

HELP = """<p>Exports tiles from an Esri tile cache into a cache dataset (Exploded, Compact V1 or
Compact V2) or a tile package (.tpk for Compact V1, .tpkx for Compact V2), as ArcGIS's "Export Map
Server Cache" tool does. Tiles are copied byte for byte; nothing is re-encoded.</p>
<p><b>Input cache</b> (INPUT_SERVICE): a cache dataset folder (the folder holding conf.xml and
_alllayers, or the ArcGIS Server cache folder above Layers), a conf.xml file, a .tpk or a .tpkx.</p>
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
-1 chooses from the number of CPUs.</p>
<p><b>Area of interest</b> (AREA_OF_INTEREST): a polygon layer in any CRS; tiles that intersect
its polygons are exported. It overrides the export extent.</p>
<p><b>Export extent</b> (EXPORT_EXTENT): a rectangle in any CRS (without a CRS, the cache's own
CRS is assumed); tiles that overlap it are exported.</p>
<p><b>Overwrite</b> (OVERWRITE): when the target already holds a cache with the same tiling
scheme, tiles outside the export are always kept and exported tiles replace existing ones. With
OVERWRITE, existing tiles inside the export area that the input does not have are removed too, so
the area shows exactly the input; without it they are kept.</p>
<p>Outputs: OUTPUT_CACHE_PATH (the Layers folder or the package file) and TILE_COUNT (tiles
exported).</p>"""


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
    OUTPUT_CACHE_PATH = "OUTPUT_CACHE_PATH"
    TILE_COUNT = "TILE_COUNT"

    def name(self) -> str:
        return "exportmapservercache"

    def displayName(self) -> str:
        return "Export map server cache"

    def shortHelpString(self) -> str:
        return HELP

    def tags(self):
        return ["arcgis", "esri", "tile", "cache", "tpk", "tpkx", "bundle", "compact", "offline",
                "export", "mapserver", "basemap"]

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def createInstance(self):
        return ExportMapServerCacheAlgorithm()

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterString(
            self.INPUT_SERVICE, "Input cache (folder, conf.xml, .tpk or .tpkx)"))
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
        self.addParameter(QgsProcessingParameterString(
            self.LEVELS, "Levels (e.g. 0-5,7)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.NUM_OF_CACHING_SERVICE_INSTANCES, "Number of workers (-1 = automatic)",
            type=QgsProcessingParameterNumber.Integer, defaultValue=-1, minValue=-1,
            maxValue=64))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AREA_OF_INTEREST, "Area of interest", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXPORT_EXTENT, "Export extent", optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, "Overwrite the export area in an existing cache",
            defaultValue=False))
        self.addOutput(QgsProcessingOutputFile(
            self.OUTPUT_CACHE_PATH, "Exported cache (Layers folder or package file)"))
        self.addOutput(QgsProcessingOutputNumber(self.TILE_COUNT, "Tiles exported"))

    def processAlgorithm(self, parameters, context, feedback):
        try:
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
        input_path = self.parameterAsString(parameters, self.INPUT_SERVICE, context).strip()
        if not input_path:
            raise QgsProcessingException("INPUT_SERVICE is empty: give a cache folder or package.")
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

        source = open_cache(input_path)
        try:
            scheme = source.scheme
            levels = select_levels(
                self.parameterAsString(parameters, self.LEVELS, context) or "",
                self.parameterAsString(parameters, self.SCALES, context) or "",
                scheme,
            )
            selection = self._selection(parameters, context, feedback, scheme)
            feedback.pushInfo(
                f"Input: {source.location} ({scheme.storage_format.label}, {scheme.tile_format}, "
                f"{scheme.tile_cols}x{scheme.tile_rows} px, {scheme.spatial_reference.describe()})")
            feedback.pushInfo(f"Levels: {','.join(map(str, levels))}")
            crs_extent = selection.bounds() or source.data_extent
            options = ExportOptions(
                target_dir=Path(target),
                storage=storage,
                package=package,
                overwrite=self.parameterAsBool(parameters, self.OVERWRITE, context),
                staged=self.parameterAsBool(parameters, self.COPY_DATA_FROM_SERVER, context),
                workers=workers if workers > 0 else auto_workers(),
                geographic_extent=self._lonlat(crs_extent, scheme),
            )
            feedback.pushInfo(f"Workers: {options.workers}")
            result = Exporter(
                source, levels, selection, options,
                progress=lambda fraction: feedback.setProgress(100.0 * fraction),
                is_canceled=feedback.isCanceled,
            ).run()
        finally:
            source.close()
        for level in result.levels:
            feedback.pushInfo(
                f"Level {level.level}: {level.tiles} tiles, {level.bytes} bytes")
        rate = result.tile_count / result.seconds if result.seconds else 0.0
        feedback.pushInfo(
            f"Exported {result.tile_count} tiles ({result.byte_count} bytes) in "
            f"{result.seconds:.2f} s ({rate:.0f} tiles/s) to {result.output_path}")
        return {
            self.TARGET_CACHE_PATH: target,
            self.OUTPUT_CACHE_PATH: str(result.output_path),
            self.TILE_COUNT: result.tile_count,
        }

    def _selection(self, parameters, context, feedback, scheme) -> Selection:
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
            return PolygonSelection(scheme, aoi_wkb(source, crs, context))
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
