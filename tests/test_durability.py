"""Durability order (issue 13, item 1): every bundle an export writes is on disk (fsynced)
before the rename or the journal that makes it visible, though stage files are no longer synced
one by one (core/formats/atomic_file.py). The export runs in-process with os.fsync and
os.replace observed (each still does its real work): the inodes synced are compared with the
files the output holds, at the moment the output becomes visible."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import web_mercator_scheme, write_cache  # noqa: E402

from export_map_server_cache.core.exporter import Exporter, ExportOptions  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402
from export_map_server_cache.core.selection.tile_selection import Selection  # noqa: E402
from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402

WINDOWS = {3: TileRange(0, 7, 0, 7), 8: TileRange(120, 140, 120, 135)}  # 1 + 4 bundles


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    layers = tmp_path_factory.mktemp("durability") / "Src" / "Layers"
    write_cache(layers, web_mercator_scheme(), WINDOWS)
    return layers.parent


@pytest.fixture
def observed(monkeypatch):
    """(synced inodes, and a list of (replaced source, destination, inodes synced so far))."""
    synced: set[int] = set()
    replaced: list[tuple[str, str, frozenset]] = []
    fsync, replace = os.fsync, os.replace

    def observed_fsync(fd):
        fsync(fd)
        synced.add(os.fstat(fd).st_ino)

    def observed_replace(src, dst):
        replace(src, dst)
        replaced.append((str(src), str(dst), frozenset(synced)))

    monkeypatch.setattr(os, "fsync", observed_fsync)
    monkeypatch.setattr(os, "replace", observed_replace)
    return synced, replaced


def _export(source: Path, target_dir: Path, package: bool = False) -> Path:
    cache = open_cache(str(source))
    try:
        return Exporter(cache, sorted(WINDOWS), Selection(), ExportOptions(
            target_dir, StorageFormat.COMPACT_V2, package=package, workers=3)).run().output_path
    finally:
        cache.close()


def _bundle_inodes(layers: Path) -> set[int]:
    inodes = {path.stat().st_ino for path in layers.rglob("*.bundle")}
    assert len(inodes) == 5
    return inodes


def _synced_when(replaced, wanted) -> frozenset:
    (synced,) = [synced for src, dst, synced in replaced if wanted(src, dst)]
    return synced


def test_a_new_dataset_is_synced_before_its_rename(source, tmp_path, observed):
    _, replaced = observed
    layers = _export(source, tmp_path / "out")
    synced = _synced_when(replaced, lambda src, dst: ".partial-" in src and dst == str(
        layers.parent))
    assert _bundle_inodes(layers) <= synced


def test_an_update_is_synced_before_its_journal(source, tmp_path, observed):
    _, replaced = observed
    layers = _export(source, tmp_path / "out")
    replaced.clear()
    _export(source, tmp_path / "out")  # merged into itself: every bundle rewritten
    synced = _synced_when(replaced, lambda src, dst: dst.endswith(".journal"))
    assert _bundle_inodes(layers) <= synced


def test_a_package_is_synced_before_its_rename(source, tmp_path, observed):
    _, replaced = observed
    package = _export(source, tmp_path / "out", package=True)
    synced = _synced_when(replaced, lambda src, dst: dst == str(package))
    assert package.stat().st_ino in synced
