"""A STORED zip archive whose members are written in place, in parallel, once.

Each member reserves a region of known size; a worker writes the member's bytes there through
its own file handle, then its local header (with the CRC read back from the region). The central
directory, in the order ArcGIS writes (metadata first), goes at the end. Zip64 records are added
only where sizes or offsets need them (APPNOTE 4.5.3).
"""
from __future__ import annotations

import os
import struct
import threading
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import EngineBug
from .atomic_file import start_writeback
from .crc32_combine import crc32_combine
from .file_store import FileBytes

LIMIT = 0x7FFFFFFF  # like Python's zipfile: stay clear of readers that use signed 32-bit sizes
LOCAL = struct.Struct("<4s5H3L2H")
CENTRAL = struct.Struct("<4s6H3L5H2L")
END = struct.Struct("<4s4H2LH")
END64 = struct.Struct("<4sQ2H2L4Q")
LOCATOR64 = struct.Struct("<4sLQL")
VERSION, VERSION64 = 20, 45
CHUNK = 16 << 20


# Every member is stamped 2000-01-01 00:00: the same input and parameters give the same bytes
# (issue 13), whatever the day of the export.
FIXED_DOS_TIME = (0, ((2000 - 1980) << 9) | (1 << 5) | 1)
# Namespace of the content-derived package item ids (uuid5), fixed once.
CONTENT_ID_NAMESPACE = uuid.UUID("5a0c3a9e-7d6b-4f0e-9a53-2b1f8e4c6d71")


@dataclass
class _Entry:
    name: bytes
    offset: int
    size: int
    crc: int = 0
    done: bool = False

    @property
    def zip64(self) -> bool:
        return self.size > LIMIT

    def local_header(self, dos_time: int, dos_date: int) -> bytes:
        extra = struct.pack("<2H2Q", 1, 16, self.size, self.size) if self.zip64 else b""
        size32 = 0xFFFFFFFF if self.zip64 else self.size
        return LOCAL.pack(
            b"PK\x03\x04", VERSION64 if self.zip64 else VERSION, 0, 0, dos_time, dos_date,
            self.crc, size32, size32, len(self.name), len(extra),
        ) + self.name + extra

    @property
    def header_size(self) -> int:
        return LOCAL.size + len(self.name) + (20 if self.zip64 else 0)


class _RegionHandle:
    """Seek/write inside one member's region, through a file handle of its own.

    It keeps the CRC of each run of contiguous writes ([start, length, crc] segments); when
    the segments cover the region, its CRC is combined from them without reading it back.
    """

    def __init__(self, path: Path, base: int, size: int):
        self._file = open(path, "r+b")  # noqa: SIM115 - closed by the region
        self._base, self._size = base, size
        self._file.seek(base)
        self._segments: list[list[int]] = []

    @property
    def closed(self) -> bool:
        return self._file.closed

    def seek(self, position: int) -> None:
        self._file.seek(self._base + position)

    def tell(self) -> int:
        return self._file.tell() - self._base

    def write(self, data: bytes) -> int:
        position = self.tell()
        if position + len(data) > self._size:
            raise EngineBug("a package member outgrew its reserved size.")
        last = self._segments[-1] if self._segments else None
        if last is not None and last[0] + last[1] == position:
            last[1] += len(data)
            last[2] = zlib.crc32(data, last[2])
        else:
            self._segments.append([position, len(data), zlib.crc32(data)])
        return self._file.write(data)

    def crc(self) -> int:
        segments = sorted(self._segments)
        covered = 0
        crc = 0
        for start, length, segment_crc in segments:
            if start != covered:
                return self._read_back_crc()  # overlapping or sparse writes
            crc = crc32_combine(crc, segment_crc, length)
            covered += length
        return crc if covered == self._size else self._read_back_crc()

    def _read_back_crc(self) -> int:
        self._file.flush()
        self._file.seek(self._base)
        crc, left = 0, self._size
        while left:
            chunk = self._file.read(min(CHUNK, left))
            if not chunk:
                raise EngineBug("a package member is shorter than reserved.")
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
        return crc

    def write_header(self, header: bytes) -> None:
        """The member's local header, just before the region: the member is complete, so its
        write-back starts (the package is synced whole when closed)."""
        self._file.seek(self._base - len(header))
        self._file.write(header)
        self._file.flush()
        start_writeback(self._file.fileno(), self._base - len(header), len(header) + self._size)

    def close(self) -> None:
        self._file.close()


class Region:
    """The output of one member: the interface of atomic_file.AtomicFile (handle/commit/abort)."""

    def __init__(self, archive: ZipWriter, entry: _Entry):
        self._archive, self._entry = archive, entry
        self.handle = _RegionHandle(archive.path, entry.offset + entry.header_size, entry.size)

    def commit(self) -> None:
        self._entry.crc = self.handle.crc()
        self.handle.write_header(self._entry.local_header(*self._archive.dos_time))
        self.handle.close()
        self._entry.done = True

    def abort(self) -> None:
        if not self.handle.closed:
            self.handle.close()

    def release(self) -> None:
        """After `abort`: the member is to be written again (its name and room given back)."""
        if not self._entry.done:
            self._archive.release(self._entry)

    def discard_and_remove_target(self) -> None:
        raise EngineBug("an empty bundle was given room in a package.")


class ZipWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.write_bytes(b"")
        self.dos_time = FIXED_DOS_TIME
        self._lock = threading.Lock()
        self._end = 0
        self._entries: dict[str, _Entry] = {}

    def reserve(self, name: str, size: int) -> Region:
        """Room for a member of exactly `size` bytes; write it through the returned region."""
        encoded = name.encode("ascii")
        with self._lock:
            if name in self._entries:
                raise EngineBug(f"{name} was added to the package twice.")
            entry = _Entry(encoded, self._end, size)
            self._entries[name] = entry
            self._end += entry.header_size + size
        return Region(self, entry)

    def release(self, entry: _Entry) -> None:
        """Give up a reservation that was not committed (a bundle written again without its
        damaged tiles): its name is free again; its room is reclaimed when it is the last one,
        else left as unreferenced bytes that no member or directory entry points at."""
        with self._lock:
            name = entry.name.decode("ascii")
            if self._entries.get(name) is not entry:
                return
            del self._entries[name]
            if entry.offset + entry.header_size + entry.size == self._end:
                self._end = entry.offset
                with open(self.path, "r+b") as handle:
                    handle.truncate(self._end)

    def content_id(self) -> uuid.UUID:
        """An id derived from the members written so far (name, size, CRC-32), so the same
        content always gets the same id, and other content another."""
        with self._lock:
            members = sorted((name, entry.size, entry.crc)
                             for name, entry in self._entries.items() if entry.done)
        text = "\n".join(f"{name} {size} {crc:08x}" for name, size, crc in members)
        return uuid.uuid5(CONTENT_ID_NAMESPACE, text)

    def open_member(self, name: str) -> Optional[FileBytes]:
        """A member written already, read back from the unfinished archive; None when there is
        no such member."""
        entry = self._entries.get(name)
        if entry is None or not entry.done:
            return None
        return FileBytes(self.path, name, entry.offset + entry.header_size, entry.size)

    def write_bytes(self, name: str, data: bytes) -> None:
        region = self.reserve(name, len(data))
        try:
            region.handle.write(data)
            region.commit()
        finally:
            region.abort()

    def close(self, first: Optional[list[str]] = None) -> None:
        """Write the central directory: `first` in that order, then the rest by name."""
        first = first or []
        unfinished = [name for name, entry in self._entries.items() if not entry.done]
        if unfinished:
            raise EngineBug(f"package members not written: {unfinished[:3]}")
        names = [n for n in first if n in self._entries] + sorted(
            n for n in self._entries if n not in first)
        directory = bytearray()
        for name in names:
            directory += self._central(self._entries[name])
        with open(self.path, "r+b") as out:
            out.seek(self._end)
            out.write(directory)
            count, start, length = len(names), self._end, len(directory)
            if count >= 0xFFFF or start > LIMIT or length > LIMIT:
                end64 = start + length
                out.write(END64.pack(b"PK\x06\x06", 44, VERSION64, VERSION64, 0, 0, count, count,
                                     length, start))
                out.write(LOCATOR64.pack(b"PK\x06\x07", 0, end64, 1))
                count, start, length = min(count, 0xFFFF), min(start, 0xFFFFFFFF), min(
                    length, 0xFFFFFFFF)
            out.write(END.pack(b"PK\x05\x06", 0, 0, count, count, length, start, 0))
            out.flush()
            os.fsync(out.fileno())  # on disk before a rename makes the package visible

    def _central(self, entry: _Entry) -> bytes:
        extra = b""
        size32 = offset32 = None
        if entry.zip64:
            extra += struct.pack("<2Q", entry.size, entry.size)
            size32 = 0xFFFFFFFF
        if entry.offset > LIMIT:
            extra += struct.pack("<Q", entry.offset)
            offset32 = 0xFFFFFFFF
        if extra:
            extra = struct.pack("<2H", 1, len(extra)) + extra
        version = VERSION64 if extra else VERSION
        return CENTRAL.pack(
            b"PK\x01\x02", version, version, 0, 0, self.dos_time[0], self.dos_time[1], entry.crc,
            size32 if size32 is not None else entry.size,
            size32 if size32 is not None else entry.size,
            len(entry.name), len(extra), 0, 0, 0, 0,
            offset32 if offset32 is not None else entry.offset,
        ) + entry.name + extra
