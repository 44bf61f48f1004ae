"""The shared shape of our string-parameter wrappers: a rich widget in the Toolbox dialog, an
editable combo of the model's sources in the modeler, a line edit in the batch dialog (so that
models and batches can feed them, qgis-notes §4.1)."""
from __future__ import annotations

from processing.gui.wrappers import DIALOG_BATCH, DIALOG_MODELER, WidgetWrapper
from qgis.core import (
    QgsProcessingModelChildParameterSource,
    QgsProcessingOutputString,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtWidgets import QComboBox, QLineEdit

from ..qgis_compat import MODEL_STATIC_VALUE


def static_value(value):
    """A modeler's static value as the plain value the widgets show."""
    if (isinstance(value, QgsProcessingModelChildParameterSource)
            and value.source() == MODEL_STATIC_VALUE):
        return value.staticValue()
    return value


class TextParameterWrapper(WidgetWrapper):
    # what the modeler may bind: (parameter types, output types)
    MODEL_SOURCES: tuple = ([QgsProcessingParameterString], [QgsProcessingOutputString])

    def createWidget(self):
        if self.dialogType == DIALOG_MODELER:
            combo = QComboBox()
            combo.setEditable(True)
            for source in self.dialog.getAvailableValuesOfType(*self.MODEL_SOURCES):
                combo.addItem(self.dialog.resolveValueDescription(source), source)
            combo.setEditText("")
            combo.currentTextChanged.connect(lambda _: self.widgetValueHasChanged.emit(self))
            return combo
        if self.dialogType == DIALOG_BATCH:
            edit = QLineEdit()
            edit.textChanged.connect(lambda _: self.widgetValueHasChanged.emit(self))
            return edit
        return self.create_dialog_widget()

    def setValue(self, value):
        value = static_value(value)
        if self.dialogType == DIALOG_MODELER:
            self.setComboValue(value)
        elif self.dialogType == DIALOG_BATCH:
            self.widget.setText("" if value is None else str(value))
        else:
            self.set_dialog_value(value)

    def value(self):
        if self.dialogType == DIALOG_MODELER:
            value = self.comboValue()
            if isinstance(value, QgsProcessingModelChildParameterSource):
                return value
            return value or None
        if self.dialogType == DIALOG_BATCH:
            return self.widget.text().strip()
        return self.dialog_value()

    # the Toolbox dialog's widget, for subclasses
    def create_dialog_widget(self):
        raise NotImplementedError

    def set_dialog_value(self, value) -> None:
        raise NotImplementedError

    def dialog_value(self):
        raise NotImplementedError
