"""What the storage formats share: level and bundle names, and `Layout`, the interface of a
level's tiles on disk (or in a package) that the exporter reads through.

A layout knows its folder naming (esri-formats §1, §2.1); the bundle (128x128 tiles) is the
unit it hands out, for exploded caches too, so the exporter treats every format the same way.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import CorruptCacheError
from ..grid.tiling_scheme import PACKET_SIZE, StorageFormat, TileRange, bundle_range
from .bundle import BundleReader
from .file_store import DirStore, ZipStore

Store = Union[DirStore, ZipStore]
Wanted = Callable[[int, int], bool]
LEVEL_RE = re.compile(r"^L(\d+)$", re.IGNORECASE)
BUNDLE_RE = re.compile(r"^R([0-9a-f]+)C([0-9a-f]+)\.bundle$", re.IGNORECASE)


def level_folder(level: int) -> str:
    return "L%02d" % level


def bundle_name(brow: int, bcol: int) -> str:
    return "R%04xC%04x" % (brow, bcol)


class Layout(ABC):
    """Read access to one storage format below `prefix` in a store."""

    storage: StorageFormat

    def __init__(self, store: Store, prefix: str):
        self.store, self.prefix = store, prefix.strip("/")
        self._levels: Optional[dict[int, str]] = None

    def _path(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def levels(self) -> dict[int, str]:
        """Level ID -> folder name, for the level folders that exist."""
        if self._levels is None:
            found = {}
            for name in self.store.listdir(self.prefix):
                match = LEVEL_RE.match(name)
                if match:
                    found[int(match.group(1))] = name
            self._levels = found
        return self._levels

    @abstractmethod
    def bundle_keys(self, level: int, window: Optional[TileRange]) -> list[tuple[int, int]]:
        """(row, col) of the bundles at `level` that hold tiles, those meeting `window` when
        given."""

    @abstractmethod
    def open_bundle(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted] = None
                    ) -> Optional[BundleReader]:
        """The bundle's reader, None when it has no tile. `wanted(row, col)` names the tiles
        the caller will read: a remote layout fetches only those, a local one ignores it."""

    def cancel(self) -> None:  # noqa: B027 (a hook: local layouts have nothing to do)
        """Stop work under way in other threads (downloads); local layouts have none."""

    def idle(self) -> None:  # noqa: B027 (a hook: local layouts have nothing to do)
        """Called while the exporter waits: a remote layout lets the event loop run."""

    def keep_downloads(self, folder: Optional[Path]) -> int:
        """Where a remote layout keeps downloaded tiles for a resume (download_spool.py);
        returns how many bundles have tiles there already. Local layouts download nothing."""
        return 0

    def drop_download(self, level: int, brow: int, bcol: int) -> None:  # noqa: B027 (a hook)
        """The bundle is safely written: its kept downloads are no longer needed."""

    def tiles_received(self) -> dict[int, int]:
        """Tiles fetched so far per level (downloads report progress inside a bundle); none
        when local."""
        return {}

    @abstractmethod
    def member_paths(self, level: int, brow: int, bcol: int) -> list[str]:
        """Store paths of the files that make up one bundle (for verbatim package copies)."""


class BundledLayout(Layout):
    """A compact format's layout: `L<level>/R<row>C<col>.bundle` files (esri-formats §2.1)."""

    def __init__(self, store: Store, prefix: str):
        super().__init__(store, prefix)
        self._bundles: dict[int, dict[tuple[int, int], str]] = {}

    def _bundle_names(self, level: int) -> dict[tuple[int, int], str]:
        if level not in self._bundles:
            folder = self.levels().get(level)
            names = {}
            for name in self.store.listdir(self._path(folder)) if folder else []:
                match = BUNDLE_RE.match(name)
                if match:
                    key = (int(match.group(1), 16), int(match.group(2), 16))
                    if key[0] % PACKET_SIZE or key[1] % PACKET_SIZE:
                        raise CorruptCacheError(
                            f"{self.store.label}: bundle {name} is not aligned to 128 tiles."
                        )
                    names[key] = name[: -len(".bundle")]
            self._bundles[level] = names
        return self._bundles[level]

    def bundle_keys(self, level: int, window: Optional[TileRange]) -> list[tuple[int, int]]:
        keys = sorted(self._bundle_names(level))
        if window is None:
            return keys
        return [k for k in keys if bundle_range(*k).intersection(window) is not None]

    def _stem(self, level: int, brow: int, bcol: int) -> Optional[str]:
        name = self._bundle_names(level).get((brow, bcol))
        return self._path(self.levels()[level], name) if name else None


