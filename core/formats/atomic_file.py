"""Write-to-temporary-then-rename files: a bundle is either old or new, never half-written.

Durability is paid once, where it matters: a file written into an export's hidden stage only
starts its write-back when committed (so the disk works while the export goes on), and the
stage is synced as a whole (`sync_tree`) before a rename or a journal makes it visible. A kill
loses nothing either way (the page cache outlives the process); syncing each bundle as it was
written made the export wait for the disk bundle by bundle (bench/README.md, crash safety).
"""
from __future__ import annotations

import ctypes
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol


class Output(Protocol):
    """Where a writer puts one file: a temporary file renamed into place (AtomicFile) or a
    member region of a package (zip_writer.Region)."""

    handle: BinaryIO

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def release(self) -> None:
        """After `abort`: the same file is about to be written again."""

    def discard_and_remove_target(self) -> None: ...


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Make renames and new entries in `folder` durable (no-op where a folder cannot be opened:
    Windows)."""
    try:
        _fsync_path(folder)
    except OSError:
        return


def _sync_file_range():
    """Linux's sync_file_range, to start writing a file's dirty pages back without waiting for
    them (None elsewhere: there the final sync does all of it)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return call


SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Have the disk start on `length` bytes at `offset` (0: to the end) of an open file; the
    sync that makes them durable later has less to wait for."""
    if SYNC_FILE_RANGE is not None:
        SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def sync_tree(folder: Path) -> None:
    """Every file and folder under `folder` (itself included) durable: what a stage must be
    before a rename or a journal makes it visible."""
    for parent, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(parent, name))
        sync_folder(Path(parent))


def write_synced(path: Path, data: bytes) -> None:
    """`data` into `path` through a synced temporary file renamed into place."""
    out = AtomicFile(path, durable=True)
    try:
        out.handle.write(data)
        out.commit()
    finally:
        out.abort()


def is_temporary(name: str) -> bool:
    """Whether a file name is an AtomicFile's work in progress (`.<name>.<id>.tmp`), which a
    killed process leaves behind."""
    return name.startswith(".") and name.endswith(".tmp")


class AtomicFile:
    """A file written beside its final name, then renamed into place: after a kill the path
    holds the old content or the new, never a part. `durable`: synced before the rename and
    the rename synced, so that this holds after a power cut too; otherwise (files of a stage)
    the write-back only starts, and the stage is synced whole before it becomes visible."""

    def __init__(self, path: Path, durable: bool = False):
        self.path = Path(path)
        self.durable = durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
        self.handle = open(self.tmp, "w+b")  # noqa: SIM115 - closed by commit/abort

    def commit(self) -> None:
        self.handle.flush()
        if self.durable:
            os.fsync(self.handle.fileno())
        else:
            start_writeback(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)
        if self.durable:
            sync_folder(self.path.parent)

    def abort(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        self.tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Nothing was reserved: `abort` left nothing."""

    def discard_and_remove_target(self) -> None:
        """No content: drop the temporary file and any previous version of the target."""
        self.abort()
        self.path.unlink(missing_ok=True)
