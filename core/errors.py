"""Exceptions the engine raises; the Processing algorithm turns them into QgsProcessingException."""


class CacheError(Exception):
    """Bad input or an impossible request, with a message meant for the user."""


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
