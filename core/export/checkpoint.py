"""The checkpoint that lets an interrupted export of a cache dataset resume.

A dataset (new, or an update of one) is built in a staging folder beside the target whose name
carries the export's plan key (what is exported, from where, how), so running the same export
again finds it. Every bundle finished there is recorded in the stage's `checkpoint.jsonl`, a
line at a time: its result and the size and SHA-256 of each of its files. A resumed run keeps
the bundles whose files still match their record and does only the rest; the records are also
the manifest of what was written (`manifest_line`, given in the log when the export completes:
a file beside conf.xml is left out, as nothing shows that ArcGIS ignores one). The stage,
checkpoint included, goes when the export completes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from ..formats.layout import bundle_name
from ..grid.tiling_scheme import TileRange
from .bundle_result import BundleResult

LOG = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.jsonl"
MAX_CHECKPOINT_BYTES = 256 << 20  # a line per bundle: far more than any export has
HASH_CHUNK = 1 << 20

Bundle = tuple[int, int, int]  # (level, brow, bcol)


@dataclass(frozen=True)
class FileRecord:
    """One file of a finished bundle, relative to the stage."""

    path: str
    size: int
    sha256: str


def plan_key(facts: dict) -> str:
    """A short, stable name for an export: the same facts give the same key."""
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_files(stage: Path, files: Iterable[Path]) -> list[FileRecord]:
    """Sizes and SHA-256 of a finished bundle's files (read back in the worker that wrote
    them, while they are still in the page cache)."""
    return [FileRecord(str(path.relative_to(stage)), path.stat().st_size, _sha256(path))
            for path in files]


def manifest_line(result: BundleResult, files: list[FileRecord], prefix: str) -> list[str]:
    """A finished bundle in the manifest: each of its files (size, SHA-256, path below
    `prefix`); more than two (the tiles of an exploded block) as one line: their bytes, the
    SHA-256 of their own lines, and the block, so the manifest has a line per bundle."""
    lines = [f"{record.size} {record.sha256} {record.path.removeprefix(prefix)}"
             for record in files]
    if len(lines) <= 2:
        return lines
    level = Path(files[0].path.removeprefix(prefix)).parents[1]  # of _alllayers/L05/R../C..
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return [f"{sum(record.size for record in files)} {digest} "
            f"{(level / bundle_name(result.brow, result.bcol)).as_posix()} (the block's "
            f"{len(files)} tile files: SHA-256 of their own lines)"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Checkpoint:
    """`<stage>/checkpoint.jsonl`: a first line naming the plan, then one line per bundle."""

    def __init__(self, stage: Path, key: str, manifest_prefix: str):
        self.stage, self.key = stage, key
        self.path = stage / CHECKPOINT_NAME
        self._stream: Optional[TextIO] = None
        self._lock = threading.Lock()  # bundles are recorded by the workers that wrote them
        self._prefix = manifest_prefix
        self.manifest: list[str] = []  # a line or two per bundle (never per tile)

    def resume(self) -> dict[Bundle, BundleResult]:
        """The bundles an earlier run of this export finished and whose files are intact; the
        checkpoint is then rewritten with only those, ready for more."""
        kept: dict[Bundle, tuple[BundleResult, list[FileRecord]]] = {}
        for result, files in self._read():
            if all(_intact(self.stage, record) for record in files):
                kept[result.level, result.brow, result.bcol] = (result, files)
        self.stage.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(json.dumps({"plan": self.key}) + "\n")
            for result, files in kept.values():
                out.write(_line(result, files))
        os.replace(temporary, self.path)
        self._stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        for result, files in kept.values():
            self.manifest.extend(manifest_line(result, files, self._prefix))
        return {bundle: result for bundle, (result, _) in kept.items()}

    def record(self, result: BundleResult, files: list[FileRecord]) -> None:
        """A finished bundle (its files are already synced and in place in the stage)."""
        line = _line(result, files)
        with self._lock:
            self.manifest.extend(manifest_line(result, files, self._prefix))
            if self._stream is not None:
                self._stream.write(line)
                self._stream.flush()

    def discard(self) -> None:
        """The export is over (completed, failed or canceled): no resuming it."""
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        self.path.unlink(missing_ok=True)

    def _read(self) -> list[tuple[BundleResult, list[FileRecord]]]:
        """The records of an earlier run of the same plan; none if there is no checkpoint,
        another plan's, or an unreadable one (a line cut short by a kill ends it)."""
        try:
            if self.path.stat().st_size > MAX_CHECKPOINT_BYTES:
                return []
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        try:
            if not lines or json.loads(lines[0]) != {"plan": self.key}:
                return []
        except ValueError:
            return []
        records = []
        for line in lines[1:]:
            try:
                records.append(_parse(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                break
        return records


def _line(result: BundleResult, files: list[FileRecord]) -> str:
    tile_range = result.tile_range
    return json.dumps({
        "bundle": [result.level, result.brow, result.bcol],
        "tiles": result.tiles, "bytes": result.bytes, "touched": result.touched,
        "range": None if tile_range is None else [tile_range.row_min, tile_range.row_max,
                                                   tile_range.col_min, tile_range.col_max],
        "removals": [str(path) for path in result.removals],
        "damaged": [[row, col, why] for (row, col), why in sorted(result.damaged.items())],
        "files": [[record.path, record.size, record.sha256] for record in files],
    }) + "\n"


def _parse(entry: dict) -> tuple[BundleResult, list[FileRecord]]:
    level, brow, bcol = (int(number) for number in entry["bundle"])
    tile_range = entry["range"]
    result = BundleResult(
        level, brow, bcol, tiles=int(entry["tiles"]), bytes=int(entry["bytes"]),
        tile_range=None if tile_range is None else TileRange(*(int(n) for n in tile_range)),
        touched=bool(entry["touched"]), removals=[Path(str(p)) for p in entry["removals"]],
        damaged={(int(row), int(col)): str(why) for row, col, why in entry["damaged"]})
    files = [FileRecord(str(path), int(size), str(sha)) for path, size, sha in entry["files"]]
    return result, files


def _intact(stage: Path, record: FileRecord) -> bool:
    """The file is inside the stage and still has its recorded size and SHA-256."""
    path = (stage / record.path).resolve()
    try:
        return (path.is_relative_to(stage.resolve()) and path.stat().st_size == record.size
                and _sha256(path) == record.sha256)
    except OSError:
        return False
