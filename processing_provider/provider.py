"""Processing provider `mapservercache`."""
from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .export_algorithm import ExportMapServerCacheAlgorithm
from .plugin_icon import plugin_icon


class MapServerCacheProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "mapservercache"

    def name(self) -> str:
        return "Map server cache"

    def longName(self) -> str:
        return "Export Map Server Cache"

    def icon(self) -> QIcon:
        return plugin_icon()

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(ExportMapServerCacheAlgorithm())
