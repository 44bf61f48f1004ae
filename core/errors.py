"""Exceptions the engine raises; the Processing algorithm turns them into QgsProcessingException."""


class CacheError(Exception):
    """Bad input or an impossible request, with a message meant for the user."""


class CorruptCacheError(CacheError):
    """A cache file whose bytes do not follow the format."""


class ExportCanceled(CacheError):
    """The user canceled the export; nothing half-written is left behind."""
