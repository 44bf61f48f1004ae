"""Export Map Server Cache: QGIS plugin entry point.

QGIS (desktop and ``qgis_process``) calls :func:`classFactory`. Keep this module free of heavy
imports: the plugin class is imported lazily.
"""


def classFactory(iface):
    """Return the plugin instance. ``iface`` is ``None`` under ``qgis_process``."""
    from .plugin import ExportMapServerCachePlugin

    return ExportMapServerCachePlugin(iface)
