"""String parameters whose secrets QGIS never echoes: wherever QGIS shows a value (the Python
command, so the Processing history and "Copy as Python command"; the dialog's parameter log; in
QGIS 3.24 and later also the JSON and qgis_process forms of the history), the token is masked.
"""
from __future__ import annotations

from qgis.core import QgsProcessingParameterString, QgsProcessingUtils

from ..core.sources.service_url import MASK, redacted

ENV_PREFIX = "env:"  # TOKEN=env:NAME names an environment variable: no secret in it


class _MaskedString(QgsProcessingParameterString):
    """A string parameter whose values QGIS sees through `shown`."""

    def shown(self, value):
        """The value as QGIS may show it: a string, or None to let QGIS show it itself."""
        raise NotImplementedError

    def clone(self):
        copy = type(self)(self.name(), self.description())
        copy.setFlags(self.flags())
        copy.setMetadata(self.metadata())
        copy.setHelp(self.help())
        return copy

    def valueAsPythonString(self, value, context) -> str:  # noqa: N802 - QGIS API
        shown = self.shown(value)
        if shown is None:
            return super().valueAsPythonString(value, context)
        return QgsProcessingUtils.stringToPythonLiteral(shown)

    # QGIS 3.24 and later: the dialog's parameter log, the history's JSON and qgis_process
    # command line, "Copy as JSON"
    def valueAsString(self, value, context):  # noqa: N802 - QGIS API
        shown = self.shown(value)
        if shown is None:
            return super().valueAsString(value, context)
        return shown, True

    def valueAsJsonObject(self, value, context):  # noqa: N802 - QGIS API
        shown = self.shown(value)
        if shown is None:
            return super().valueAsJsonObject(value, context)
        return shown


class SecretStringParameter(_MaskedString):
    """TOKEN: every value but `env:NAME` (which names where the token is, not the token) is
    shown as asterisks."""

    def __init__(self, name: str, description: str = ""):
        super().__init__(name, description, optional=True)

    def shown(self, value):
        if value is None or value == "":
            return None
        if isinstance(value, str) and value.strip().startswith(ENV_PREFIX):
            return value
        return MASK


class ServiceInputParameter(_MaskedString):
    """INPUT_SERVICE: a URL's `token=` is shown as asterisks, the rest as typed."""

    def __init__(self, name: str, description: str = ""):
        super().__init__(name, description)

    def shown(self, value):
        return redacted(value) if isinstance(value, str) else None
