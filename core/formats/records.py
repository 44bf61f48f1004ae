"""Size-prefixed tile records, the storage shared by Compact V1 and V2 bundles: reading,
appending, and copying them between bundles in large contiguous runs.

V1 and V2 bundles store a tile as `u32 size` + bytes. When consecutive tiles (in row-major
order) also sit back to back in the source file, as ArcGIS and this tool write them, the whole
run is read and written with one call each instead of two per tile. Prefixes are checked, and
repaired in the copy when a source disagrees with its own index.
"""
from __future__ import annotations

import struct
from abc import abstractmethod
from collections.abc import Iterable
from typing import Optional

import numpy as np

from ..errors import CorruptCacheError
from .atomic_file import Output
from .bundle import BundleReader, BundleWriter
from .file_store import ByteSource
from .image_kind import damaged_records

MAX_RUN_BYTES = 16 << 20
MAX_TILE_BYTES = 16 << 20  # larger "tiles" are damage (a tile is a 256 or 512 px image)
PREFIX = struct.Struct("<I")


def invalid_records(slots: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                    data_start: int) -> dict[int, str]:
    """Index slots whose records cannot be right, slot -> why: starting in the header or index,
    larger than MAX_TILE_BYTES, or overlapping an earlier record (one record listed by many
    slots would make the output grow by as many copies). All numpy: 16,384 slots at once."""
    offsets, sizes = offsets.astype(np.int64), sizes.astype(np.int64)
    bad: dict[int, str] = {}
    inside = offsets - 4 >= data_start
    for slot in slots[~inside].tolist():
        bad[slot] = "its index entry points into the bundle's header or index"
    big = inside & (sizes > MAX_TILE_BYTES)
    for slot, size in zip(slots[big].tolist(), sizes[big].tolist()):
        bad[slot] = f"{size} bytes is more than a tile can be ({MAX_TILE_BYTES})"
    good = np.flatnonzero(inside & ~big)
    order = good[np.argsort(offsets[good], kind="stable")]
    starts, ends = offsets[order] - 4, offsets[order] + sizes[order]
    if len(order) > 1:
        reach = np.maximum.accumulate(ends)[:-1]
        overlap = np.concatenate([[False], starts[1:] < reach])
        for slot in slots[order[overlap]].tolist():
            bad[slot] = "its record overlaps another tile's"
    return bad


class RecordFileReader(BundleReader):
    """Reading size-prefixed records of a bundle file; subclasses `locate` a tile's record."""

    indexed = True
    _data: ByteSource

    @abstractmethod
    def locate(self, row: int, col: int) -> tuple[int, int]:
        """(offset of the image bytes, size); the u32 prefix sits at offset - 4."""

    def read(self, row: int, col: int) -> bytes:
        return self._data.pread(*self.locate(row, col))

    def pread(self, offset: int, length: int) -> bytes:
        return self._data.pread(offset, length)

    def size_prefixes(self, offsets: np.ndarray) -> np.ndarray:
        return self._data.u32_at(np.asarray(offsets, dtype=np.int64) - 4)

    def close(self) -> None:
        self._data.close()


class RecordFileWriter(BundleWriter):
    """Appending size-prefixed records to a bundle file; subclasses index each record."""

    MAX_SIZE = (1 << 32) - 1
    takes_records = True
    _data: Output
    _end: int
    _largest: int
    count: int

    @abstractmethod
    def _index(self, row: int, col: int, data_offset: int, size: int) -> None:
        """Note where a record's image bytes went."""

    def add(self, row: int, col: int, data: bytes) -> None:
        self.add_records(PREFIX.pack(len(data)) + data, [(row, col, 4, len(data))])

    def add_records(self, blob: bytes, entries: list[tuple[int, int, int, int]]) -> None:
        """Append size-prefixed records; entries are (row, col, data offset in blob, size)."""
        for row, col, offset, size in entries:
            if not 0 < size <= self.MAX_SIZE:
                raise CorruptCacheError(f"Tile R{row}/C{col} has an unsupported size {size}.")
            self._index(row, col, self._end + offset, size)
            self._largest = max(self._largest, size)
        self._data.handle.write(blob)
        self._end += len(blob)
        self.count += len(entries)


class _Run:
    def __init__(self, reader: BundleReader, start: int):
        self.reader, self.start, self.end = reader, start, start
        self.entries: list[tuple[int, int, int, int]] = []

    def extend(self, row: int, col: int, offset: int, size: int) -> None:
        self.entries.append((row, col, offset - self.start, size))
        self.end = offset + size


def copy_records(
    tiles: Iterable[tuple[int, int, BundleReader]], writer: BundleWriter,
    checked: Optional[BundleReader] = None, damaged: Optional[dict] = None
) -> None:
    """Copy tiles (in output order, each with the reader holding it). Tiles of the `checked`
    reader are checked as they pass (image_kind.damage); a run holding a damaged tile is not
    written and the tile is noted in `damaged` ((row, col) -> what is wrong)."""
    run: Optional[_Run] = None
    for row, col, reader in tiles:
        offset, size = reader.locate(row, col)
        if run is None or run.reader is not reader or offset - 4 != run.end or (
            run.end - run.start > MAX_RUN_BYTES
        ):
            if run is not None:
                _flush(run, writer, checked, damaged)
            run = _Run(reader, offset - 4)
        run.extend(row, col, offset, size)
    if run is not None:
        _flush(run, writer, checked, damaged)


def _flush(run: _Run, writer: BundleWriter, checked: Optional[BundleReader],
           damaged: Optional[dict]) -> None:
    blob = run.reader.pread(run.start, run.end - run.start)
    if run.reader is checked and damaged is not None:
        places = np.array(run.entries, np.int64)
        found = damaged_records(blob, places[:, 2], places[:, 3])
        for index, wrong in found.items():
            row, col = run.entries[index][:2]
            damaged[row, col] = wrong
        if found:
            return
    fixed: Optional[bytearray] = None
    for _, _, offset, size in run.entries:
        if PREFIX.unpack_from(blob, offset - 4)[0] != size:
            fixed = fixed if fixed is not None else bytearray(blob)
            PREFIX.pack_into(fixed, offset - 4, size)
    writer.add_records(bytes(fixed) if fixed is not None else blob, run.entries)
