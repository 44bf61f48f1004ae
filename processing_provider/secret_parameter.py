"""A string parameter whose value QGIS never echoes: the Processing log, the history and "copy
as Python command" show asterisks, so an ArcGIS token does not end up in them."""
from __future__ import annotations

from qgis.core import QgsProcessingParameterString

MASK = "'********'"


class SecretStringParameter(QgsProcessingParameterString):
    def __init__(self, name: str, description: str = ""):
        super().__init__(name, description, optional=True)

    def clone(self):
        copy = SecretStringParameter(self.name(), self.description())
        copy.setFlags(self.flags())
        return copy

    def valueAsPythonString(self, value, context) -> str:
        if value in (None, ""):
            return super().valueAsPythonString(value, context)
        return MASK
