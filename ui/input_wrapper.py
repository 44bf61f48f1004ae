"""INPUT_SERVICE in the dialogs: the project's tiled layers, a browser for cache folders and
packages, and a field for a URL or path, all in one editable combo box.

In the modeler the combo offers the model's string inputs instead; in the batch dialog it is a
line edit. The value is always what the algorithm takes: a path, a URL or a layer id.
"""
from __future__ import annotations

from qgis.core import (
    QgsDataSourceUri,
    QgsIconUtils,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
)
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QMenu,
    QToolButton,
    QWidget,
)

from ..processing_provider.translation import tr
from .text_wrapper import TextParameterWrapper

PACKAGE_FILTER = "Tile packages and cache definitions (*.tpk *.tpkx conf.xml Conf.xml)"


def tiled_layers(project: QgsProject) -> list[QgsRasterLayer]:
    """Layers of the project the export can read: ArcGIS MapServer layers, XYZ layers of an
    ArcGIS tile URL, and Esri caches opened through GDAL."""
    found = []
    for layer in project.mapLayers().values():
        if not isinstance(layer, QgsRasterLayer):
            continue
        provider, source = layer.providerType(), layer.source()
        if provider == "arcgismapserver":
            found.append(layer)
        elif provider == "wms":
            parts = QgsProviderRegistry.instance().decodeUri("wms", source)
            url = parts.get("url", "") or QgsDataSourceUri(source).param("url")
            if parts.get("type") == "xyz" and "/tile/" in url and (
                    "/MapServer" in url or "/ImageServer" in url):
                found.append(layer)
        elif provider == "gdal" and source.lower().split("|")[0].endswith(
                ("conf.xml", ".tpkx")):
            found.append(layer)
    return sorted(found, key=lambda layer: layer.name().lower())


class InputCombo(QWidget):
    """Editable combo of the project's tiled layers plus a browse button."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setObjectName("inputServiceCombo")
        self.combo.lineEdit().setPlaceholderText(
            tr("A tiled layer, a MapServer/ImageServer URL, a cache folder or a .tpk/.tpkx"))
        self.combo.setMinimumContentsLength(40)
        layout.addWidget(self.combo, 1)
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip(tr("Browse for a cache folder or a tile package"))
        browse.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(browse)
        menu.addAction(tr("Cache folder…"), self._pick_folder)
        menu.addAction(tr("Tile package or conf.xml…"), self._pick_file)
        browse.setMenu(menu)
        layout.addWidget(browse)
        self.fill(QgsProject.instance())

    def fill(self, project: QgsProject) -> None:
        text = self.combo.currentText()
        self.combo.clear()
        for layer in tiled_layers(project):
            self.combo.addItem(QgsIconUtils.iconForLayer(layer),
                               f"{layer.name()} (project layer)", layer.id())
        self.combo.setCurrentIndex(-1)
        self.combo.setEditText(text)

    def value(self) -> str:
        index = self.combo.findText(self.combo.currentText())
        if index >= 0 and self.combo.itemData(index):
            return self.combo.itemData(index)
        return self.combo.currentText().strip()

    def set_value(self, value) -> None:
        text = "" if value is None else str(value)
        index = self.combo.findData(text)
        if index >= 0:
            self.combo.setCurrentIndex(index)
        else:
            self.combo.setCurrentIndex(-1)
            self.combo.setEditText(text)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, tr("Cache dataset folder"), self.value())
        if folder:
            self.set_value(folder)

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, tr("Tile package or conf.xml"), self.value(),
                                              tr(PACKAGE_FILTER))
        if path:
            self.set_value(path)


class InputServiceWrapper(TextParameterWrapper):
    # model inputs, and other children's caches (e.g. a package exported before)
    MODEL_SOURCES = ([QgsProcessingParameterString, QgsProcessingParameterFile],
                     [QgsProcessingOutputString, QgsProcessingOutputFile,
                      QgsProcessingOutputFolder])

    def create_dialog_widget(self):
        widget = InputCombo()
        widget.combo.currentTextChanged.connect(lambda _: self.widgetValueHasChanged.emit(self))
        return widget

    def set_dialog_value(self, value) -> None:
        self.widget.set_value(value)

    def dialog_value(self):
        return self.widget.value()
