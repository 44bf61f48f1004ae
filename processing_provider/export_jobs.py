"""EXPORT_METHOD: which way a service's tiles are taken (the service's own exportTiles job, or
tile requests), why, and the job path's runs (estimate and export) reported to the feedback."""
from __future__ import annotations

from typing import Optional

from qgis.core import QgsProcessingException

from ..core.errors import CacheError
from ..core.export.job_export import DEFAULT_JOBS_AT_ONCE, JobExport, run_jobs
from ..core.export.job_split import split_jobs
from ..core.exporter import ExportOptions, ExportResult
from ..core.grid.tiling_scheme import StorageFormat
from ..core.selection.tile_selection import Selection
from ..core.sources.export_job import ServerJob
from ..core.sources.export_tiles_request import ExportTilesRequest
from ..core.sources.source import CacheSource
from .translation import tr

EXPORT_METHODS = ("automatic", "exportTiles job", "tile requests")
AUTOMATIC, JOB, TILES = range(3)


def choose_method(choice: int, source: CacheSource) -> tuple[bool, str]:
    """(use the server's job, why), as the log tells it."""
    if not source.is_service:
        if choice == JOB:
            raise QgsProcessingException(tr(
                "EXPORT_METHOD 1 (the server's exportTiles job) needs a MapServer or "
                "ImageServer URL as input; a local cache is copied directly (EXPORT_METHOD 0)."))
        return False, tr("the input is a local cache")
    allowed = source.info.export_tiles_allowed
    if choice == TILES:
        return False, tr("EXPORT_METHOD asks for tile requests")
    if choice == JOB:
        if allowed is False:
            raise QgsProcessingException(tr(
                "EXPORT_METHOD 1: the service does not allow exportTiles (exportTilesAllowed "
                "is false). Use EXPORT_METHOD 2 (tile requests) or 0 (automatic)."))
        return True, tr("EXPORT_METHOD asks for the server's exportTiles job")
    if allowed:
        return True, tr("the service allows exportTiles (exportTilesAllowed is true)")
    return False, tr("the service does not allow exportTiles (exportTilesAllowed is {})"
                     ).format("false" if allowed is False else "not stated")


def package_storage(source: CacheSource, wanted: StorageFormat) -> StorageFormat:
    """The package the server is asked for: .tpkx where the service offers Compact V2 and the
    output is not Compact V1, else .tpk (every exportTiles server can make one)."""
    if wanted is not StorageFormat.COMPACT and source.info.compact_v2_allowed:
        return StorageFormat.COMPACT_V2
    return StorageFormat.COMPACT


def estimate_by_job(source: CacheSource, levels: list[int], selection: Selection, feedback
                    ) -> Optional[tuple[int, int]]:
    """(tiles, bytes) by estimateExportTilesSize; None where the server cannot answer it."""
    request = ExportTilesRequest(tuple(levels), selection.bounds(),
                                 _polygon_wkb(selection))
    job = ServerJob(source.layout.client, feedback.pushInfo, feedback.isCanceled)
    try:
        tiles, size = job.estimate(request.query(source.scheme))
    except CacheError as exc:
        feedback.pushWarning(tr("estimateExportTilesSize did not answer ({}): the tiles are "
                                "counted by their tilemaps instead.").format(exc))
        return None
    feedback.pushInfo(tr("estimateExportTilesSize: {} tiles, {} bytes").format(tiles, size))
    return tiles, size


def export_by_jobs(source: CacheSource, levels: list[int], selection: Selection,
                   options: ExportOptions, jobs_at_once: int, clip: bool, feedback
                   ) -> ExportResult:
    """The export by the server's jobs, split past its maxExportTilesCount."""
    limit = source.info.max_export_tiles_count
    parts = split_jobs(source, levels, selection, limit if limit and limit > 0 else 10**12)
    if len(parts) > 1:
        feedback.pushInfo(tr("The export is past {:.0%} of the service's maxExportTilesCount "
                             "({}): {} jobs of {} tiles.").format(
            0.9, limit, len(parts), ", ".join(str(part.tiles) for part in parts)))
    return run_jobs(
        JobExport(source, levels, selection, options, parts,
                  package_storage(source, options.storage), clip,
                  jobs_at_once if jobs_at_once > 0 else DEFAULT_JOBS_AT_ONCE),
        feedback.pushInfo, lambda fraction: feedback.setProgress(100.0 * fraction),
        feedback.isCanceled)


def _polygon_wkb(selection: Selection) -> Optional[bytes]:
    return selection.polygon.wkb if selection.polygon is not None else None
