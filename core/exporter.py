"""Running an export: plan the bundles, copy tiles bundle by bundle in a worker pool, commit.

Tiles are copied as bytes; only tiles whose pixels change (clipped by the area of interest,
merged into an existing tile, converted to another format) are decoded, by pixels.composer. Each
128x128 bundle of the target is written by exactly one worker, so no two threads ever share a
bundle file. Only the bundle list of the export is held in memory, never a level's tiles.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import CacheError, ExportCanceled
from .export.plan import plan_bundles
from .export.progress import ExportProgress
from .export.targets import DatasetTarget, Finish, PackageTarget, Target
from .formats.records import copy_records
from .grid.extent import Extent
from .grid.spatial_reference import geographic_extent
from .grid.tiling_scheme import PACKET_SIZE, StorageFormat, TileRange, TilingScheme
from .pixels.composer import Action, BundleComposer, PixelOptions
from .pixels.thumbnail import draw_thumbnail
from .pixels.tile_image import DEFAULT_JPEG_QUALITY, TileEncoding
from .selection.tile_selection import Selection
from .sources.source import CacheSource

CANCEL_CHECK_EVERY = 256
WAIT_SLICE = 0.05  # seconds between checks for cancel (and event-loop turns) while waiting
MAX_AUTO_WORKERS = 8
# a bundle's computed tiles held before it is written (its size known, a package's bundle goes
# straight into the zip); beyond this they are computed as they are written
PRECOMPUTED_BYTES = 32 << 20


@dataclass
class ExportOptions:
    target_dir: Path
    storage: StorageFormat
    package: bool = False
    overwrite: bool = False
    staged: bool = False
    workers: int = -1
    name: Optional[str] = None
    geographic_extent: Optional[Extent] = None  # lon/lat of the export, for package metadata
    tile_format: Optional[str] = None  # None: the input's (or the existing target's) format
    quality: Optional[int] = None  # JPEG quality of new tiles; None: the cache's, else 75
    optimize: bool = False  # recompress JPEG tiles at `quality` where that makes them smaller
    background: tuple[int, int, int] = (255, 255, 255)  # outside pixels where no alpha


@dataclass
class LevelResult:
    level: int
    tiles: int = 0
    bytes: int = 0
    bundles: int = 0


@dataclass
class ExportResult:
    output_path: Path
    tile_count: int
    byte_count: int
    seconds: float
    levels: list[LevelResult] = field(default_factory=list)


@dataclass
class _TaskResult:
    level: int
    brow: int
    bcol: int
    tiles: int
    bytes: int
    tile_range: Optional[TileRange]
    touched: bool
    removals: list


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
    ):
        """`progress` gets the fraction done, `report` a line per level every few seconds;
        `expected` = tiles per level when estimated beforehand (downloads)."""
        self.source, self.levels, self.selection, self.options = source, levels, selection, options
        self._progress = progress or (lambda fraction: None)
        self._report = report or (lambda line: None)
        self._expected = expected
        self._is_canceled = is_canceled or (lambda: False)
        self._stop = threading.Event()

    def _target(self) -> Target:
        name = self.options.name or self.source.name
        scheme = self.source.scheme
        if self.options.package:
            return PackageTarget(self.options.target_dir, name, self.options.storage, scheme,
                                 self.levels)
        return DatasetTarget(self.options.target_dir, name, self.options.storage,
                             self.options.staged, scheme, self.levels)

    def run(self) -> ExportResult:
        started = time.monotonic()
        tasks = plan_bundles(self.source, self.levels, self.selection)
        if not tasks:
            raise CacheError(
                "The export extent or area of interest does not overlap any tile of the cache "
                f"at the chosen levels ({_levels_text(self.levels)}); nothing was written."
                + _describe_extent(self.source)
            )
        target = self._target()
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
            results = self._run_tasks(target, tasks)
            per_level = {level: LevelResult(level) for level in self.levels}
            finish = Finish(self._scheme, [], Extent(0, 0, 0, 0), None)
            extent: Optional[Extent] = None
            ranges: dict[int, TileRange] = {}
            for result in results:
                summary = per_level[result.level]
                summary.tiles += result.tiles
                summary.bytes += result.bytes
                summary.bundles += 1 if result.tiles else 0
                if result.touched:
                    finish.touched.add((result.level, result.brow, result.bcol))
                finish.deferred_removals.extend(result.removals)
                if result.tile_range is not None:
                    ranges[result.level] = result.tile_range.union(ranges.get(result.level))
                    tile_extent = self.source.scheme.range_extent(result.level, result.tile_range)
                    extent = tile_extent.union(extent)
            total = sum(s.tiles for s in per_level.values())
            if total == 0 and target.existing is None:
                raise CacheError(
                    "No tile of the cache lies in the export extent or area of interest at the "
                    f"chosen levels ({_levels_text(self.levels)}); nothing was written."
                    + _describe_extent(self.source)
                )
            finish.levels = [s.level for s in per_level.values() if s.tiles]
            finish.extent = self._data_extent(extent)
            finish.geographic_extent = self.options.geographic_extent or geographic_extent(
                finish.extent, self.source.scheme.spatial_reference
            )
            if self.options.package:
                scheme = self.source.scheme
                finish.thumbnail = draw_thumbnail(
                    self.source.layout, ranges, (scheme.tile_cols, scheme.tile_rows),
                    self.selection.contains,
                )
            if self._is_canceled():
                raise ExportCanceled("The export was canceled; the target was left unchanged.")
            target.finish(finish)
        except BaseException:
            target.abort()
            raise
        return ExportResult(
            output_path=target.output_path,
            tile_count=total,
            byte_count=sum(s.bytes for s in per_level.values()),
            seconds=time.monotonic() - started,
            levels=[per_level[level] for level in self.levels],
        )

    def _output_scheme(self, target: Target) -> TilingScheme:
        """The source's scheme with the tile format and quality the written tiles have."""
        base = target.existing.scheme if target.existing is not None else self.source.scheme
        wanted = self.options.tile_format
        if target.existing is not None and wanted and wanted != base.tile_format:
            raise CacheError(
                f"The existing cache {str(target.existing.location)!r} holds {base.tile_format} "
                f"tiles, so tiles cannot be merged into it as {wanted}. Leave TILE_FORMAT on "
                f"'keep' (tiles are then written as {base.tile_format}) or choose another "
                "target.")
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

    def _run_tasks(self, target: Target, tasks: list[tuple[int, int, int]]) -> list[_TaskResult]:
        workers = self.options.workers if self.options.workers > 0 else auto_workers()
        results: list[_TaskResult] = []
        pending: set[Future] = set()
        queue = iter(tasks)
        tracker = ExportProgress(tasks, self._expected)
        received_before = self.source.layout.tiles_received()
        tiles_done: Counter = Counter()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="export") as pool:
            try:
                while True:
                    while len(pending) < workers * 2:
                        task = next(queue, None)
                        if task is None:
                            break
                        pending.add(pool.submit(self._run_bundle, target, *task))
                    if not pending:
                        break
                    done, pending = wait(pending, timeout=WAIT_SLICE, return_when=FIRST_COMPLETED)
                    self.source.layout.idle()
                    for future in done:
                        result = future.result()
                        results.append(result)
                        if result.touched:
                            target.bundle_done(result.level, result.brow, result.bcol)
                        tiles_done[result.level] += result.tiles
                        line = tracker.bundle_done(result.level, result.tiles)
                        if line:
                            self._report(line)
                    if self._is_canceled():
                        raise ExportCanceled(
                            "The export was canceled; the target was left unchanged."
                        )
                    received = self.source.layout.tiles_received()
                    tracker.set_in_flight({
                        level: count - received_before.get(level, 0) - tiles_done[level]
                        for level, count in received.items()})
                    self._progress(tracker.fraction())
                    line = tracker.report()
                    if line:
                        self._report(line)
            except BaseException:
                self._stop.set()
                self.source.layout.cancel()
                for future in pending:
                    future.cancel()
                raise
        return results

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise ExportCanceled("The export was stopped.")

    def _run_bundle(self, target: Target, level: int, brow: int, bcol: int) -> _TaskResult:
        self._check_stop()
        wanted = self.selection.tile_filter(level, brow, bcol)
        source = self.source.layout.open_bundle(level, brow, bcol, wanted)
        old = None
        if target.existing is not None:
            old = target.existing.layout.open_bundle(level, brow, bcol)
        try:
            return self._copy_bundle(target, level, brow, bcol, source, old, wanted)
        finally:
            for reader in (source, old):
                if reader is not None:
                    reader.close()

    def _copy_bundle(self, target, level, brow, bcol, source, old, wanted) -> _TaskResult:
        clipper = self.selection.clipper(level, brow, bcol)
        if BundleComposer.needed(self._pixels, clipper, old is not None):
            composer = BundleComposer(self._pixels, source, old, clipper, wanted)
            return self._compose_bundle(target, level, brow, bcol, composer)
        exported = [key for key in source.present() if wanted(*key)] if source else []
        exported_set = set(exported)
        kept, removed = [], []
        for key in old.present() if old else []:
            if key in exported_set:
                continue
            if wanted(*key) and self.options.overwrite:
                removed.append(key)
            else:
                kept.append(key)
        result = _TaskResult(level, brow, bcol, len(exported), 0, None, False, [])
        if not exported and not removed:
            return result
        result.tile_range = _bounds(exported)
        if self.options.storage is StorageFormat.EXPLODED:
            tiles = [(row, col, source) for row, col in exported]
        else:  # a bundle is rewritten whole: the kept tiles of the old one go in as well
            carry = set(kept)
            tiles = [(row, col, old if (row, col) in carry else source)
                     for row, col in sorted(exported_set.union(kept))]
            if not tiles and self.options.package:
                result.touched = True  # every tile removed: the package gets no such bundle
                return result
        sizes = None  # known from the bundle indexes, before any tile is read
        if all(reader.indexed for _, _, reader in tiles):
            sizes = [reader.locate(row, col)[1] for row, col, reader in tiles]
        writer = target.writer(level, brow, bcol, sum(sizes) + 4 * len(sizes) if sizes else None)
        with _writing(writer, result):
            for key in removed:
                writer.remove(*key)
            result.bytes = self._copy(tiles, sizes, writer, source)
            writer.commit()
        return result

    def _compose_bundle(self, target, level, brow, bcol, composer: BundleComposer
                        ) -> _TaskResult:
        """A bundle with pixel work: every tile planned at once, computed tiles done first
        while they are few (so the bundle's size is known), then the bundle written in order,
        runs of copied tiles as record runs."""
        source, old = composer.source, composer.existing
        actions = composer.plan((brow, bcol), source.present() if source else [],
                                old.present() if old else []).ravel()
        result = _TaskResult(level, brow, bcol, 0, 0, None, False, [])
        exploded = self.options.storage is StorageFormat.EXPLODED
        if exploded:  # tile files are written one by one: kept ones are left alone
            actions[actions == Action.COPY_EXISTING] = Action.NOTHING
        slots = np.flatnonzero(actions != Action.NOTHING)
        codes = actions[slots]
        if (codes == Action.COPY_EXISTING).all():
            return result
        segments = _segments(brow, bcol, slots, codes, {
            Action.COPY_EXPORTED: source, Action.COPY_EXISTING: old})
        computed = composer.precompute(
            [key for action, keys, _ in segments if action is Action.COMPUTE for key in keys],
            PRECOMPUTED_BYTES, self._check_stop)
        payload = None if exploded else _payload(segments, computed)
        if payload == 0 and self.options.package:
            result.touched = True  # every tile removed: the package gets no such bundle
            return result
        writer = target.writer(level, brow, bcol, payload)
        written: list[tuple[int, int]] = []
        with _writing(writer, result):
            for action, keys, sizes in segments:
                self._check_stop()
                if action in (Action.COPY_EXPORTED, Action.COPY_EXISTING):
                    reader = source if action is Action.COPY_EXPORTED else old
                    tiles = [(row, col, reader) for row, col in keys]
                    result.bytes += self._copy(tiles, sizes, writer, source)
                    if reader is source:
                        written.extend(keys)
                    continue
                for number, (row, col) in enumerate(keys):
                    if number % CANCEL_CHECK_EVERY == 0:
                        self._check_stop()
                    data, from_source = None, False
                    if action is Action.COMPUTE:
                        data, from_source = (computed.pop((row, col), None)
                                             or composer.compute(row, col))
                    if data is None:
                        if exploded:
                            writer.remove(row, col)
                        continue
                    writer.add(row, col, data)
                    if from_source:
                        written.append((row, col))
                        result.bytes += len(data)
            if not exploded and writer.count == 0 and self.options.package:
                writer.abort()  # every tile removed: the package gets no such bundle
            else:
                writer.commit()
        result.tiles = len(written)
        result.tile_range = _bounds(written)
        return result

    def _copy(self, tiles: list, sizes: Optional[list[int]], writer, source) -> int:
        """(row, col, reader) tiles copied in order: as record runs where their `sizes` are
        known from the indexes and the writer takes records, else one by one; returns the
        bytes taken from `source`."""
        if sizes is None or not writer.takes_records:
            return self._copy_tiles(tiles, writer, source)
        self._copy_runs(tiles, writer)
        return sum(size for (_, _, reader), size in zip(tiles, sizes) if reader is source)

    def _copy_runs(self, tiles: list, writer) -> None:
        """Compact to compact: (row, col, reader) tiles copied as record runs, in order."""
        for start in range(0, len(tiles), CANCEL_CHECK_EVERY):
            self._check_stop()
            copy_records(tiles[start : start + CANCEL_CHECK_EVERY], writer)

    def _copy_tiles(self, tiles: list, writer, source) -> int:
        """Tile by tile (exploded on either side); returns the bytes taken from `source`."""
        exported = 0
        for number, (row, col, reader) in enumerate(tiles):
            if number % CANCEL_CHECK_EVERY == 0:
                self._check_stop()
            data = reader.read(row, col)
            exported += len(data) if reader is source else 0
            writer.add(row, col, data)
        return exported


@contextmanager
def _writing(writer, result: _TaskResult):
    """A bundle written through `writer`: aborted on any error, else recorded in `result`."""
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    result.touched = True
    result.removals = writer.deferred_removals()


Segment = tuple[Action, list[tuple[int, int]], Optional[list[int]]]


def _segments(brow: int, bcol: int, slots: np.ndarray, codes: np.ndarray, readers: dict
              ) -> list[Segment]:
    """The planned tiles in writing order, cut where the action changes: (action, tiles,
    their sizes when copied from a reader that knows them from its index)."""
    cuts = [0, *(np.flatnonzero(np.diff(codes)) + 1).tolist(), len(codes)]
    segments = []
    for start, end in zip(cuts, cuts[1:]):
        action = Action(int(codes[start]))
        rows, cols = np.divmod(slots[start:end], PACKET_SIZE)
        keys = list(zip((rows + brow).tolist(), (cols + bcol).tolist()))
        reader = readers.get(action)
        sizes = None
        if reader is not None and reader.indexed:
            sizes = [reader.locate(row, col)[1] for row, col in keys]
        segments.append((action, keys, sizes))
    return segments


def _payload(segments: list[Segment], computed: dict) -> Optional[int]:
    """Bytes of a compact bundle's records (size prefixes included) when every tile's size is
    known before writing: copied tiles from their index, computed ones already done."""
    total = 0
    for action, keys, sizes in segments:
        if action is Action.COMPUTE:
            if any(key not in computed for key in keys):
                return None
            done = [computed[key][0] for key in keys]
            total += sum(4 + len(data) for data in done if data is not None)
        elif action is not Action.REMOVE:
            if sizes is None:
                return None
            total += 4 * len(sizes) + sum(sizes)
    return total


def _bounds(keys: list[tuple[int, int]]) -> Optional[TileRange]:
    if not keys:
        return None
    rows = [row for row, _ in keys]
    cols = [col for _, col in keys]
    return TileRange(min(rows), max(rows), min(cols), max(cols))


def _levels_text(levels: list[int]) -> str:
    return ",".join(map(str, levels))


def _same_place(source: CacheSource, target: Target) -> bool:
    try:
        return Path(source.location).resolve() == Path(target.existing.location).resolve()
    except OSError:
        return False
