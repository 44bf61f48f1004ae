"""Deterministic output (issue 13, item 2): the same input and parameters give a byte-identical
package (fixed member timestamps, an item id derived from the content, not at random); other
content gets another item id. Whatever the number of workers: a package's members are
reserved in the plan's order (export/turnstile.py), from compact sources (written straight into
the package) and exploded ones (staged, then copied in) alike."""
from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import web_mercator_scheme, write_cache  # noqa: E402

from export_map_server_cache.core.exporter import Exporter, ExportOptions  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402
from export_map_server_cache.core.selection.tile_selection import Selection  # noqa: E402
from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402

WINDOWS = {3: TileRange(0, 7, 0, 7), 8: TileRange(120, 260, 120, 135)}  # 1 + 6 bundles


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    layers = tmp_path_factory.mktemp("determinism") / "Src" / "Layers"
    write_cache(layers, web_mercator_scheme(), WINDOWS)
    return layers.parent


@pytest.fixture(scope="module")
def exploded_source(tmp_path_factory) -> Path:
    layers = tmp_path_factory.mktemp("determinism-exploded") / "Src" / "Layers"
    write_cache(layers, web_mercator_scheme(storage=StorageFormat.EXPLODED), WINDOWS)
    return layers.parent


def _package(source_path: Path, target_dir: Path, storage: StorageFormat, levels: list[int],
             workers: int) -> Path:
    cache = open_cache(str(source_path))
    try:
        return Exporter(cache, levels, Selection(),
                        ExportOptions(target_dir, storage, package=True,
                                      workers=workers)).run().output_path
    finally:
        cache.close()


def _item_id(package: Path) -> str:
    with zipfile.ZipFile(package) as z:
        if package.suffix == ".tpkx":
            return json.loads(z.read("iteminfo.json"))["guid"].lower()
        return re.search(r"<ID>([^<]+)</ID>", z.read("esriinfo/item.pkinfo").decode()).group(1)


@pytest.mark.parametrize("storage", [StorageFormat.COMPACT_V2, StorageFormat.COMPACT])
def test_same_export_same_bytes(source, tmp_path, storage):
    first = _package(source, tmp_path / "a", storage, [3, 8], workers=1)
    second = _package(source, tmp_path / "b", storage, [3, 8], workers=1)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as z:
        assert {info.date_time for info in z.infolist()} == {(2000, 1, 1, 0, 0, 0)}


@pytest.mark.parametrize("storage", [StorageFormat.COMPACT_V2, StorageFormat.COMPACT])
def test_item_id_follows_content(source, tmp_path, storage):
    one = _package(source, tmp_path / "a", storage, [3, 8], workers=1)
    parallel = _package(source, tmp_path / "b", storage, [3, 8], workers=4)
    other = _package(source, tmp_path / "c", storage, [3], workers=1)
    assert _item_id(one) == _item_id(parallel)
    assert _item_id(one) != _item_id(other)


@pytest.mark.parametrize("storage", [StorageFormat.COMPACT_V2, StorageFormat.COMPACT])
@pytest.mark.parametrize("kind", ["compact", "exploded"])
def test_any_number_of_workers_gives_the_same_bytes(source, exploded_source, tmp_path,
                                                    storage, kind):
    path = source if kind == "compact" else exploded_source
    one = _package(path, tmp_path / "one", storage, [3, 8], workers=1).read_bytes()
    for run in range(3):
        parallel = _package(path, tmp_path / f"run{run}", storage, [3, 8], workers=6)
        assert parallel.read_bytes() == one, f"run {run} with 6 workers"
