"""Compact Cache V2 bundles: 64-byte header, 16,384 u64 index entries, size-prefixed records.

Byte layout and header profiles: esri-formats §3. Readers validate what GDAL and ArcGIS rely on;
writers stream records to a temporary file and rename it into place when complete.
"""
from __future__ import annotations

import struct
from array import array
from typing import NamedTuple, Optional

import numpy as np

from ..errors import CorruptCacheError
from ..grid.tiling_scheme import PACKET_SIZE, StorageFormat
from .atomic_file import Output
from .file_store import ByteSource
from .layout import BundledLayout, Wanted
from .records import RecordFileReader, RecordFileWriter, invalid_records

SLOTS = PACKET_SIZE * PACKET_SIZE
HEADER = struct.Struct("<4I3Q6I")


class V2Header(NamedTuple):
    """The 64-byte header's fields, in file order (esri-formats §3)."""

    version: int  # 3
    record_count: int  # 16,384 by the whitepaper, 0 as ArcGIS writes it
    largest_record: int
    offset_bytes: int  # 5
    slack_space: int  # 0
    file_size: int
    user_header_offset: int  # 40
    user_header_size: int  # 131,092: the 20 bytes below and the index
    legacy_version: int  # 3
    legacy_16: int  # 16 by the whitepaper, 0 as ArcGIS writes it
    legacy_records: int  # 16,384
    legacy_offset_bytes: int  # 5
    index_size: int  # 131,072


INDEX_SIZE = 8 * SLOTS
DATA_START = HEADER.size + INDEX_SIZE  # 131,136
USER_HEADER_SIZE = 20 + INDEX_SIZE  # 131,092
MAX_TILE = (1 << 24) - 1
EMPTY_ENTRY = 4  # ArcGIS-observed value of an empty slot (offset 4, size 0)
OFFSET_MASK = (1 << 40) - 1


class BundleV2Reader(RecordFileReader):
    """Tiles of one V2 bundle; `present()` validates the index against the file size."""

    def __init__(self, source: ByteSource, brow: int, bcol: int):
        self._data = self._source = source
        self.brow, self.bcol = brow, bcol
        if source.size < DATA_START:
            raise CorruptCacheError(
                f"{source.name}: {source.size} bytes is too short for a Compact V2 bundle "
                f"(at least {DATA_START})."
            )
        header = V2Header(*HEADER.unpack(source.pread(0, HEADER.size)))
        if (header.version != 3 or header.offset_bytes != 5 or header.user_header_offset != 40
                or header.index_size != INDEX_SIZE):
            raise CorruptCacheError(
                f"{source.name}: not a Compact V2 bundle header (version {header.version}, "
                f"offset size {header.offset_bytes}, index size {header.index_size})."
            )
        self._index = array("Q", source.pread(HEADER.size, INDEX_SIZE))
        if array("H", [1]).tobytes() != b"\x01\x00":
            self._index.byteswap()
        self._invalid: dict[tuple[int, int], str] = {}

    def present(self) -> list[tuple[int, int]]:
        entries = np.frombuffer(self._index, np.uint64)
        sizes, offsets = entries >> np.uint64(40), entries & np.uint64(OFFSET_MASK)
        slots = np.flatnonzero(sizes)
        sizes, offsets = sizes[slots].astype(np.int64), offsets[slots].astype(np.int64)
        outside = np.flatnonzero((offsets < 4) | (offsets + sizes > self._source.size))
        if len(outside):
            slot, offset, size = (int(slots[outside[0]]), int(offsets[outside[0]]),
                                  int(sizes[outside[0]]))
            raise CorruptCacheError(
                f"{self._source.name}: tile slot {slot} points at bytes {offset}-"
                f"{offset + size}, beyond the end of the file ({self._source.size} bytes)."
            )
        bad = invalid_records(slots, offsets, sizes, DATA_START)
        self._invalid = {(self.brow + slot // PACKET_SIZE, self.bcol + slot % PACKET_SIZE):
                         f"{self._source.name}: {why}" for slot, why in bad.items()}
        return [(self.brow + slot // PACKET_SIZE, self.bcol + slot % PACKET_SIZE)
                for slot in slots.tolist() if slot not in bad]

    def invalid(self) -> dict[tuple[int, int], str]:
        return self._invalid

    def locate(self, row: int, col: int) -> tuple[int, int]:
        entry = self._index[(row - self.brow) * PACKET_SIZE + (col - self.bcol)]
        return entry & OFFSET_MASK, entry >> 40


class BundleV2Writer(RecordFileWriter):
    """Writes one bundle; `profile` "spec" suits GDAL's conf.xml reader, "arcgis" matches Pro."""

    MAX_SIZE = MAX_TILE

    def __init__(self, output: Output, profile: str = "spec"):
        self._data = self._file = output
        self._profile = profile
        self._entries = array("Q", [EMPTY_ENTRY]) * SLOTS
        self._file.handle.seek(DATA_START)
        self._end = DATA_START
        self._largest = 0
        self.count = 0

    def _index(self, row: int, col: int, data_offset: int, size: int) -> None:
        self._entries[(row % PACKET_SIZE) * PACKET_SIZE + col % PACKET_SIZE] = (
            data_offset | (size << 40))

    def commit(self) -> int:
        """Finish the file and move it into place; returns bytes written (0 = no tiles)."""
        if not self.count:
            self._file.discard_and_remove_target()
            return 0
        arcgis = self._profile == "arcgis"
        header = V2Header(
            version=3, record_count=0 if arcgis else SLOTS,
            largest_record=max(USER_HEADER_SIZE, self._largest) if arcgis else self._largest,
            offset_bytes=5, slack_space=0, file_size=self._end, user_header_offset=40,
            user_header_size=USER_HEADER_SIZE, legacy_version=3, legacy_16=0 if arcgis else 16,
            legacy_records=SLOTS, legacy_offset_bytes=5, index_size=INDEX_SIZE)
        handle = self._file.handle
        handle.seek(0)
        handle.write(HEADER.pack(*header))
        index = array("Q", self._entries)
        if array("H", [1]).tobytes() != b"\x01\x00":
            index.byteswap()
        handle.write(index.tobytes())
        self._file.commit()
        return self._end

    def abort(self) -> None:
        self._file.abort()

    def abort_to_rewrite(self) -> None:
        self._file.abort()
        self._file.release()


class CompactV2Layout(BundledLayout):
    storage = StorageFormat.COMPACT_V2

    def open_bundle(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted] = None
                    ) -> Optional[BundleV2Reader]:
        stem = self._stem(level, brow, bcol)
        if stem is None:
            return None
        source = self.store.open(stem + ".bundle")
        try:
            return BundleV2Reader(source, brow, bcol)
        except Exception:
            source.close()
            raise

    def member_paths(self, level: int, brow: int, bcol: int) -> list[str]:
        stem = self._stem(level, brow, bcol)
        return [stem + ".bundle"] if stem else []
