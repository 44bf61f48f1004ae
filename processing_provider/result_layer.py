"""LOAD_RESULT: the exported cache on the map, where GDAL (and so QGIS) can read it.

GDAL's ESRIC driver reads Compact V2 cache datasets (through conf.xml) and, from GDAL 3.8,
.tpkx packages; nothing reads Compact V1, Exploded or .tpk in QGIS, so those get a message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from osgeo import gdal
from qgis.core import QgsProcessingContext, QgsRasterLayer

from ..core.tiling_scheme import StorageFormat

GDAL_TPKX = 3080000  # the first GDAL release whose ESRIC driver opens .tpkx


def viewable_path(output: Path, storage: StorageFormat, package: bool,
                  feedback) -> Optional[Path]:
    """What QGIS can open of the output, or None (with a message saying what is needed)."""
    if storage is StorageFormat.COMPACT_V2 and not package:
        return output / "conf.xml"
    if storage is StorageFormat.COMPACT_V2 and int(gdal.VersionInfo()) >= GDAL_TPKX:
        return output
    if package and storage is StorageFormat.COMPACT_V2:
        feedback.pushWarning(
            f"The .tpkx cannot be shown in this QGIS: its GDAL {gdal.__version__} reads tile "
            "packages from version 3.8 on. Export a COMPACT_V2 CACHE_DATASET to view the "
            "tiles in QGIS; the .tpkx opens in ArcGIS Pro, ArcGIS Field Maps and Runtime apps.")
    else:
        feedback.pushInfo(
            f"The {'tile package' if package else storage.label + ' cache'} is not added to "
            "the map: QGIS (GDAL) reads only Compact V2 caches. Export a COMPACT_V2 "
            "CACHE_DATASET to view the tiles in QGIS.")
    return None


def add_result_layer(path: Path, context: QgsProcessingContext, feedback,
                     output_name: str) -> None:
    name = path.parent.parent.name if path.name == "conf.xml" else path.stem
    layer = QgsRasterLayer(str(path), name, "gdal")
    if not layer.isValid():
        feedback.pushWarning(f"GDAL could not open {path}, so it is not added to the map.")
        return
    context.temporaryLayerStore().addMapLayer(layer)
    context.addLayerToLoadOnCompletion(layer.id(), QgsProcessingContext.LayerDetails(
        name, context.project(), output_name))
