"""The manifest the log gives after a dataset export (export/checkpoint.py `manifest_line`): a
line per bundle file, and a single line for an exploded block's many tile files."""
from __future__ import annotations

import hashlib

from export_map_server_cache.core.export.bundle_result import BundleResult
from export_map_server_cache.core.export.checkpoint import FileRecord, manifest_line


def test_bundle_files_are_listed_one_by_one():
    files = [FileRecord("Layers/_alllayers/L03/R0080C0000.bundle", 1000, "a" * 64),
             FileRecord("Layers/_alllayers/L03/R0080C0000.bundlx", 81952, "b" * 64)]
    assert manifest_line(BundleResult(3, 128, 0), files, "Layers/") == [
        f"1000 {'a' * 64} _alllayers/L03/R0080C0000.bundle",
        f"81952 {'b' * 64} _alllayers/L03/R0080C0000.bundlx"]


def test_an_exploded_block_is_one_line():
    files = [FileRecord(f"Layers/_alllayers/L05/R{row:08x}/C{col:08x}.png", 10 + row,
                        f"{row:064x}") for row in range(128, 131) for col in (256, 257)]
    (line,) = manifest_line(BundleResult(5, 128, 256), files, "Layers/")
    own = "\n".join(f"{r.size} {r.sha256} {r.path.removeprefix('Layers/')}" for r in files)
    assert line.startswith(f"{sum(r.size for r in files)} "
                           f"{hashlib.sha256(own.encode()).hexdigest()} "
                           "_alllayers/L05/R0080C0100 (the block's 6 tile files")


def test_a_bundle_left_empty_has_no_line():
    assert manifest_line(BundleResult(1, 0, 0), [], "Layers/") == []
