"""Compact Cache V1 bundles: `.bundle` records plus a column-major `.bundlx` index
(esri-formats §2)."""
from __future__ import annotations

import struct
from typing import NamedTuple, Optional

import numpy as np

from ..errors import CorruptCacheError
from ..grid.tiling_scheme import PACKET_SIZE, StorageFormat
from .atomic_file import Output
from .file_store import ByteSource
from .layout import BundledLayout, Wanted
from .records import RecordFileReader, RecordFileWriter, invalid_records

SLOTS = PACKET_SIZE * PACKET_SIZE
HEADER = struct.Struct("<4I3Q5I")


class V1Header(NamedTuple):
    """The 60-byte `.bundle` header's fields, in file order (esri-formats §2.3)."""

    version: int  # 3
    record_count: int  # 16,384
    largest_record: int
    offset_bytes: int  # 5
    size_table_bytes: int  # 4 x tiles stored
    file_size: int
    user_header_offset: int  # 40
    user_header_size: int  # 16: the four words below
    row_min: int
    row_max: int
    col_min: int
    col_max: int


SIZE_TABLE = 4 * SLOTS
DATA_START = HEADER.size + SIZE_TABLE  # 65,596
INDEX_HEADER = struct.pack("<4I", 3, 16, SLOTS, 5)
INDEX_FOOTER = struct.pack("<4I", 0, 16, 16, 0)
INDEX_FILE_SIZE = 16 + 5 * SLOTS + 16  # 81,952


def _slot(row: int, col: int) -> int:
    return (col % PACKET_SIZE) * PACKET_SIZE + row % PACKET_SIZE


class BundleV1Reader(RecordFileReader):
    def __init__(self, bundle: ByteSource, index: ByteSource, brow: int, bcol: int):
        self._data = self._bundle = bundle
        self.brow, self.bcol = brow, bcol
        try:
            if index.size < 16 + 5 * SLOTS:
                raise CorruptCacheError(
                    f"{index.name}: {index.size} bytes is too short for a .bundlx index "
                    f"({INDEX_FILE_SIZE} expected)."
                )
            raw = index.pread(16, 5 * SLOTS)
        finally:
            index.close()
        if bundle.size < HEADER.size:
            raise CorruptCacheError(f"{bundle.name}: too short for a Compact V1 bundle.")
        header = V1Header(*HEADER.unpack(bundle.pread(0, HEADER.size)))
        if header.version != 3 or header.record_count != SLOTS or header.offset_bytes != 5:
            raise CorruptCacheError(
                f"{bundle.name}: not a Compact V1 bundle header (version {header.version}, "
                f"records {header.record_count}, offset size {header.offset_bytes})."
            )
        self._offsets = [int.from_bytes(raw[i : i + 5], "little") for i in range(0, len(raw), 5)]
        self._sizes: dict[int, int] = {}
        self._invalid: dict[tuple[int, int], str] = {}

    def present(self) -> list[tuple[int, int]]:
        tiles = []
        for slot, offset in enumerate(self._offsets):
            if offset < DATA_START:  # header or the zero size table: an empty slot
                continue
            size = struct.unpack("<I", self._bundle.pread(offset, 4))[0]
            if not size:
                continue
            if offset + 4 + size > self._bundle.size:
                raise CorruptCacheError(
                    f"{self._bundle.name}: tile slot {slot} of {size} bytes at offset {offset} "
                    f"runs past the end of the file ({self._bundle.size} bytes)."
                )
            self._sizes[slot] = size
        slots = np.array(sorted(self._sizes), np.int64)
        bad = invalid_records(slots, np.array([self._offsets[slot] + 4 for slot in slots.tolist()],
                                              np.int64),
                              np.array([self._sizes[slot] for slot in slots.tolist()], np.int64),
                              DATA_START)
        self._invalid = {(self.brow + slot % PACKET_SIZE, self.bcol + slot // PACKET_SIZE):
                         f"{self._bundle.name}: {why}" for slot, why in bad.items()}
        tiles = [(self.brow + slot % PACKET_SIZE, self.bcol + slot // PACKET_SIZE)
                 for slot in self._sizes if slot not in bad]
        tiles.sort()
        return tiles

    def invalid(self) -> dict[tuple[int, int], str]:
        return self._invalid

    def locate(self, row: int, col: int) -> tuple[int, int]:
        slot = _slot(row, col)
        return self._offsets[slot] + 4, self._sizes[slot]


class BundleV1Writer(RecordFileWriter):
    """Writes `.bundle` and `.bundlx` with ArcGIS's header values and empty-slot offsets."""

    def __init__(self, bundle: Output, index: Output, brow: int, bcol: int):
        self._data = self._bundle = bundle
        self._index_file = index
        self._brow, self._bcol = brow, bcol
        self._offsets = [HEADER.size + 4 * slot for slot in range(SLOTS)]
        self._bundle.handle.seek(HEADER.size)
        self._bundle.handle.write(bytes(SIZE_TABLE))
        self._end = DATA_START
        self._largest = 0
        self.count = 0

    def _index(self, row: int, col: int, data_offset: int, size: int) -> None:
        self._offsets[_slot(row, col)] = data_offset - 4  # V1 entries point at the prefix

    def commit(self) -> int:
        if not self.count:
            self._bundle.discard_and_remove_target()
            self._index_file.discard_and_remove_target()
            return 0
        header = HEADER.pack(*V1Header(
            version=3, record_count=SLOTS, largest_record=self._largest, offset_bytes=5,
            size_table_bytes=4 * self.count, file_size=self._end, user_header_offset=40,
            user_header_size=16, row_min=self._brow, row_max=self._brow + PACKET_SIZE - 1,
            col_min=self._bcol, col_max=self._bcol + PACKET_SIZE - 1))
        self._bundle.handle.seek(0)
        self._bundle.handle.write(header)
        index = bytearray(INDEX_HEADER)
        for offset in self._offsets:
            index += offset.to_bytes(5, "little")
        index += INDEX_FOOTER
        self._index_file.handle.write(index)
        self._bundle.commit()
        self._index_file.commit()
        return self._end + INDEX_FILE_SIZE

    def abort(self) -> None:
        self._bundle.abort()
        self._index_file.abort()

    def abort_to_rewrite(self) -> None:
        self.abort()
        self._bundle.release()
        self._index_file.release()


class CompactV1Layout(BundledLayout):
    storage = StorageFormat.COMPACT

    def open_bundle(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted] = None
                    ) -> Optional[BundleV1Reader]:
        stem = self._stem(level, brow, bcol)
        if stem is None:
            return None
        index_name = self._index_name(stem)
        if index_name is None:
            raise CorruptCacheError(
                f"{self.store.label}: {stem}.bundle has no .bundlx index beside it."
            )
        bundle = self.store.open(stem + ".bundle")
        try:
            return BundleV1Reader(bundle, self.store.open(index_name), brow, bcol)
        except Exception:
            bundle.close()
            raise

    def _index_name(self, stem: str) -> Optional[str]:
        folder, base = stem.rsplit("/", 1) if "/" in stem else ("", stem)
        for name in self.store.listdir(folder):
            if name.lower() == (base + ".bundlx").lower():
                return f"{folder}/{name}" if folder else name
        return None

    def member_paths(self, level: int, brow: int, bcol: int) -> list[str]:
        stem = self._stem(level, brow, bcol)
        return [stem + ".bundle", self._index_name(stem) or stem + ".bundlx"] if stem else []
