"""The three storage formats side by side: each one's layout, its bundle writer, and the file
sizes of a compact bundle known before its tiles are read."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..grid.tiling_scheme import StorageFormat
from . import compact_v1, compact_v2
from .atomic_file import AtomicFile
from .bundle import BundleWriter
from .compact_v1 import BundleV1Writer, CompactV1Layout
from .compact_v2 import BundleV2Writer, CompactV2Layout
from .exploded import ExplodedBlockWriter, ExplodedLayout
from .layout import bundle_name, level_folder


def bundle_file_sizes(storage: StorageFormat, payload: int) -> list[int]:
    """Sizes of the files of a compact bundle whose records (size prefixes included) take
    `payload` bytes: known before any tile is read, so package members can be reserved."""
    if storage is StorageFormat.COMPACT_V2:
        return [compact_v2.DATA_START + payload]
    return [compact_v1.DATA_START + payload, compact_v1.INDEX_FILE_SIZE]


LAYOUTS = {cls.storage: cls for cls in (CompactV2Layout, CompactV1Layout, ExplodedLayout)}


def open_writer(
    storage: StorageFormat,
    alllayers: Path,
    level: int,
    brow: int,
    bcol: int,
    profile: str,
    final_alllayers: Optional[Path] = None,
) -> BundleWriter:
    level_dir = Path(alllayers) / level_folder(level)
    stem = level_dir / bundle_name(brow, bcol)
    if storage is StorageFormat.COMPACT_V2:
        return BundleV2Writer(AtomicFile(stem.with_suffix(".bundle")), profile)
    if storage is StorageFormat.COMPACT:
        return BundleV1Writer(AtomicFile(stem.with_suffix(".bundle")),
                              AtomicFile(stem.with_suffix(".bundlx")), brow, bcol)
    final_dir = Path(final_alllayers) / level_folder(level) if final_alllayers else None
    return ExplodedBlockWriter(level_dir, final_dir)
