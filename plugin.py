"""QGIS plugin class: registers the Processing provider and, in the desktop, a Web menu action.

``qgis_process`` calls only :meth:`ExportMapServerCachePlugin.initProcessing` (with ``iface`` None);
the desktop calls only :meth:`ExportMapServerCachePlugin.initGui`, which calls ``initProcessing``
itself. Nothing outside ``initGui``/``unload`` may touch ``iface``.
"""

from qgis.core import QgsApplication

from .processing_provider.provider import MapServerCacheProvider
from .processing_provider.translation import tr

ALGORITHM_ID = "mapservercache:exportmapservercache"


class ExportMapServerCachePlugin:
    """Plugin object returned by ``classFactory``."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None

    # -- Processing (desktop and qgis_process) -------------------------------------------------
    def initProcessing(self):
        """Create and register the Processing provider (idempotent)."""
        if self.provider is not None:
            return
        # Keep a Python reference: a provider only owned by the registry gets garbage-collected.
        self.provider = MapServerCacheProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    # -- Desktop GUI ---------------------------------------------------------------------------
    def initGui(self):
        """Register the provider and add the Web menu / Web toolbar action."""
        self.initProcessing()

        from qgis.PyQt.QtWidgets import QAction

        from .processing_provider.plugin_icon import plugin_icon

        main_window = self.iface.mainWindow()
        self.action = QAction(
            plugin_icon(),
            tr("Export Map Server Cache\u2026"),
            main_window,
        )
        self.action.setObjectName("exportMapServerCacheAction")
        self.action.setToolTip(tr("Export the tiles of an ArcGIS map service cache"))
        self.action.triggered.connect(self.run)
        self.iface.addPluginToWebMenu(self.menu_name(), self.action)
        self.iface.addWebToolBarIcon(self.action)

    @staticmethod
    def menu_name():
        return tr("&Export Map Server Cache")

    def run(self):
        """Open the Processing dialog of the export algorithm."""
        import processing

        processing.execAlgorithmDialog(ALGORITHM_ID)

    def unload(self):
        """Remove everything added by ``initGui``/``initProcessing``."""
        if self.action is not None:
            if self.iface is not None:
                self.iface.removePluginWebMenu(self.menu_name(), self.action)
                self.iface.removeWebToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            registry = QgsApplication.processingRegistry()
            if registry.providerById(self.provider.id()) is not None:
                registry.removeProvider(self.provider)
            self.provider = None
