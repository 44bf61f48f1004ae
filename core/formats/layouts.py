"""The three ways a level's tiles are laid out on disk (or in a package), read and written alike.

A layout knows its folder naming (spec §1, §2.1, §3.1); the bundle (128x128 tiles) is the unit
it hands out, for exploded caches too, so the exporter treats every format the same way.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

from ..errors import CorruptCacheError
from ..grid.tiling_scheme import PACKET_SIZE, StorageFormat, TileRange, bundle_origin, bundle_range
from . import compact_v1, compact_v2
from .atomic_file import AtomicFile
from .compact_v1 import BundleV1Reader, BundleV1Writer
from .compact_v2 import BundleV2Reader, BundleV2Writer
from .file_store import DirStore, ZipStore

Store = Union[DirStore, ZipStore]
Wanted = Callable[[int, int], bool]
LEVEL_RE = re.compile(r"^L(\d+)$", re.IGNORECASE)
BUNDLE_RE = re.compile(r"^R([0-9a-f]+)C([0-9a-f]+)\.bundle$", re.IGNORECASE)
ROW_RE = re.compile(r"^R([0-9a-f]{8})$", re.IGNORECASE)
TILE_RE = re.compile(r"^C([0-9a-f]{8})\.(png|jpg|jpeg)$", re.IGNORECASE)


class BundleReader(Protocol):
    def present(self) -> list[tuple[int, int]]: ...

    def read(self, row: int, col: int) -> bytes: ...

    def close(self) -> None: ...


class BundleWriter(Protocol):
    count: int

    def add(self, row: int, col: int, data: bytes) -> None: ...

    def commit(self) -> int: ...

    def abort(self) -> None: ...


def level_folder(level: int) -> str:
    return "L%02d" % level


def bundle_name(brow: int, bcol: int) -> str:
    return "R%04xC%04x" % (brow, bcol)


def tile_extension(data: bytes) -> str:
    return "jpg" if data[:3] == b"\xff\xd8\xff" else "png"


class Layout:
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

    def bundle_keys(self, level: int, window: Optional[TileRange]) -> list[tuple[int, int]]:
        raise NotImplementedError

    def open_bundle(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted] = None
                    ) -> Optional[BundleReader]:
        """The bundle's reader, None when it has no tile. `wanted(row, col)` names the tiles
        the caller will read: a remote layout fetches only those, a local one ignores it."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop work under way in other threads (downloads); local layouts have none."""

    def idle(self) -> None:
        """Called while the exporter waits: a remote layout lets the event loop run."""

    def tiles_received(self) -> dict[int, int]:
        """Tiles fetched so far per level (downloads report progress inside a bundle); none
        when local."""
        return {}

    def member_paths(self, level: int, brow: int, bcol: int) -> list[str]:
        """Store paths of the files that make up one bundle (for verbatim package copies)."""
        raise NotImplementedError


class _BundledLayout(Layout):
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


class CompactV2Layout(_BundledLayout):
    storage = StorageFormat.COMPACT_V2

    def open_bundle(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted] = None
                    ) -> Optional[BundleReader]:
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


class CompactV1Layout(_BundledLayout):
    storage = StorageFormat.COMPACT

    def open_bundle(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted] = None
                    ) -> Optional[BundleReader]:
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


class _ExplodedBlock:
    def __init__(self, store: Store, paths: dict[tuple[int, int], str]):
        self._store, self._paths = store, paths

    def present(self) -> list[tuple[int, int]]:
        return sorted(self._paths)

    def read(self, row: int, col: int) -> bytes:
        data = self._store.read(self._paths[(row, col)])
        if not data:
            raise CorruptCacheError(f"{self._store.label}/{self._paths[(row, col)]} is empty.")
        return data

    def close(self) -> None:
        pass


class ExplodedLayout(Layout):
    storage = StorageFormat.EXPLODED

    def __init__(self, store: Store, prefix: str):
        super().__init__(store, prefix)
        self._rows: dict[int, dict[int, str]] = {}

    def _row_folders(self, level: int) -> dict[int, str]:
        if level not in self._rows:
            folder = self.levels().get(level)
            rows = {}
            for name in self.store.listdir(self._path(folder)) if folder else []:
                match = ROW_RE.match(name)
                if match:
                    rows[int(match.group(1), 16)] = name
            self._rows[level] = rows
        return self._rows[level]

    def _tiles_in_row(self, level: int, row_folder: str) -> dict[int, str]:
        tiles = {}
        for name in self.store.listdir(self._path(self.levels()[level], row_folder)):
            match = TILE_RE.match(name)
            if match:
                tiles[int(match.group(1), 16)] = name
        return tiles

    def bundle_keys(self, level: int, window: Optional[TileRange]) -> list[tuple[int, int]]:
        keys = set()
        for row, folder in self._row_folders(level).items():
            if window is not None and not window.row_min <= row <= window.row_max:
                continue
            for col in self._tiles_in_row(level, folder):
                if window is None or window.col_min <= col <= window.col_max:
                    keys.add((bundle_origin(row), bundle_origin(col)))
        return sorted(keys)

    def _block_paths(self, level: int, brow: int, bcol: int) -> dict[tuple[int, int], str]:
        paths = {}
        folder = self.levels().get(level)
        for row, row_folder in self._row_folders(level).items():
            if brow <= row < brow + PACKET_SIZE:
                for col, name in self._tiles_in_row(level, row_folder).items():
                    if bcol <= col < bcol + PACKET_SIZE:
                        paths[(row, col)] = self._path(folder, row_folder, name)
        return paths

    def open_bundle(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted] = None
                    ) -> Optional[BundleReader]:
        paths = self._block_paths(level, brow, bcol)
        return _ExplodedBlock(self.store, paths) if paths else None

    def member_paths(self, level: int, brow: int, bcol: int) -> list[str]:
        return sorted(self._block_paths(level, brow, bcol).values())


def bundle_file_sizes(storage: StorageFormat, payload: int) -> list[int]:
    """Sizes of the files of a compact bundle whose records (size prefixes included) take
    `payload` bytes: known before any tile is read, so package members can be reserved."""
    if storage is StorageFormat.COMPACT_V2:
        return [compact_v2.DATA_START + payload]
    return [compact_v1.DATA_START + payload, compact_v1.INDEX_FILE_SIZE]


LAYOUTS = {cls.storage: cls for cls in (CompactV2Layout, CompactV1Layout, ExplodedLayout)}


class ExplodedBlockWriter:
    """Writes the tiles of one 128x128 block as files; unlisted tiles are left as they are.

    When it writes into a staging copy (`final_dir` given), deletions are deferred: they are
    listed in `deferred_removals` and applied to the final cache when the export commits.
    """

    def __init__(self, level_dir: Path, final_dir: Optional[Path] = None):
        self._dir, self._final_dir = level_dir, final_dir
        self.deferred_removals: list[Path] = []
        self.count = 0

    def _tile_path(self, row: int, col: int, ext: str, base: Optional[Path] = None) -> Path:
        return (base or self._dir) / ("R%08x" % row) / ("C%08x.%s" % (col, ext))

    def add(self, row: int, col: int, data: bytes) -> None:
        ext = tile_extension(data)
        out = AtomicFile(self._tile_path(row, col, ext))
        try:
            out.handle.write(data)
            out.commit()
        except BaseException:
            out.abort()
            raise
        self.remove(row, col, keep_ext=ext)
        self.count += 1

    def remove(self, row: int, col: int, keep_ext: str = "") -> None:
        for ext in ("png", "jpg"):
            if ext == keep_ext:
                continue
            if self._final_dir is not None:
                self.deferred_removals.append(self._tile_path(row, col, ext, self._final_dir))
                continue
            self._tile_path(row, col, ext).unlink(missing_ok=True)

    def commit(self) -> int:
        return 0

    def abort(self) -> None:
        pass


def open_writer(
    storage: StorageFormat,
    alllayers: Path,
    level: int,
    brow: int,
    bcol: int,
    profile: str,
    final_alllayers: Optional[Path] = None,
) -> Union[BundleV1Writer, BundleV2Writer, ExplodedBlockWriter]:
    level_dir = Path(alllayers) / level_folder(level)
    stem = level_dir / bundle_name(brow, bcol)
    if storage is StorageFormat.COMPACT_V2:
        return BundleV2Writer(AtomicFile(stem.with_suffix(".bundle")), profile)
    if storage is StorageFormat.COMPACT:
        return BundleV1Writer(AtomicFile(stem.with_suffix(".bundle")),
                              AtomicFile(stem.with_suffix(".bundlx")), brow, bcol)
    final_dir = Path(final_alllayers) / level_folder(level) if final_alllayers else None
    return ExplodedBlockWriter(level_dir, final_dir)
