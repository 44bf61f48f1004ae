"""Running an export: plan the bundles (export.plan), run the work on each bundle
(export.bundle_job) in a worker pool (export.pool), then commit the target (export.targets).

Each 128x128 bundle of the target is written by exactly one worker, so no two threads ever share
a bundle file. Only the bundle list of the export is held in memory, never a level's tiles.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from .errors import CacheError, Concern, ExportCanceled
from .export.bundle_job import BundleJob
from .export.bundle_result import BundleResult
from .export.checkpoint import plan_key
from .export.disk_space import check_free_space, stored_bytes
from .export.kill_points import kill_point
from .export.plan import plan_bundles
from .export.pool import run_pool
from .export.progress import ExportProgress
from .export.target_lock import TargetLock
from .export.targets import (
    DatasetTarget,
    Finish,
    PackageTarget,
    Target,
    check_writable,
    target_location,
)
from .export.verify import verify_output
from .grid.extent import Extent
from .grid.spatial_reference import geographic_extent
from .grid.tiling_scheme import StorageFormat, TileRange, TilingScheme
from .pixels.composer import PixelOptions
from .pixels.tile_image import DEFAULT_JPEG_QUALITY, TileEncoding
from .selection.tile_selection import Selection
from .sources.source import CacheSource

LOG = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8
DAMAGED_EXAMPLES = 3  # damaged tiles named per level in the log


@dataclass
class ExportOptions:
    target_dir: Path
    storage: StorageFormat
    package: bool = False
    overwrite: bool = False
    workers: int = -1
    name: Optional[str] = None
    geographic_extent: Optional[Extent] = None  # lon/lat of the export, for package metadata
    tile_format: Optional[str] = None  # None: the input's (or the existing target's) format
    quality: Optional[int] = None  # JPEG quality of new tiles; None: the cache's, else 75
    optimize: bool = False  # recompress JPEG tiles at `quality` where that makes them smaller
    background: tuple[int, int, int] = (255, 255, 255)  # outside pixels where no alpha
    fail_on_damaged: bool = False  # a damaged input tile fails the run (else: left out)


@dataclass
class LevelResult:
    level: int
    tiles: int = 0
    bytes: int = 0
    bundles: int = 0
    damaged: int = 0  # input tiles left out as damaged
    damaged_examples: list[str] = field(default_factory=list)  # a few, "R12 C34: why"


@dataclass
class ExportResult:
    output_path: Path
    tile_count: int
    byte_count: int
    seconds: float
    levels: list[LevelResult] = field(default_factory=list)
    verified: str = ""  # what the re-read after writing found (export.verify)


def auto_workers() -> int:
    return max(2, min(MAX_AUTO_WORKERS, os.cpu_count() or 2))


def _describe_extent(source: CacheSource) -> str:
    if source.data_extent is None:
        return ""
    e = source.data_extent
    return f" The cache covers {e.xmin:.6g}, {e.ymin:.6g}, {e.xmax:.6g}, {e.ymax:.6g} in its CRS."


class Exporter:
    """One export from `source` with the given selection; call `run()` once."""

    def __init__(
        self,
        source: CacheSource,
        levels: list[int],
        selection: Selection,
        options: ExportOptions,
        progress: Optional[Callable[[float], None]] = None,
        is_canceled: Optional[Callable[[], bool]] = None,
        report: Optional[Callable[[str], None]] = None,
        expected: Optional[dict[int, int]] = None,
        expected_bytes: Optional[int] = None,
    ):
        """`progress` gets the fraction done, `report` a line per level every few seconds;
        `expected` = tiles per level when estimated beforehand (downloads), `expected_bytes`
        their bytes (a local copy's are its bundle files' sizes)."""
        self.source, self.levels, self.selection, self.options = source, levels, selection, options
        self._progress = progress or (lambda fraction: None)
        self._report = report or (lambda line: None)
        self._expected, self._expected_bytes = expected, expected_bytes
        self._is_canceled = is_canceled or (lambda: False)
        self._stop = threading.Event()

    def _target(self) -> Target:
        name = self.options.name or self.source.name
        scheme = self.source.scheme
        if self.options.package:
            return PackageTarget(self.options.target_dir, name, self.options.storage, scheme,
                                 self.levels, self._plan_key())
        return DatasetTarget(self.options.target_dir, name, self.options.storage, scheme,
                             self.levels, self._plan_key())

    def _plan_key(self) -> str:
        """What makes this export this export (export/checkpoint.py): its input as it is now,
        its levels and selection, and every option that changes a byte of the output."""
        options = asdict(self.options)
        for irrelevant in ("target_dir", "workers", "geographic_extent"):
            del options[irrelevant]
        return plan_key({"input": str(self.source.location),
                         "input_state": _file_state(self.source.location),
                         "levels": self.levels, "selection": self.selection.identity(),
                         "options": options})

    def run(self) -> ExportResult:
        started = time.monotonic()
        tasks = plan_bundles(self.source, self.levels, self.selection)
        if not tasks:
            raise CacheError(
                "The export extent or area of interest does not overlap any tile of the cache "
                f"at the chosen levels ({_levels_text(self.levels)}); nothing was written."
                + _describe_extent(self.source)
            )
        LOG.info("%d bundles to visit at levels %s.", len(tasks), _levels_text(self.levels))
        kill_point("planned")
        name = self.options.name or self.source.name
        check_writable(self.options.target_dir)
        needed = self._expected_bytes
        if needed is None:
            needed = stored_bytes(self.source, tasks)
        elif self.options.package:  # the downloaded tiles wait beside it until it is complete
            needed *= 2
        check_free_space(self.options.target_dir, needed)
        with TargetLock(target_location(self.options.target_dir, name, self.options.storage,
                                        self.options.package)):
            return self._export_into(self._target(), tasks, started)

    def _export_into(self, target: Target, tasks: list[tuple[int, int, int]], started: float
                     ) -> ExportResult:
        """The export proper, under the target's lock."""
        try:
            if target.existing is not None and _same_place(self.source, target):
                raise CacheError("The target is the input cache itself; choose another target.")
            self._scheme = self._output_scheme(target)
            self._pixels = PixelOptions(
                TileEncoding(self._scheme.tile_format, self._scheme.compression_quality
                             or DEFAULT_JPEG_QUALITY, self.options.background),
                self.source.scheme.tile_format, self.options.overwrite, self.options.optimize)
            if self.options.overwrite and target.existing is not None:
                # the target's bundles in the selection too: their selected tiles are replaced,
                # so possibly removed
                tasks = sorted(set(tasks).union(
                    plan_bundles(target.existing, self.levels, self.selection)))
            results = self._resume(target, tasks)
            per_level, finish, extent, ranges = self._summarise(results)
            total = sum(s.tiles for s in per_level.values())
            if total == 0 and target.existing is None:
                raise CacheError(
                    "No tile of the cache lies in the export extent or area of interest at the "
                    f"chosen levels ({_levels_text(self.levels)}); nothing was written."
                    + _describe_extent(self.source)
                )
            self._report_damaged(per_level)
            self._describe(finish, per_level, extent, ranges)
            if self._is_canceled():
                raise ExportCanceled("The export was canceled; the target was left unchanged.")
            new = target.existing is None
            kill_point("bundles-written")
            target.finish(finish)
        except BaseException:
            target.abort()
            raise
        manifest = target.manifest()
        if manifest:
            self._report(f"Manifest of the {len(manifest)} bundle file(s) written, below "
                         f"{target.output_path} (bytes, SHA-256, path):\n" + "\n".join(manifest))
        return ExportResult(
            output_path=target.output_path,
            tile_count=total,
            byte_count=sum(s.bytes for s in per_level.values()),
            seconds=time.monotonic() - started,
            levels=[per_level[level] for level in self.levels],
            verified=verify_output(target.output_path, results, exact=new),
        )

    def _resume(self, target: Target, tasks: list[tuple[int, int, int]]
                ) -> list[BundleResult]:
        """The bundles a killed run of this same export finished (intact) are kept; the rest
        are done now."""
        spooled = self.source.layout.keep_downloads(target.download_folder)
        if spooled:
            self._report(f"Resuming: the tiles an interrupted run of this export downloaded for "
                         f"{spooled} bundle(s) are used, not downloaded again.")
        done = target.finished_before()
        if done:
            kept = [task for task in tasks if task in done]
            self._report(f"Resuming: {len(kept)} of {len(tasks)} bundles already done by an "
                         "interrupted run of this export (checked and kept).")
            tasks = [task for task in tasks if task not in done]
            return [done[task] for task in kept] + self._run_tasks(target, tasks)
        return self._run_tasks(target, tasks)

    def _summarise(self, results: list[BundleResult]
                   ) -> tuple[dict[int, LevelResult], Finish, Optional[Extent],
                              dict[int, TileRange]]:
        """Per level: tiles, bytes and bundles; for the target: the bundles written (or
        dropped) and the files to remove; the exported tiles' extent and ranges."""
        per_level = {level: LevelResult(level) for level in self.levels}
        finish = Finish(self._scheme, [], Extent(0, 0, 0, 0), None)
        extent: Optional[Extent] = None
        ranges: dict[int, TileRange] = {}
        for result in results:
            summary = per_level[result.level]
            summary.tiles += result.tiles
            summary.bytes += result.bytes
            summary.bundles += 1 if result.tiles else 0
            summary.damaged += len(result.damaged)
            for (row, col), why in sorted(result.damaged.items()):
                if len(summary.damaged_examples) >= DAMAGED_EXAMPLES:
                    break
                summary.damaged_examples.append(f"row {row} col {col}: {why}")
            if result.touched:
                finish.touched.add((result.level, result.brow, result.bcol))
            finish.deferred_removals.extend(result.removals)
            if result.tile_range is not None:
                ranges[result.level] = result.tile_range.union(ranges.get(result.level))
                tile_extent = self.source.scheme.range_extent(result.level, result.tile_range)
                extent = tile_extent.union(extent)
        return per_level, finish, extent, ranges

    def _report_damaged(self, per_level: dict[int, LevelResult]) -> None:
        """A line per level that had damaged input tiles (left out of the output)."""
        for summary in per_level.values():
            if summary.damaged:
                self._report(
                    f"Level {summary.level}: {summary.damaged} damaged tile(s) of the input left "
                    f"out, e.g. {'; '.join(summary.damaged_examples)}.")

    def _describe(self, finish: Finish, per_level: dict[int, LevelResult],
                  extent: Optional[Extent], ranges: dict[int, TileRange]) -> None:
        """What the target writes beside the tiles: levels, extents and, for a package's
        thumbnail (drawn by the target from the tiles as written), the exported ranges."""
        finish.levels = [s.level for s in per_level.values() if s.tiles]
        finish.extent = self._data_extent(extent)
        finish.geographic_extent = self.options.geographic_extent or geographic_extent(
            finish.extent, self.source.scheme.spatial_reference
        )
        finish.ranges = ranges

    def _output_scheme(self, target: Target) -> TilingScheme:
        """The source's scheme with the tile format and quality the written tiles have."""
        base = target.existing.scheme if target.existing is not None else self.source.scheme
        wanted = self.options.tile_format
        if target.existing is not None and wanted and wanted != base.tile_format:
            raise CacheError(
                f"The existing cache {str(target.existing.location)!r} holds {base.tile_format} "
                f"tiles, so tiles cannot be merged into it as {wanted}. Keep the input's "
                f"tile format (tiles are then written as {base.tile_format}) or choose another "
                "target.", Concern.TILE_FORMAT)
        tile_format = wanted or base.tile_format
        quality = base.compression_quality
        if tile_format in ("JPEG", "MIXED"):
            had_quality = base.tile_format in ("JPEG", "MIXED") and quality
            quality = self.options.quality or (quality if had_quality else DEFAULT_JPEG_QUALITY)
        else:
            quality = 0
        return replace(self.source.scheme, tile_format=tile_format, compression_quality=quality)

    def _data_extent(self, tiles_extent: Optional[Extent]) -> Extent:
        """The exported tiles' bounds, trimmed to the request and to the source's data extent."""
        extent = tiles_extent or self.source.data_extent or Extent(0, 0, 1, 1)
        for limit in (self.selection.bounds(), self.source.data_extent):
            if limit is not None:
                extent = extent.intersection(limit) or extent
        return extent

    def _run_tasks(self, target: Target, tasks: list[tuple[int, int, int]]
                   ) -> list[BundleResult]:
        target.plan(tasks, self._stop)
        job = BundleJob(self.source.layout, target, self.selection, self._pixels,
                        self.options.storage, self.options.package, self.options.overwrite,
                        self._stop)
        workers = self.options.workers if self.options.workers > 0 else auto_workers()
        layout = self.source.layout
        results: list[BundleResult] = []
        tracker = ExportProgress(tasks, self._expected)
        received_before = layout.tiles_received()
        tiles_done: Counter = Counter()

        def on_result(result: BundleResult) -> None:
            if result.damaged and self.options.fail_on_damaged:
                (row, col), why = sorted(result.damaged.items())[0]
                raise CacheError(
                    f"The input has damaged tiles: {len(result.damaged)} in the bundle of level "
                    f"{result.level} at row {result.brow}, column {result.bcol} (row {row} col "
                    f"{col}: {why}). FAIL_ON_DAMAGED_TILES is set, so the export stopped and the "
                    "target was left unchanged; clear it to export without the damaged tiles.")
            results.append(result)
            tiles_done[result.level] += result.tiles
            line = tracker.bundle_done(result.level, result.tiles)
            if line:
                self._report(line)

        def tick() -> None:
            if self._is_canceled():
                raise ExportCanceled("The export was canceled; the target was left unchanged.")
            received = layout.tiles_received()
            tracker.set_in_flight({
                level: count - received_before.get(level, 0) - tiles_done[level]
                for level, count in received.items()})
            self._progress(tracker.fraction())
            line = tracker.report()
            if line:
                self._report(line)

        def on_failure() -> None:
            self._stop.set()
            layout.cancel()

        def work(task: tuple[int, int, int]) -> BundleResult:
            result = job.run(*task)
            target.bundle_finished(result)
            if target.resumes_bundles:
                layout.drop_download(*task)
            return result

        run_pool(work, tasks, workers, on_result, layout.idle, tick, on_failure)
        return results


def _file_state(location: str) -> Optional[tuple[int, int]]:
    """Size and modification time of a local input (None for a service): a changed input
    makes another export."""
    try:
        state = os.stat(location)
    except (OSError, ValueError):
        return None
    return state.st_size, state.st_mtime_ns


def _levels_text(levels: list[int]) -> str:
    return ",".join(map(str, levels))


def _same_place(source: CacheSource, target: Target) -> bool:
    try:
        return Path(source.location).resolve() == Path(target.existing.location).resolve()
    except OSError:
        return False
