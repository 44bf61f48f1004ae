"""What every storage format offers the exporter for one bundle (128x128 tiles): a reader and a
writer. Exploded caches hand out their tiles by bundle too, so the exporter treats every format
alike; what differs between formats is said by the interface (`indexed`, `takes_records`), not
found out by probing."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class BundleReader(ABC):
    """The tiles of one bundle of a cache, read by row and column (absolute, at the level)."""

    indexed = False  # True: `locate` knows a tile's record (offset, size) without reading it

    @abstractmethod
    def present(self) -> list[tuple[int, int]]:
        """(row, col) of the tiles the bundle holds, in row-major order."""

    def invalid(self) -> dict[tuple[int, int], str]:
        """Tiles the index lists at records that cannot be right (outside the data, overlapping
        another): left out of `present()`, reported as damaged."""
        return {}

    @abstractmethod
    def read(self, row: int, col: int) -> bytes:
        """The bytes of a present tile."""

    def locate(self, row: int, col: int) -> tuple[int, int]:
        """(offset of the image bytes, size) of an indexed reader's tile, one `present()`
        listed; the u32 size prefix sits at offset - 4."""
        raise NotImplementedError(f"{type(self).__name__} has no index")

    def pread(self, offset: int, length: int) -> bytes:
        """Raw bytes of an indexed reader's bundle file (record runs)."""
        raise NotImplementedError(f"{type(self).__name__} has no record file")

    def size_prefixes(self, offsets: np.ndarray) -> np.ndarray:
        """The u32 size prefixes of the records whose image bytes start at `offsets`, read at
        once (an indexed reader's bundle file)."""
        raise NotImplementedError(f"{type(self).__name__} has no record file")

    @abstractmethod
    def close(self) -> None:
        """Release the files (or the download spool) behind the reader."""


class BundleWriter(ABC):
    """One bundle of the target being written: tiles added in row-major order, then committed
    (the bundle appears whole) or aborted (nothing of it appears)."""

    takes_records = False  # True: `add_records` appends size-prefixed record runs as they are
    count: int  # tiles added so far

    @abstractmethod
    def add(self, row: int, col: int, data: bytes) -> None:
        """Write one tile."""

    def add_records(self, blob: bytes, entries: list[tuple[int, int, int, int]]) -> None:
        """Append `blob` (size-prefixed records); entries are (row, col, data offset in blob,
        size). Only where `takes_records`."""
        raise NotImplementedError(f"{type(self).__name__} takes tiles, not records")

    def remove(self, row: int, col: int) -> None:  # noqa: B027 (most formats: nothing to do)
        """Take a tile out of the target. A compact bundle is written whole, so a tile that is
        not added is gone already: only formats that keep tiles apart have work to do."""

    def deferred_removals(self) -> list[Path]:
        """Files to delete from the final cache when the export commits (staged exports)."""
        return []

    @abstractmethod
    def commit(self) -> int:
        """Make the bundle final; returns the bytes written."""

    @abstractmethod
    def abort(self) -> None:
        """Leave nothing of the bundle behind."""

    def abort_to_rewrite(self) -> None:
        """`abort`, for the same bundle to be written again at once (without its damaged
        tiles): a package member's reserved name and room are given back."""
        self.abort()
