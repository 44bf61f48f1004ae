"""Exploded caches: one file per tile, `L<level>/R<row hex 8>/C<col hex 8>.<png|jpg>`
(esri-formats §1). Read and written by bundle like the compact formats: a bundle here is the 128x128
block of tile files."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..errors import CorruptCacheError
from ..grid.tiling_scheme import PACKET_SIZE, StorageFormat, TileRange, bundle_origin
from .atomic_file import AtomicFile
from .bundle import BundleReader, BundleWriter
from .image_kind import tile_extension
from .layout import Layout, Store, Wanted

ROW_RE = re.compile(r"^R([0-9a-f]{8})$", re.IGNORECASE)
TILE_RE = re.compile(r"^C([0-9a-f]{8})\.(png|jpg|jpeg)$", re.IGNORECASE)


class _ExplodedBlock(BundleReader):
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


def _row_folder(row: int) -> str:
    return "R%08x" % row


def block_files(level_dir: Path, brow: int, bcol: int) -> list[Path]:
    """The tile files of one block under a level folder on disk (a stage being written)."""
    files = []
    for row in range(brow, brow + PACKET_SIZE):
        row_dir = level_dir / _row_folder(row)
        if row_dir.is_dir():
            for path in row_dir.iterdir():
                match = TILE_RE.match(path.name)
                if match and bcol <= int(match.group(1), 16) < bcol + PACKET_SIZE:
                    files.append(path)
    return sorted(files)


class ExplodedBlockWriter(BundleWriter):
    """Writes the tiles of one 128x128 block as files; unlisted tiles are left as they are.

    When it writes into a staging copy (`final_dir` given), deletions are deferred: they are
    listed by `deferred_removals()` and applied to the final cache when the export commits.
    """

    def __init__(self, level_dir: Path, final_dir: Optional[Path] = None):
        self._dir, self._final_dir = level_dir, final_dir
        self._removals: list[Path] = []
        self.count = 0

    def _tile_path(self, row: int, col: int, ext: str, base: Optional[Path] = None) -> Path:
        return (base or self._dir) / _row_folder(row) / ("C%08x.%s" % (col, ext))

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
                self._removals.append(self._tile_path(row, col, ext, self._final_dir))
                continue
            self._tile_path(row, col, ext).unlink(missing_ok=True)

    def deferred_removals(self) -> list[Path]:
        return self._removals

    def commit(self) -> int:
        return 0

    def abort(self) -> None:
        pass
