"""The plugin is one code base for QGIS 3.22 .. 4.x: its sources pass the static Qt 6 / QGIS 4
check (tests/qt6_compat_check.py, PyQt6 from PyPI), the check reports Qt 5-only code when it comes
back, the compatibility module gives 3.22 its old values, and metadata.txt lets QGIS 4's plugin
manager install the plugin."""
from __future__ import annotations

import configparser
import importlib.util
import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessing,
    QgsProcessingModelChildParameterSource,
    QgsProcessingParameterNumber,
    QgsWkbTypes,
)

sys.path.insert(0, str(Path(__file__).parent))

from qt6_compat_check import COMPAT_MODULE, check_sources, plugin_sources  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
ALGORITHM_ID = "mapservercache:exportmapservercache"

QT5_ONLY = '''\
from PyQt5 import QtCore
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWebKit import QWebView
from qgis.PyQt.QtWidgets import QDialog, QWidget
from qgis.core import Qgis, QgsProcessing, QgsProcessingParameterNumber


def run(dialog: QDialog, widget: QWidget):
    dialog.exec_()
    role = Qt.UserRole
    number = QgsProcessingParameterNumber.Integer
    polygons = QgsProcessing.SourceType.TypeVectorPolygon
    colour = widget.palette().color(widget.palette().Disabled, QWebView)
    level = Qgis.Info
    sources = Qgis.ProcessingSourceType.VectorPolygon
    return QtCore, role, number, polygons, colour, level, sources


class Dialog(QDialog):
    def exec_(self):
        return super().exec()
'''

BOTH_LINES = '''\
from qgis.core import Qgis, QgsBlockingNetworkRequest, QgsProcessingContext
from qgis.PyQt import QtCore
from qgis.PyQt.QtCore import QEventLoop, Qt
from qgis.PyQt.QtGui import QPalette
from qgis.PyQt.QtNetwork import QNetworkRequest
from qgis.PyQt.QtWidgets import QAction, QDialog, QWidget

ROLE = Qt.ItemDataRole.UserRole


def run(dialog: QDialog, widget: QWidget):
    dialog.exec()
    action = QAction("Export", widget)
    colour = widget.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
    return (action, colour, ROLE, QEventLoop.ProcessEventsFlag.AllEvents, QtCore.QUrl,
            QNetworkRequest.Attribute.HttpStatusCodeAttribute, Qgis.MessageLevel.Info,
            QgsBlockingNetworkRequest.ErrorCode.TimeoutError, Qgis.QGIS_VERSION_INT,
            QgsProcessingContext.LayerDetails)
'''

VERSION_SPECIFIC = '''\
from qgis.core import Qgis, QgsProcessing

NEW = Qgis.ProcessingSourceType.VectorPolygon
OLD = QgsProcessing.SourceType.TypeVectorPolygon
'''


def _found(sources: dict[str, str]) -> set[tuple[str, int, str]]:
    return {(f.path, f.line, f.kind) for f in check_sources(sources).findings}


def test_the_plugin_sources_run_on_qt6_and_qgis4():
    report = check_sources(plugin_sources())
    assert not report.findings, (
        f"Qt 5 / QGIS 3-only code (checked against PyQt6 {report.pyqt_version} and QGIS 3.22):\n"
        + "\n".join(map(str, report.findings)))
    shipped = {"__init__.py", "plugin.py", COMPAT_MODULE, "core/exporter.py",
               "processing_provider/export_algorithm.py", "processing_provider/qgis_network.py",
               "ui/input_wrapper.py", "ui/level_wrapper.py", "ui/text_wrapper.py"}
    assert shipped <= set(report.files)
    assert not [path for path in report.files if path.split("/")[0] in ("tests", "scripts")]
    assert report.qt_names > 0 and report.qgis_names > 0
    assert report.pyqt_version.startswith("6.")


def test_the_check_reports_qt5_only_code():
    assert _found({"ui/old.py": QT5_ONLY}) == {
        ("ui/old.py", 1, "pyqt-import"),
        ("ui/old.py", 3, "qt6-missing"),  # QtWebKit is not in Qt 6
        ("ui/old.py", 9, "exec_"),
        ("ui/old.py", 10, "qt6-missing"),
        ("ui/old.py", 11, "qgis-unscoped-enum"),
        ("ui/old.py", 11, "qgis-moved-enum"),
        ("ui/old.py", 12, "qgis-moved-enum"),
        ("ui/old.py", 13, "qt6-instance-enum"),
        ("ui/old.py", 14, "qgis-unscoped-enum"),
        ("ui/old.py", 15, "qgis-not-in-3.22"),
        ("ui/old.py", 20, "exec_"),
    }


def test_the_check_says_how_to_write_a_qt_enum():
    report = check_sources({"ui/old.py": QT5_ONLY})
    messages = [f.message for f in report.findings if f.line == 10]
    assert messages == ["PyQt6.QtCore has no Qt.UserRole: write Qt.ItemDataRole.UserRole"]


def test_the_check_accepts_what_runs_on_both_lines():
    assert _found({"ui/new.py": BOTH_LINES}) == set()


def test_only_the_compatibility_module_names_version_specific_enums():
    assert _found({COMPAT_MODULE: VERSION_SPECIFIC}) == set()
    assert _found({"processing_provider/x.py": VERSION_SPECIFIC}) == {
        ("processing_provider/x.py", 3, "qgis-not-in-3.22"),
        ("processing_provider/x.py", 4, "qgis-moved-enum"),
    }


def test_the_engine_imports_neither_qgis_nor_qt():
    assert _found({"core/x.py": "from qgis.core import QgsGeometry\nimport PyQt5.QtCore\n"}) == {
        ("core/x.py", 1, "core-imports-qgis"),
        ("core/x.py", 2, "core-imports-qgis"),
        ("core/x.py", 2, "pyqt-import"),
    }


def test_on_qgis_3_22_the_compatibility_module_gives_the_old_values(plugin_provider):
    from export_map_server_cache import qgis_compat

    old_values = {
        "NUMBER_INTEGER": QgsProcessingParameterNumber.Integer,
        "NUMBER_DOUBLE": QgsProcessingParameterNumber.Double,
        "SOURCE_VECTOR_POLYGON": QgsProcessing.TypeVectorPolygon,
        "POLYGON_GEOMETRY": QgsWkbTypes.PolygonGeometry,
        "MODEL_STATIC_VALUE": QgsProcessingModelChildParameterSource.StaticValue,
    }
    for name, value in old_values.items():
        assert getattr(qgis_compat, name) == value, name
        assert type(getattr(qgis_compat, name)) is type(value), name
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID)
    types = {name: algorithm.parameterDefinition(name).dataType()
             for name in ("NUM_OF_CACHING_SERVICE_INSTANCES", "MAX_REQUESTS_PER_SECOND",
                          "MAX_TILE_COUNT", "COMPRESSION_QUALITY")}
    assert types == {"NUM_OF_CACHING_SERVICE_INSTANCES": QgsProcessingParameterNumber.Integer,
                     "MAX_REQUESTS_PER_SECOND": QgsProcessingParameterNumber.Double,
                     "MAX_TILE_COUNT": QgsProcessingParameterNumber.Integer,
                     "COMPRESSION_QUALITY": QgsProcessingParameterNumber.Integer}
    assert algorithm.parameterDefinition("AREA_OF_INTEREST").dataTypes() == [
        QgsProcessing.TypeVectorPolygon]


def _plugin_manager_accepts(qgis_version: str, general: configparser.SectionProxy) -> bool:
    """QGIS's own rule (pyplugin_installer): a missing qgisMaximumVersion means <major>.99."""
    installer = Path(QgsApplication.pkgDataPath()) / "python" / "pyplugin_installer"
    path = installer / "version_compare.py"
    spec = importlib.util.spec_from_file_location("qgis_version_compare", path)
    version_compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(version_compare)
    minimum = general.get("qgisMinimumVersion", "").strip()
    maximum = general.get("qgisMaximumVersion", "").strip() or minimum[0] + ".99"
    return version_compare.isCompatible(qgis_version, minimum, maximum)


def test_the_metadata_lets_qgis_3_22_to_4_install_the_plugin():
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "metadata.txt", encoding="utf-8")
    general = parser["general"]
    for version in ("3.22.16", "3.44.0", "4.0.0", "4.2.1", "4.99.0"):
        assert _plugin_manager_accepts(version, general), version
    assert not _plugin_manager_accepts("3.20.0", general)
    assert not _plugin_manager_accepts("5.0.0", general)
    # QGIS 3.x builds on Qt 6 asked for this key; QGIS 4 goes by qgisMaximumVersion alone
    assert general.getboolean("supportsQt6")
    version = general["version"].strip()
    assert general["changelog"].split()[0] == version
