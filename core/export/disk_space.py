"""The pre-flight check of free space: an export that cannot fit is refused before it writes a
byte, with both numbers, instead of filling the disk halfway through."""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from ..errors import CacheError
from ..sources.source import CacheSource
from .estimate import format_size


def stored_bytes(source: CacheSource, tasks: Iterable[tuple[int, int, int]]) -> int:
    """The bytes of a local cache's bundle files for the planned bundles (what a copy writes,
    at most: tiles outside the selection are left out)."""
    layout, store = source.layout, source.store
    return sum(store.size(path) for level, brow, bcol in tasks
               for path in layout.member_paths(level, brow, bcol))


def check_free_space(target_dir: Path, needed: int) -> None:
    """Refuse when `needed` bytes are more than the free space where `target_dir` is (or
    will be made)."""
    folder = Path(target_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise CacheError(
            f"Not enough free space: the export needs about {format_size(needed)} ({needed} "
            f"bytes) but {folder} has {format_size(free)} ({free} bytes) free. Free some "
            "space, choose another target folder, or export fewer levels or a smaller area."
        )
