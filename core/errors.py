"""Every exception the engine raises, in one hierarchy.

`CacheError` and its subclasses are the user's errors: bad input or an impossible request, with
a message that says what to do; the Processing algorithm shows that message (and no traceback).
`EngineBug` and its subclasses are programming errors (`RuntimeError`s): a broken promise inside
the engine, never worded for the user and always shown with their traceback.

The engine speaks of its own concepts (the input, the levels, the area); which Processing
parameter holds that concept is the adapter's business: an error says what it is about with a
`Concern`, and the algorithm names the parameter.
"""
from __future__ import annotations

import enum
from typing import Optional


class Concern(enum.Enum):
    """The part of the request an error is about."""

    INPUT = "input"
    LEVELS = "levels"
    SCALES = "scales"
    RESOLUTIONS = "resolutions"
    AREA = "area"
    TILE_FORMAT = "tile format"
    REQUEST_RATE = "request rate"
    CREDENTIALS = "credentials"
    TARGET = "target"


class CacheError(Exception):
    """Bad input or an impossible request, with a message meant for the user."""

    def __init__(self, message: str = "", concern: Optional[Concern] = None):
        super().__init__(message)
        self.concern = concern


class CorruptCacheError(CacheError):
    """A cache file whose bytes do not follow the format."""

    ADVICE = (
        " The input cache is damaged: copy the file again from the original cache, or leave "
        "its level or area out of the export."
    )

    def __str__(self) -> str:
        return super().__str__() + self.ADVICE


class ExportCanceled(CacheError):
    """The user canceled the export; nothing half-written is left behind."""


class ServiceAuthError(CacheError):
    """The service refused our credentials: retrying cannot help."""


class DownloadFailed(CacheError):
    """Tiles that never came; the message counts them (across the run) and says why."""


class EngineBug(RuntimeError):
    """A programming error inside the engine: shown with its traceback, never as advice."""
