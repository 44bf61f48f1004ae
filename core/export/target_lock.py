"""One writer per target: an advisory lock file beside the target, held for the whole run.

The operating system drops the lock when the process ends, however it ends, so a killed export
never leaves a target locked. A second export into the same dataset or package stops at once and
names the run that holds it (process, host, start time, written into the lock file).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from ..errors import CacheError, Concern

if sys.platform == "win32":
    import msvcrt

    LOCKED_BYTE = 1 << 30  # past the holder's text, which others must still be able to read

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, LOCKED_BYTE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

HOLDER_BYTES = 4096  # what is read of another run's lock file


def lock_path(output_path: Path) -> Path:
    """`.<output name>.lock` beside the dataset folder or package file."""
    return output_path.with_name(f".{output_path.name}.lock")


class TargetLock:
    """Held from `acquire()` to `release()`; a context manager does both."""

    def __init__(self, output_path: Path):
        self.path = lock_path(output_path)
        self._output = output_path
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock, or raise CacheError naming the export that holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = os.pread(fd, HOLDER_BYTES, 0) if hasattr(os, "pread") else b""
                os.close(fd)
                raise CacheError(
                    f"Another export is writing to {str(self._output)!r} "
                    f"({_describe(holder)}). Wait until it has ended, or choose another target.",
                    Concern.TARGET)
            # the file may have been removed by the run that held it just before we locked it:
            # then this lock guards nothing, and we try again with the path's current file
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            _unlock(fd)
            os.close(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file (no litter), then let go of the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):  # Windows cannot remove an open file
            self.path.unlink()
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> TargetLock:
        self.acquire()
        return self

    def __exit__(self, *_) -> None:
        self.release()


def _describe(holder: bytes) -> str:
    try:
        info = json.loads(holder)
        return (f"process {int(info['pid'])} on {str(info['host'])[:100]}, started "
                f"{str(info['started'])[:40]}")
    except (ValueError, KeyError, TypeError):
        return "a run that has not yet said who it is"
