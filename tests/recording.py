"""Everything a run lets a user (or a log file) read: every text channel of a Processing feedback
and the QGIS message log. Tests read what a user would read from here, and the token tests grep
every channel of it for the secret.
"""
from __future__ import annotations

# the feedback's text channels: method -> attribute holding what came through it
CHANNELS = {
    "pushInfo": "infos",
    "pushWarning": "warnings",
    "reportError": "errors",
    "pushCommandInfo": "commands",
    "pushDebugInfo": "debug",
    "pushConsoleInfo": "console",
    "setProgressText": "progress_texts",
}


def recording_feedback():
    """A QgsProcessingFeedback that keeps what comes through each of its text channels (and
    still passes it on, so its `textLog()` holds it too). QGIS is imported late, as the
    test modules do."""
    from qgis.core import QgsProcessingFeedback

    class RecordingFeedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            for attribute in CHANNELS.values():
                setattr(self, attribute, [])

        def pushInfo(self, info):  # noqa: N802 - QGIS API
            self.infos.append(info)
            super().pushInfo(info)

        def pushWarning(self, warning):  # noqa: N802 - QGIS API
            self.warnings.append(warning)
            super().pushWarning(warning)

        def reportError(self, error, fatalError=False):  # noqa: N802, N803 - QGIS API
            self.errors.append(error)
            super().reportError(error, fatalError)

        def pushCommandInfo(self, info):  # noqa: N802 - QGIS API
            self.commands.append(info)
            super().pushCommandInfo(info)

        def pushDebugInfo(self, info):  # noqa: N802 - QGIS API
            self.debug.append(info)
            super().pushDebugInfo(info)

        def pushConsoleInfo(self, info):  # noqa: N802 - QGIS API
            self.console.append(info)
            super().pushConsoleInfo(info)

        def setProgressText(self, text):  # noqa: N802 - QGIS API
            self.progress_texts.append(text)
            super().setProgressText(text)

        @property
        def text(self) -> str:
            """What came through every channel, one message a line."""
            return "\n".join(line for attribute in CHANNELS.values()
                             for line in getattr(self, attribute))

    return RecordingFeedback()


class MessageLogRecorder:
    """The QGIS message log (the desktop's Log Messages panel) while it is open; messages sent
    from other threads arrive through the event loop, which `text` turns first."""

    def __init__(self):
        from qgis.core import Qgis, QgsApplication

        self.messages: list[tuple[str, str]] = []
        self._signal = QgsApplication.messageLog().messageReceived[str, str, Qgis.MessageLevel]
        self._signal.connect(self._received)

    def _received(self, message: str, tag: str, level) -> None:
        self.messages.append((tag, message))

    @property
    def text(self) -> str:
        from qgis.core import QgsApplication

        QgsApplication.processEvents()
        return "\n".join(f"{tag}: {message}" for tag, message in self.messages)

    def close(self) -> None:
        self._signal.disconnect(self._received)
