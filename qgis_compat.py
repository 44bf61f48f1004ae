"""QGIS enum values whose spelling differs between QGIS 3.22 and QGIS 4, picked once by version.

QGIS moved these enums into `Qgis` (3.30 to 3.36) and QGIS 4 dropped the old class-level names,
which are all QGIS 3.22 has. Everything else the plugin uses is spelled alike on both lines (Qt
enums fully scoped, enums still in their class such as QgsBlockingNetworkRequest.ErrorCode), so
it is used directly; tests/qt6_compat_check.py keeps the old spellings out of every other module.
"""
from qgis.core import Qgis

if Qgis.QGIS_VERSION_INT >= 33000:
    POLYGON_GEOMETRY = Qgis.GeometryType.Polygon
else:
    from qgis.core import QgsWkbTypes

    POLYGON_GEOMETRY = QgsWkbTypes.GeometryType.PolygonGeometry

if Qgis.QGIS_VERSION_INT >= 33400:
    MODEL_STATIC_VALUE = Qgis.ProcessingModelChildParameterSource.StaticValue
else:
    from qgis.core import QgsProcessingModelChildParameterSource

    MODEL_STATIC_VALUE = QgsProcessingModelChildParameterSource.Source.StaticValue

if Qgis.QGIS_VERSION_INT >= 33600:
    NUMBER_INTEGER = Qgis.ProcessingNumberParameterType.Integer
    NUMBER_DOUBLE = Qgis.ProcessingNumberParameterType.Double
    SOURCE_VECTOR_POLYGON = Qgis.ProcessingSourceType.VectorPolygon
    PARAMETER_ADVANCED = Qgis.ProcessingParameterFlag.Advanced
else:
    from qgis.core import (
        QgsProcessing,
        QgsProcessingParameterDefinition,
        QgsProcessingParameterNumber,
    )

    NUMBER_INTEGER = QgsProcessingParameterNumber.Type.Integer
    NUMBER_DOUBLE = QgsProcessingParameterNumber.Type.Double
    SOURCE_VECTOR_POLYGON = QgsProcessing.SourceType.TypeVectorPolygon
    PARAMETER_ADVANCED = QgsProcessingParameterDefinition.Flag.FlagAdvanced
