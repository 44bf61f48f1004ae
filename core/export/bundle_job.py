"""The work on one bundle of an export: read the source's bundle (and the existing target's),
write the target's, in one worker thread.

Tiles are copied as bytes; only tiles whose pixels change (clipped by the area of interest,
merged into an existing tile, converted to another format) are decoded, by pixels.composer.
Where the bundle indexes give the tiles' sizes, compact bundles are copied as record runs and a
package member is reserved at its final size before the first byte is read.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np

from ..errors import ExportCanceled
from ..formats.bundle import BundleReader, BundleWriter
from ..formats.image_kind import damage
from ..formats.layout import Layout
from ..formats.records import copy_records
from ..grid.tiling_scheme import PACKET_SIZE, StorageFormat, TileRange
from ..pixels.composer import Action, BundleComposer, PixelOptions
from ..selection.tile_selection import Selection
from .bundle_result import BundleResult
from .targets import Target

CANCEL_CHECK_EVERY = 256
# a bundle's computed tiles held before it is written (its size known, a package's bundle goes
# straight into the zip); beyond this they are computed as they are written
PRECOMPUTED_BYTES = 32 << 20

Tile = tuple[int, int, BundleReader]  # (row, col, the reader holding it)
Segment = tuple[Action, list[tuple[int, int]], Optional[list[int]]]


class _Damaged(Exception):
    """A damaged source tile was found while writing: the bundle is written again without it
    (its size, reserved in a package, was counted with it)."""


class BundleJob:
    """One export's work on a bundle, run by `run(level, brow, bcol)` in any worker thread."""

    def __init__(self, source: Layout, target: Target, selection: Selection,
                 pixels: PixelOptions, storage: StorageFormat, package: bool, overwrite: bool,
                 stop: threading.Event):
        self.source, self.target, self.selection = source, target, selection
        self.pixels, self.storage, self.overwrite = pixels, storage, overwrite
        self._exploded = storage is StorageFormat.EXPLODED
        # a package holds no empty compact bundle: one whose every tile is removed is dropped
        self._drops_empty = package and not self._exploded
        self._stop = stop

    def check_stop(self) -> None:
        if self._stop.is_set():
            raise ExportCanceled("The export was stopped.")

    def run(self, level: int, brow: int, bcol: int) -> BundleResult:
        self.check_stop()
        wanted = self.selection.tile_filter(level, brow, bcol)
        source = self.source.open_bundle(level, brow, bcol, wanted)
        old = None
        if self.target.existing is not None:
            old = self.target.existing.layout.open_bundle(level, brow, bcol)
        try:
            # tiles found damaged are left out: the second pass writes the bundle without them
            damaged: dict = {}
            for _ in range(2):
                left_out = set(damaged)

                def allowed(row: int, col: int, left_out=left_out) -> bool:
                    return (row, col) not in left_out and wanted(row, col)

                try:
                    result = self._copy_bundle(level, brow, bcol, source, old,
                                               allowed if left_out else wanted, damaged)
                except _Damaged:
                    continue
                if source is not None:  # records its index points at wrongly: never copied
                    damaged.update(source.invalid())
                result.damaged = damaged
                return result
            raise AssertionError("a bundle's damaged tiles were left out, yet found again")
        finally:
            for reader in (source, old):
                if reader is not None:
                    reader.close()

    def _copy_bundle(self, level: int, brow: int, bcol: int, source: Optional[BundleReader],
                     old: Optional[BundleReader], wanted: Callable[[int, int], bool],
                     damaged: dict) -> BundleResult:
        clipper = self.selection.clipper(level, brow, bcol)
        if BundleComposer.needed(self.pixels, clipper, old is not None):
            composer = BundleComposer(self.pixels, source, old, clipper, wanted, damaged)
            return self._compose_bundle(level, brow, bcol, composer, damaged)
        exported = [key for key in source.present() if wanted(*key)] if source else []
        exported_set = set(exported)
        kept, removed = [], []
        for key in old.present() if old else []:
            if key in exported_set:
                continue
            if wanted(*key) and self.overwrite:
                removed.append(key)
            else:
                kept.append(key)
        result = BundleResult(level, brow, bcol, len(exported))
        if not exported and not removed:
            return result
        result.tile_range = _bounds(exported)
        if self._exploded:
            tiles = [(row, col, source) for row, col in exported]
        else:  # a bundle is rewritten whole: the kept tiles of the old one go in as well
            carry = set(kept)
            tiles = [(row, col, old if (row, col) in carry else source)
                     for row, col in sorted(exported_set.union(kept))]
        sizes = None  # known from the bundle indexes, before any tile is read
        if all(reader.indexed for _, _, reader in tiles):
            sizes = [reader.locate(row, col)[1] for row, col, reader in tiles]
        payload = sum(sizes) + 4 * len(sizes) if sizes else None

        def fill(writer: BundleWriter) -> None:
            for key in removed:
                writer.remove(*key)
            result.bytes = self._copy(tiles, sizes, writer, source, damaged)

        return self._write(result, not tiles, payload, fill)

    def _compose_bundle(self, level: int, brow: int, bcol: int, composer: BundleComposer,
                        damaged: dict) -> BundleResult:
        """A bundle with pixel work: every tile planned at once, computed tiles done first
        while they are few (so the bundle's size is known), then the bundle written in order,
        runs of copied tiles as record runs."""
        source, old = composer.source, composer.existing
        actions = composer.plan((brow, bcol), source.present() if source else [],
                                old.present() if old else []).ravel()
        result = BundleResult(level, brow, bcol)
        if self._exploded:  # tile files are written one by one: kept ones are left alone
            actions[actions == Action.COPY_EXISTING] = Action.NOTHING
        slots = np.flatnonzero(actions != Action.NOTHING)
        codes = actions[slots]
        if (codes == Action.COPY_EXISTING).all():
            return result
        segments = _segments(brow, bcol, slots, codes, {
            Action.COPY_EXPORTED: source, Action.COPY_EXISTING: old})
        computed = composer.precompute(
            [key for action, keys, _ in segments if action is Action.COMPUTE for key in keys],
            PRECOMPUTED_BYTES, self.check_stop)
        payload = None if self._exploded else _payload(segments, computed)
        written: list[tuple[int, int]] = []

        def fill(writer: BundleWriter) -> None:
            for action, keys, sizes in segments:
                self.check_stop()
                if action in (Action.COPY_EXPORTED, Action.COPY_EXISTING):
                    reader = source if action is Action.COPY_EXPORTED else old
                    tiles = [(row, col, reader) for row, col in keys]
                    result.bytes += self._copy(tiles, sizes, writer, source, damaged)
                    if reader is source:
                        written.extend(keys)
                    continue
                for number, (row, col) in enumerate(keys):
                    if number % CANCEL_CHECK_EVERY == 0:
                        self.check_stop()
                    data, from_source = None, False
                    if action is Action.COMPUTE:
                        data, from_source = (computed.pop((row, col), None)
                                             or composer.compute(row, col))
                    if data is None:
                        writer.remove(row, col)
                        continue
                    writer.add(row, col, data)
                    if from_source:
                        written.append((row, col))
                        result.bytes += len(data)

        self._write(result, payload == 0, payload, fill)
        result.tiles = len(written)
        result.tile_range = _bounds(written)
        return result

    def _write(self, result: BundleResult, empty: bool, payload: Optional[int],
               fill: Callable[[BundleWriter], None]) -> BundleResult:
        """The target's bundle written by `fill`: reserved (at `payload` bytes when known),
        filled, then committed, or aborted on any error. A bundle left with no tile (`empty`:
        known before writing) is no bundle where the target drops empty ones."""
        if empty and self._drops_empty:
            result.touched = True
            return result
        writer = self.target.writer(result.level, result.brow, result.bcol, payload)
        try:
            fill(writer)
            if writer.count == 0 and self._drops_empty:
                writer.abort()
            else:
                writer.commit()
        except _Damaged:
            writer.abort_to_rewrite()
            raise
        except BaseException:
            writer.abort()
            raise
        result.touched = True
        result.removals = writer.deferred_removals()
        return result

    def _copy(self, tiles: list[Tile], sizes: Optional[list[int]], writer: BundleWriter,
              source: Optional[BundleReader], damaged: dict) -> int:
        """Tiles copied in order: as record runs where their `sizes` are known from the indexes
        and the writer takes records, else one by one; returns the bytes taken from `source`.
        Source tiles are checked as they pass; a damaged one (noted in `damaged`) raises
        _Damaged once all are copied, for the bundle to be written again without it."""
        found = len(damaged)
        if sizes is None or not writer.takes_records:
            exported = self._copy_tiles(tiles, writer, source, damaged)
        else:
            for start in range(0, len(tiles), CANCEL_CHECK_EVERY):
                self.check_stop()
                copy_records(tiles[start : start + CANCEL_CHECK_EVERY], writer, source, damaged)
            exported = sum(size for (_, _, reader), size in zip(tiles, sizes)
                           if reader is source)
        if len(damaged) > found:
            raise _Damaged()
        return exported

    def _copy_tiles(self, tiles: list[Tile], writer: BundleWriter,
                    source: Optional[BundleReader], damaged: dict) -> int:
        """Tile by tile (exploded on either side); returns the bytes taken from `source`."""
        exported = 0
        for number, (row, col, reader) in enumerate(tiles):
            if number % CANCEL_CHECK_EVERY == 0:
                self.check_stop()
            data = reader.read(row, col)
            if reader is source:
                wrong = damage(data)
                if wrong:
                    damaged[row, col] = wrong
                    continue
                exported += len(data)
            writer.add(row, col, data)
        return exported


def _segments(brow: int, bcol: int, slots: np.ndarray, codes: np.ndarray,
              readers: dict[Action, Optional[BundleReader]]) -> list[Segment]:
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


