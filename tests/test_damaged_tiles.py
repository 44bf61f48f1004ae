"""Tiles checked as they pass (issue 13 item 5): damaged tiles of the input (truncated PNG or
JPEG, bytes that are no image) are left out of the output and reported per level, or fail the
run with FAIL_ON_DAMAGED_TILES; wholly transparent tiles survive a MERGE into a target that has
them. The Esri-written fixtures hold no damaged tile, so the damage is crafted here."""
from __future__ import annotations

import io
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import (  # noqa: E402
    read_output,
    tile_image,
    web_mercator_scheme,
    write_cache,
)
from recording import recording_feedback  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
LEVELS = {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(4)}
PNG_DAMAGE = {
    (2, 1, 1): lambda data: data[:-20],  # cut short: no IEND
    (3, 0, 0): lambda data: bytes(1000),  # zeros where a tile should be
    (3, 5, 5): lambda data: data[: len(data) // 2] + bytes(len(data) // 2),  # zeroed tail
}
JPEG_DAMAGE = {
    (1, 0, 1): lambda data: data[:-2],  # no EOI
    (3, 7, 7): lambda data: b"<html>error 500</html>",  # a server's error page kept as a tile
}
DAMAGE_LINE = re.compile(r"Level (\d+): \d+ damaged tile")
# STORAGE_FORMAT_TYPE / EXPORT_CACHE_TYPE of each output kind, and how to read it back
OUTPUTS = {
    "dataset-v2": (1, 0), "dataset-v1": (0, 0), "dataset-exploded": (2, 0),
    "tpkx": (1, 1), "tpk": (0, 1),
}


def damaged_cache(folder: Path, storage: StorageFormat, tile_format: str, damage: dict
                  ) -> dict:
    """A cache whose tiles at `damage`'s addresses are damaged; returns the good tiles."""
    def make(level: int, row: int, col: int) -> bytes:
        data = tile_image(level, row, col, tile_format)
        spoil = damage.get((level, row, col))
        return spoil(data) if spoil else data

    written = write_cache(folder / "Layers", web_mercator_scheme(
        6, storage=storage, tile_format=tile_format), LEVELS, make=make)
    return {key: data for key, data in written.items() if key not in damage}


def run(source: Path, target: Path, kind: str = "dataset-v2", **extra) -> tuple[dict, object]:
    import processing

    storage, cache_type = OUTPUTS[kind]
    feedback = recording_feedback()
    params = {"INPUT_SERVICE": str(source), "TARGET_CACHE_PATH": str(target),
              "EXPORT_CACHE_TYPE": cache_type, "STORAGE_FORMAT_TYPE": storage,
              "NUM_OF_CACHING_SERVICE_INSTANCES": 2, "LOAD_RESULT": False}
    params.update(extra)
    return processing.run(ALG, params, feedback=feedback), feedback


def assert_reported(feedback, damage: dict) -> None:
    """One log line per damaged level, with the count and the damaged addresses."""
    for level in sorted({key[0] for key in damage}):
        keys = [key for key in damage if key[0] == level]
        lines = [line for line in feedback.infos
                 if line.startswith(f"Level {level}: {len(keys)} damaged tile(s)")]
        assert len(lines) == 1, feedback.infos
        for _, row, col in keys:
            assert f"row {row} col {col}:" in lines[0]
    reported = [int(match.group(1)) for match in map(DAMAGE_LINE.match, feedback.infos)
                if match]
    assert sorted(reported) == sorted({key[0] for key in damage})


@pytest.mark.parametrize("kind", list(OUTPUTS))
def test_damaged_png_tiles_are_left_out_and_reported(tmp_path, kind):
    """From a Compact V2 input, to every output kind (the record-run copy, the package's
    reserved members and the tile-by-tile paths): the output holds every good tile, byte for
    byte, and none of the damaged ones."""
    good = damaged_cache(tmp_path / "src", StorageFormat.COMPACT_V2, "PNG", PNG_DAMAGE)
    result, feedback = run(tmp_path / "src", tmp_path / "out", kind)
    assert read_output(result["OUTPUT_CACHE_PATH"], kind) == good
    assert result["TILE_COUNT"] == len(good)
    assert_reported(feedback, PNG_DAMAGE)


@pytest.mark.parametrize("storage", [StorageFormat.COMPACT, StorageFormat.EXPLODED])
def test_damaged_jpeg_tiles_of_v1_and_exploded_inputs(tmp_path, storage):
    good = damaged_cache(tmp_path / "src", storage, "JPEG", JPEG_DAMAGE)
    result, feedback = run(tmp_path / "src", tmp_path / "out")
    assert read_output(result["OUTPUT_CACHE_PATH"]) == good
    assert_reported(feedback, JPEG_DAMAGE)


def test_fail_on_damaged_tiles_fails_the_run_and_writes_nothing(tmp_path):
    from qgis.core import QgsProcessingException

    damaged_cache(tmp_path / "src", StorageFormat.COMPACT_V2, "PNG", PNG_DAMAGE)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(QgsProcessingException, match=(
            # whichever damaged bundle a worker meets first (levels 2 and 3 have some)
            r"damaged tiles: (1 in the bundle of level 2 .*row 1 col 1: truncated PNG|"
            r"2 in the bundle of level 3 .*row 0 col 0: not a PNG, JPEG or LERC image).*"
            r"FAIL_ON_DAMAGED_TILES is set")):
        run(tmp_path / "src", target, FAIL_ON_DAMAGED_TILES=True)
    assert list(target.iterdir()) == []


def test_merge_keeps_the_targets_tile_where_the_input_tile_is_damaged(tmp_path):
    """MERGE into an existing dataset: a damaged input tile leaves the target's tile as it was
    (the pixel path, where transparent tiles are drawn over existing ones)."""
    target = tmp_path / "out"
    damaged_cache(tmp_path / "first" / "cache", StorageFormat.COMPACT_V2, "PNG", {})
    result, _ = run(tmp_path / "first" / "cache", target)
    before = read_output(result["OUTPUT_CACHE_PATH"])
    good = damaged_cache(tmp_path / "second" / "cache", StorageFormat.COMPACT_V2, "PNG",
                         PNG_DAMAGE)
    result, feedback = run(tmp_path / "second" / "cache", target)
    after = read_output(result["OUTPUT_CACHE_PATH"])
    assert after.keys() == before.keys()
    for key in PNG_DAMAGE:
        assert after[key] == before[key]
    assert {key: after[key] for key in good} == good
    assert_reported(feedback, PNG_DAMAGE)


def transparent_png(size: int = 256) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (size, size), (0, 0, 0, 0)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("staged", [False, True])
def test_merge_into_a_copy_of_itself_keeps_wholly_transparent_tiles(tmp_path, staged):
    """The issue's case: a cache merged into a copy of itself kept 987 of its 1,365 tiles, the
    wholly transparent ones dropped. Every tile must stay, byte for byte."""
    empty = transparent_png()
    levels = {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(6)}  # 1,365 tiles

    def make(level: int, row: int, col: int) -> bytes:
        return empty if (row + col) % 3 == 0 else tile_image(level, row, col)

    written = write_cache(tmp_path / "src" / "cache" / "Layers", web_mercator_scheme(6),
                          levels, make=make)
    assert len(written) == 1365
    result, _ = run(tmp_path / "src" / "cache", tmp_path / "out")
    output = Path(result["OUTPUT_CACHE_PATH"])
    assert read_output(output) == written
    shutil.copytree(output, tmp_path / "copy" / "cache" / "Layers")
    result, feedback = run(tmp_path / "copy" / "cache", tmp_path / "out",
                           COPY_DATA_FROM_SERVER=staged)
    assert Path(result["OUTPUT_CACHE_PATH"]) == output
    assert read_output(output) == written
    assert not [line for line in feedback.infos if DAMAGE_LINE.match(line)]


def test_the_batch_check_of_record_runs_agrees_with_the_tile_check():
    """image_kind.damaged_records (numpy, on a run of records) finds what image_kind.damage
    finds tile by tile, tiny tiles, padded JPEGs and LERC blobs included."""
    from export_map_server_cache.core.formats.image_kind import damage, damaged_records

    png, jpeg = tile_image(1, 0, 0), tile_image(1, 0, 0, "JPEG")
    tiles = [png, png[:-1], jpeg, jpeg + bytes(30), jpeg[:-2], b"\x89PNG", b"x",
             b"CntZImage " + bytes(40), b"Lerc2 " + bytes(3), bytes(2000), png + b"!", jpeg]
    blob, starts = b"", []
    for data in tiles:
        blob += struct.pack("<I", len(data))
        starts.append(len(blob))
        blob += data
    found = damaged_records(blob, np.array(starts), np.array([len(t) for t in tiles]))
    expected = {index: damage(data) for index, data in enumerate(tiles) if damage(data)}
    assert found == expected
    assert sorted(found) == [1, 4, 5, 6, 9, 10]
    assert damaged_records(struct.pack("<I", 1) + b"x", np.array([4]), np.array([1])) == {
        0: damage(b"x")}
