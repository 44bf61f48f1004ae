"""Processing provider `mapservercache`."""
from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .export_algorithm import ExportMapServerCacheAlgorithm

ICON = Path(__file__).resolve().parent.parent / "icon.png"


class MapServerCacheProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "mapservercache"

    def name(self) -> str:
        return "Map server cache"

    def longName(self) -> str:
        return "Export Map Server Cache"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(ExportMapServerCacheAlgorithm())
