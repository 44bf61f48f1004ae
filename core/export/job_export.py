"""An export by the service's own exportTiles jobs: the parts of the export (export.job_split) run
as server jobs, a few at once; each downloaded package is checked (opened, its tiles counted) and
delivered: kept as it is when it already is the output asked for, else written into the target
by the exporter with the package as its input (format conversion, MERGE/OVERWRITE, tile format,
clipping to the area of interest). Downloads live in a hidden folder beside the target, removed
at the end.
"""
from __future__ import annotations

import os
import queue
import shutil
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..errors import CacheError, CorruptCacheError
from ..exporter import Exporter, ExportOptions, ExportResult, LevelResult
from ..grid.tiling_scheme import StorageFormat
from ..selection.tile_selection import Selection
from ..sources.export_job import JobTiming, ServerJob
from ..sources.local_cache import open_cache
from ..sources.service import ServiceSource
from .estimate import estimate
from .job_split import JobPart

DEFAULT_JOBS_AT_ONCE = 2
PACKAGE_SUFFIX = {StorageFormat.COMPACT: ".tpk", StorageFormat.COMPACT_V2: ".tpkx"}


@dataclass
class JobExport:
    """What the jobs are asked for and how their packages become the output."""

    source: ServiceSource
    levels: list[int]
    selection: Selection
    options: ExportOptions
    parts: list[JobPart]
    package_storage: StorageFormat  # what the server is asked to build (.tpkx or .tpk)
    clip: bool  # the output is clipped to an area of interest (the server's tiles are whole)
    jobs_at_once: int = DEFAULT_JOBS_AT_ONCE
    timing: JobTiming = JobTiming()


def run_jobs(export: JobExport, report: Callable[[str], None],
             progress: Callable[[float], None], is_canceled: Callable[[], bool]
             ) -> ExportResult:
    """Runs every part's job, delivering each package as it arrives; a job that fails ends the
    run (the others are cancelled) with the server's messages."""
    started = time.monotonic()
    name = export.options.name or export.source.name
    work = export.options.target_dir / f".{name}.jobs-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    messages: queue.Queue = queue.Queue()  # reported from this (the calling) thread only
    stop = [False]

    def canceled() -> bool:
        return stop[0] or is_canceled()

    def one(part: JobPart) -> Path:
        job = ServerJob(export.source.layout.client, messages.put, canceled, export.timing)
        request = part.request(export.source, export.selection, storage=export.package_storage,
                               quality=export.options.quality, optimize=export.options.optimize)
        return job.export(request.query(export.source.scheme), work,
                          lambda done, total: messages.put(
                              f"exportTiles job {job.job_id}: downloaded {done} of "
                              f"{total if total is not None else '?'} bytes"))

    results: list[ExportResult] = []
    try:
        with ThreadPoolExecutor(max(1, export.jobs_at_once),
                                thread_name_prefix="exportTiles") as pool:
            pending: dict[Future, JobPart] = {pool.submit(one, part): part
                                              for part in export.parts}
            try:
                while pending:
                    done, _ = wait(list(pending), timeout=0.05, return_when=FIRST_COMPLETED)
                    export.source.layout.client.transport.idle()
                    _flush(messages, report)
                    for future in done:
                        part = pending.pop(future)
                        path = future.result()
                        _flush(messages, report)
                        results.extend(_deliver(export, part, path, report, len(results) == 0
                                                and len(export.parts) == 1))
                        path.unlink(missing_ok=True)
                        progress(len(results) / len(export.parts))
            except BaseException:
                stop[0] = True  # the other jobs are cancelled on the server too
                raise
            finally:
                _flush(messages, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not results:
        raise CacheError("The server's jobs exported no tile.")
    return _combined(results, time.monotonic() - started, export.levels)


def _deliver(export: JobExport, part: JobPart, path: Path, report: Callable[[str], None],
             only: bool) -> list[ExportResult]:
    """The package of one part checked and made (part of) the output."""
    try:
        package = open_cache(str(path))
    except CacheError as exc:
        raise CorruptCacheError(f"The server's package is not a readable tile package: {exc}"
                                ) from None
    try:
        held = estimate(package, sorted(package.layout.levels()), Selection())
        tiles = sum(level.tiles for level in held)
        report(f"The server's package {path.name}: {tiles} tiles, {path.stat().st_size} bytes.")
        if tiles == 0:
            return []
        levels = [level for level in export.levels if level in part.levels]
        selection = part.selection(export.selection)
        options = replace(export.options, name=export.options.name or export.source.name)
        keep = only and _as_is(export, options, package, levels, selection, tiles)
        if not keep:
            return [Exporter(package, levels, selection, options).run()]
    finally:
        package.close()
    return [_keep(path, options, held, report)]


def _as_is(export: JobExport, options: ExportOptions, package, levels: list[int],
           selection: Selection, tiles: int) -> bool:
    """Whether the server's package already is the output asked for: a new package of the same
    storage, tile format and tiles as the export would write."""
    target = options.target_dir / f"{options.name}{PACKAGE_SUFFIX.get(options.storage, '')}"
    if not (options.package and options.storage is export.package_storage
            and options.tile_format in (None, export.source.scheme.tile_format)
            and not options.optimize and not export.clip and not target.exists()):
        return False
    wanted = sum(level.tiles for level in estimate(package, levels, selection))
    return wanted == tiles


def _keep(path: Path, options: ExportOptions, held, report: Callable[[str], None]
          ) -> ExportResult:
    target = options.target_dir / f"{options.name}{PACKAGE_SUFFIX[options.storage]}"
    os.replace(path, target)
    report(f"The server's package is the output as it is: {target.name}.")
    return ExportResult(target, sum(level.tiles for level in held),
                        sum(level.bytes for level in held), 0.0,
                        [LevelResult(level.level, level.tiles, level.bytes) for level in held])


def _combined(results: list[ExportResult], seconds: float, levels: list[int]) -> ExportResult:
    per_level = {level: LevelResult(level) for level in levels}
    for result in results:
        for level in result.levels:
            into = per_level.setdefault(level.level, LevelResult(level.level))
            into.tiles += level.tiles
            into.bytes += level.bytes
            into.bundles += level.bundles
    return ExportResult(results[-1].output_path, sum(r.tile_count for r in results),
                        sum(r.byte_count for r in results), seconds,
                        [per_level[level] for level in sorted(per_level)])


def _flush(messages: queue.Queue, report: Callable[[str], None]) -> None:
    while True:
        try:
            report(messages.get_nowait())
        except queue.Empty:
            return

