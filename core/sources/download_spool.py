"""Where a bundle's downloaded tiles wait until the bundle is written.

A spool is a file of records, one per tile asked for: the tile's row, column and CRC-32, then
its size-prefixed bytes (size 0: the service has no such tile), so that the bundle reads like a
local compact bundle. A spool kept in the export's stage (one per bundle, named for it) outlives
a killed run: the same export run again reads back its intact records and downloads only the
tiles it lacks. Each record is written with one unbuffered write, so a kill loses at most the
record under way; a record cut short or altered (its CRC) ends what is read back.
"""
from __future__ import annotations

import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Optional

from ..formats.layout import bundle_name, level_folder
from ..formats.records import PREFIX
from ..grid.tiling_scheme import TileRange

MAGIC = b"MSCTILE1"
HEAD = struct.Struct("<III")  # row, col, CRC-32 of the bytes; PREFIX (the size) follows
RECORD_HEAD = HEAD.size + PREFIX.size
SPOOL_SUFFIX = ".tiles"

Key = tuple[int, int]


def spool_name(level: int, brow: int, bcol: int) -> str:
    return f"{level_folder(level)}-{bundle_name(brow, bcol)}{SPOOL_SUFFIX}"


class DownloadSpool:
    """One bundle's downloaded tiles: appended by the thread that downloads the bundle, then
    read by the same thread while the bundle is written."""

    name = "download spool"

    def __init__(self, path: Optional[Path], bundle: TileRange, max_tile_bytes: int):
        """A spool kept at `path` (what an interrupted run left there read back first), or an
        anonymous temporary file. Records are accepted back only for tiles of `bundle` and of
        at most `max_tile_bytes`."""
        self.tiles: dict[Key, tuple[int, int]] = {}  # (row, col) -> (offset of bytes, size)
        self.absent: set[Key] = set()  # asked for, and the service has none
        self.size = 0
        if path is None:
            self._file: BinaryIO = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                prefix="mapservercache-", buffering=0)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a+b", buffering=0)  # noqa: SIM115 - closed by close()
            self._read_back(bundle, max_tile_bytes)
        if self.size == 0:
            self._write(MAGIC)

    @property
    def known(self) -> int:
        return len(self.tiles) + len(self.absent)

    def has(self, key: Key) -> bool:
        return key in self.tiles or key in self.absent

    def append(self, key: Key, data: Optional[bytes]) -> None:
        """A tile as downloaded (None, or no byte: the service has none)."""
        if not data:
            self._write(HEAD.pack(*key, 0) + PREFIX.pack(0))
            self.absent.add(key)
            return
        offset = self.size + RECORD_HEAD
        self._write(HEAD.pack(*key, zlib.crc32(data)) + PREFIX.pack(len(data)) + data)
        self.tiles[key] = (offset, len(data))

    def pread(self, offset: int, length: int) -> bytes:
        self._file.seek(offset)
        data = self._file.read(length)
        if len(data) != length:
            raise OSError(f"The download spool ended early ({offset}+{length} of {self.size}).")
        return data

    def close(self) -> None:
        self._file.close()

    def _write(self, data: bytes) -> None:
        self._file.seek(self.size)
        written = self._file.write(data)
        if written != len(data):  # a short write to a regular file: the disk is full
            raise OSError(28, "No space left on device", getattr(self._file, "name", None))
        self.size += written

    def _read_back(self, bundle: TileRange, max_tile_bytes: int) -> None:
        """The intact records of an interrupted run, in order; the file is cut after the last
        one (a record cut short by the kill, or anything else, goes)."""
        self._file.seek(0, 2)
        end = self._file.tell()
        self._file.seek(0)
        if end < len(MAGIC) or self._file.read(len(MAGIC)) != MAGIC:
            self._file.truncate(0)
            return
        position = len(MAGIC)
        while position + RECORD_HEAD <= end:
            self._file.seek(position)
            head = self._file.read(RECORD_HEAD)
            row, col, crc = HEAD.unpack_from(head)
            (size,) = PREFIX.unpack_from(head, HEAD.size)
            stop = position + RECORD_HEAD + size
            if not bundle.contains(row, col) or size > max_tile_bytes or stop > end:
                break
            if size and zlib.crc32(self._file.read(size)) != crc:
                break
            if size:
                self.tiles[row, col] = (position + RECORD_HEAD, size)
            else:
                self.absent.add((row, col))
            position = stop
        self._file.truncate(position)
        self.size = position
