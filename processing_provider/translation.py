"""The adapter's user-visible strings through Qt's translation, in one context for the plugin.
Messages with values are translated as templates (`tr("... {} ...").format(...)`), so a
translation can move the values."""
from qgis.PyQt.QtCore import QCoreApplication

CONTEXT = "ExportMapServerCache"


def tr(text: str) -> str:
    return QCoreApplication.translate(CONTEXT, text)
