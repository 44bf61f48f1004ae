"""Write-to-temporary-then-rename files: a bundle is either old or new, never half-written."""
from __future__ import annotations

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


def sync_folder(folder: Path) -> None:
    """Make renames and new entries in `folder` durable (no-op where a folder cannot be opened:
    Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    """`data` into `path` through a synced temporary file renamed into place."""
    out = AtomicFile(path)
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
    """A file written beside its final name, fsynced, then renamed into place (and the rename
    synced): after a crash the path holds the old content or the new, never a part."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
        self.handle = open(self.tmp, "w+b")  # noqa: SIM115 - closed by commit/abort

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)
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
