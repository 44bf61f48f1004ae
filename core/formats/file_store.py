"""Random access to files in a folder or inside a zip package, so readers need not know which."""
from __future__ import annotations

import io
import mmap
import os
import posixpath
import shutil
import struct
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Optional, Protocol

import numpy as np

from ..errors import CacheError, CorruptCacheError

ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")
INFLATE_CHUNK = 1 << 20
MAP_WINDOW = 16 << 20  # u32_at maps this much of a file at a time (a multiple of any page size)
U32_WEIGHTS = np.array([1, 1 << 8, 1 << 16, 1 << 24], dtype=np.uint32)  # little-endian bytes
MAX_SMALL_MEMBER = 64 << 20  # root.json, conf.xml, iteminfo.xml...: read into memory
MAX_RATIO = 200  # inflated/compressed beyond this (and beyond RATIO_FLOOR bytes): a zip bomb
RATIO_FLOOR = 16 << 20


class ByteSource(Protocol):
    """A readable file of known size; each reader owns its own instance (one thread)."""

    name: str
    size: int

    def pread(self, offset: int, length: int) -> bytes: ...

    def u32_at(self, offsets: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class FileBytes:
    def __init__(self, path: Optional[Path], name: str, offset: int = 0,
                 size: Optional[int] = None, handle: Optional[BinaryIO] = None):
        """The file at `path`, or the open `handle` (an inflated member's spool)."""
        self.name = name
        self._file = handle or open(path, "rb")  # noqa: SIM115 - closed by close()
        self._offset = offset
        self.size = size if size is not None else os.fstat(self._file.fileno()).st_size

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise CorruptCacheError(
                f"{self.name}: a read of {length} bytes at offset {offset} goes past the end of "
                f"the file ({self.size} bytes). The file is truncated or corrupt."
            )
        self._file.seek(self._offset + offset)
        data = self._file.read(length)
        if len(data) != length:
            raise CorruptCacheError(f"{self.name}: unexpected end of file at offset {offset}.")
        return data

    def u32_at(self, offsets: np.ndarray) -> np.ndarray:
        """The little-endian u32 at each offset, gathered through a memory map window by window
        (MAP_WINDOW at a time, so the mapped pages never add up to the file): every record's
        size prefix, read one by one, costs a system call each (a second per 80,000 tiles)."""
        offsets = np.asarray(offsets, dtype=np.int64)
        values = np.zeros(len(offsets), dtype=np.uint32)
        if not len(offsets):
            return values
        if offsets.min() < 0 or offsets.max() + 4 > self.size:
            raise CorruptCacheError(f"{self.name}: a record's size prefix lies outside the file "
                                    f"({self.size} bytes). The file is truncated or corrupt.")
        where = self._offset + offsets
        order = np.argsort(where, kind="stable")
        where = where[order]
        starts, firsts = np.unique(where // MAP_WINDOW * MAP_WINDOW, return_index=True)
        file_size = os.fstat(self._file.fileno()).st_size
        for start, first, last in zip(starts.tolist(), firsts.tolist(),
                                      [*firsts[1:].tolist(), len(where)]):
            length = min(MAP_WINDOW + 4, file_size - start)
            with mmap.mmap(self._file.fileno(), length, offset=start,
                           access=mmap.ACCESS_READ) as mapped:
                data = np.frombuffer(mapped, dtype=np.uint8)
                picked = data[(where[first:last] - start)[:, None] + np.arange(4)]  # a copy
                del data  # the map cannot close while an array looks into it
            values[order[first:last]] = picked.astype(np.uint32) @ U32_WEIGHTS
        return values

    def close(self) -> None:
        self._file.close()


class DirStore:
    """Files below a folder; relative paths use '/'."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.label = str(self.root)

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.root / rel) if rel else os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def open(self, rel: str) -> ByteSource:
        return FileBytes(self.root / rel, f"{self.label}/{rel}")

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def copy_member(self, rel: str, out: io.BufferedIOBase) -> None:
        with open(self.root / rel, "rb") as src:
            shutil.copyfileobj(src, out, 16 << 20)

    def close(self) -> None:
        pass


class ZipStore:
    """Members of a zip package. STORED members are read in place; others are inflated."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.label = str(self.path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CacheError(
                f"{self.path} is not a readable zip archive ({exc}). Tile packages are zip files: "
                "this one is incomplete or of another kind; copy or download it again."
            ) from exc
        self._lock = threading.Lock()
        self._infos: dict[str, zipfile.ZipInfo] = {}
        self._dirs: dict[str, list[str]] = {}
        for info in self._zip.infolist():
            name = info.filename.replace("\\", "/")
            norm = posixpath.normpath(name)
            if name.startswith("/") or norm == ".." or norm.startswith("../") or ":" in name:
                raise CacheError(
                    f"{self.path}: the member {info.filename!r} points outside the package. "
                    "The package is malformed or malicious; it was not read."
                )
            if info.is_dir():
                continue
            self._infos[norm] = info
            parent, base = posixpath.split(norm)
            while True:
                self._dirs.setdefault(parent, []).append(base)
                if not parent:
                    break
                parent, base = posixpath.split(parent)
        for key, names in self._dirs.items():
            self._dirs[key] = sorted(set(names))

    @property
    def members(self) -> list[str]:
        return list(self._infos)

    def size(self, rel: str) -> int:
        """The member's uncompressed size."""
        return self._infos[rel].file_size

    def listdir(self, rel: str) -> list[str]:
        return list(self._dirs.get(rel.strip("/"), []))

    def exists(self, rel: str) -> bool:
        return rel in self._infos

    def read(self, rel: str) -> bytes:
        """A small member (metadata), inflated within MAX_SMALL_MEMBER bytes."""
        out = io.BytesIO()
        self._inflate(rel, out, MAX_SMALL_MEMBER)
        return out.getvalue()

    def _inflate(self, rel: str, out: io.IOBase, cap: Optional[int] = None) -> None:
        """A member's bytes streamed into `out`, refused as soon as they pass `cap`, the size
        the archive declares, or MAX_RATIO times their compressed size: a crafted member (1 GB
        of zeros in a few MB) costs neither memory nor disk."""
        info = self._infos[rel]
        limit = min(info.file_size, cap) if cap is not None else info.file_size
        ratio_limit = max(RATIO_FLOOR, MAX_RATIO * info.compress_size)
        written = 0
        try:
            with self._lock, self._zip.open(info) as src:
                while chunk := src.read(INFLATE_CHUNK):
                    written += len(chunk)
                    if written > limit or written > ratio_limit:
                        raise CorruptCacheError(
                            f"{self.path}: the member {rel} inflates to more than "
                            f"{min(limit, ratio_limit)} bytes (it is {info.compress_size} bytes "
                            f"compressed and says it holds {info.file_size}). The package is "
                            "malformed or malicious; it was not read.")
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise CorruptCacheError(
                f"{self.path}: the member {rel} cannot be inflated ({exc}). The package is "
                "damaged; copy or download it again.") from exc

    def data_offset(self, rel: str) -> int:
        """Where a member's bytes start in the archive (after its local header)."""
        info = self._infos[rel]
        with open(self.path, "rb") as handle:
            handle.seek(info.header_offset)
            signature, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(handle.read(30))
        if signature != b"PK\x03\x04":
            raise CorruptCacheError(f"{self.path}: broken local header for {rel}.")
        return info.header_offset + 30 + name_len + extra_len

    def open(self, rel: str) -> ByteSource:
        info = self._infos[rel]
        name = f"{self.label}!{rel}"
        if info.compress_type == zipfile.ZIP_STORED:
            return FileBytes(self.path, name, self.data_offset(rel), info.file_size)
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the FileBytes
        try:
            self._inflate(rel, spool)
            spool.flush()
            return FileBytes(None, name, handle=spool)
        except BaseException:
            spool.close()
            raise

    def copy_member(self, rel: str, out: io.BufferedIOBase) -> None:
        self._inflate(rel, out)

    def close(self) -> None:
        self._zip.close()


def find_case_insensitive(names: list[str], wanted: str) -> Optional[str]:
    for name in names:
        if name.lower() == wanted.lower():
            return name
    return None
