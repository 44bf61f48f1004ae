"""LOAD_RESULT: the exported cache on the map, where GDAL (and so QGIS) can read it.

GDAL's ESRIC driver reads Compact V2 cache datasets (through conf.xml) and, from GDAL 3.8,
.tpkx packages; nothing reads Compact V1, Exploded or .tpk in QGIS, so those get a message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from osgeo import gdal
from qgis.core import QgsProcessingContext, QgsRasterLayer

from ..core.formats.conf_xml import parse_conf_xml
from ..core.grid.tiling_scheme import StorageFormat
from .translation import tr

GDAL_TPKX = 3080000  # the first GDAL release whose ESRIC driver opens .tpkx


def viewable_path(output: Path, storage: StorageFormat, package: bool,
                  feedback) -> Optional[Path]:
    """What QGIS can open of the output, or None (with a message saying what is needed)."""
    if storage is StorageFormat.COMPACT_V2 and not package:
        return _readable(output / "conf.xml", feedback)
    if storage is StorageFormat.COMPACT_V2 and int(gdal.VersionInfo()) >= GDAL_TPKX:
        return output
    if package and storage is StorageFormat.COMPACT_V2:
        feedback.pushWarning(tr(
            "The .tpkx cannot be shown in this QGIS: its GDAL {} reads tile packages from "
            "version 3.8 on. Export a COMPACT_V2 CACHE_DATASET to view the tiles in QGIS; the "
            ".tpkx opens in ArcGIS Pro, ArcGIS Field Maps and Runtime apps.").format(
            gdal.__version__))
    else:
        what = tr("tile package") if package else tr("{} cache").format(storage.label)
        feedback.pushInfo(tr(
            "The {} is not added to the map: QGIS (GDAL) reads only Compact V2 caches. Export "
            "a COMPACT_V2 CACHE_DATASET to view the tiles in QGIS.").format(what))
    return None


def _readable(conf: Path, feedback) -> Optional[Path]:
    """The dataset, unless this GDAL would misread it: GDAL 3.6's ESRIC driver gives tiles
    other than 256 px blocks of 256 px and then corrupts memory reading them, which would take
    QGIS down."""
    try:
        dataset = gdal.Open(str(conf))
    except RuntimeError:  # gdal.UseExceptions() is process-wide: another plugin may have set it
        dataset = None
    if dataset is None:
        feedback.pushWarning(tr("GDAL {} cannot open {}; it is not added to the map.").format(
            gdal.__version__, conf))
        return None
    block = dataset.GetRasterBand(1).GetBlockSize()[0]
    tile = parse_conf_xml(conf.read_bytes(), str(conf)).tile_cols
    dataset = None
    if block != tile:
        feedback.pushWarning(tr(
            "The cache has {} px tiles, which GDAL {} misreads (it would crash QGIS), so it is "
            "not added to the map. Newer GDAL releases read it.").format(tile, gdal.__version__))
        return None
    return conf


def add_result_layer(path: Path, context: QgsProcessingContext, feedback,
                     output_name: str) -> None:
    name = path.parent.parent.name if path.name == "conf.xml" else path.stem
    layer = QgsRasterLayer(str(path), name, "gdal")
    if not layer.isValid():
        feedback.pushWarning(tr("GDAL could not open {}, so it is not added to the map.")
                             .format(path))
        return
    context.temporaryLayerStore().addMapLayer(layer)
    context.addLayerToLoadOnCompletion(layer.id(), QgsProcessingContext.LayerDetails(
        name, context.project(), output_name))
