"""The manifest the log gives after a dataset export (export/checkpoint.py `manifest_line`): a
line per bundle file, and a single line for an exploded block's many tile files."""
from __future__ import annotations

import hashlib

from export_map_server_cache.core.export.bundle_result import BundleResult
from export_map_server_cache.core.export.checkpoint import (
    Checkpoint,
    FileRecord,
    manifest_line,
    record_files,
)


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


def test_a_resumed_checkpoint_gives_each_kept_bundle_its_own_line(tmp_path):
    """The manifest of bundles kept from an interrupted run names each block as recorded."""
    stage = tmp_path / "stage"
    first = Checkpoint(stage, "plan", "Layers/")
    first.resume()
    for bcol in (0, 128):
        paths = []
        for col in range(bcol, bcol + 3):
            path = stage / "Layers" / "_alllayers" / "L05" / "R00000000" / f"C{col:08x}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"tile %d" % col)
            paths.append(path)
        first.record(BundleResult(5, 0, bcol, tiles=3), record_files(stage, paths))
    first._stream.close()  # as a kill leaves it: every record flushed, the file not discarded
    again = Checkpoint(stage, "plan", "Layers/")
    assert len(again.resume()) == 2
    assert sorted(line.split(" ")[2] for line in again.manifest) == [
        "_alllayers/L05/R0000C0000", "_alllayers/L05/R0000C0080"]
    again.discard()
