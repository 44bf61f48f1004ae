"""The plugin's icon, one file for the Web menu action, the provider and the algorithm."""
from pathlib import Path

from qgis.PyQt.QtGui import QIcon

ICON_PATH = Path(__file__).resolve().parent.parent / "icon.png"


def plugin_icon() -> QIcon:
    return QIcon(str(ICON_PATH))
