"""Synthetic Esri caches for tests, written with the engine's own low-level writers.

Every tile is a real, distinct image (its colour encodes level/row/col), so a reader that mixes
tiles up is caught by comparing bytes or pixels.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional

from PIL import Image, ImageDraw

from export_map_server_cache.core.formats.conf_xml import write_conf_cdi, write_conf_xml
from export_map_server_cache.core.formats.storage_formats import open_writer
from export_map_server_cache.core.grid.extent import Extent
from export_map_server_cache.core.grid.spatial_reference import SpatialReference
from export_map_server_cache.core.grid.tiling_scheme import (
    PACKET_SIZE,
    Lod,
    StorageFormat,
    TileRange,
    TilingScheme,
)

ORIGIN = 20037508.342787
LEVEL0_RES = 156543.03392800014


def web_mercator_scheme(
    levels: int = 12, storage: StorageFormat = StorageFormat.COMPACT_V2, tile_format: str = "PNG",
    tile_size: int = 256,
) -> TilingScheme:
    lods = tuple(
        Lod(z, LEVEL0_RES / 2**z * 256 / tile_size, round(LEVEL0_RES / 2**z * 96 * 39.37, 6))
        for z in range(levels)
    )
    return TilingScheme(
        spatial_reference=SpatialReference(wkid=102100, latest_wkid=3857).with_defaults(),
        origin_x=-ORIGIN, origin_y=ORIGIN, tile_cols=tile_size, tile_rows=tile_size, dpi=96,
        lods=lods, tile_format=tile_format, compression_quality=75 if tile_format == "JPEG" else 0,
        storage_format=storage,
    )


def tile_image(level: int, row: int, col: int, fmt: str = "PNG", size: int = 256) -> bytes:
    """A distinct tile: colour from the address, the address written on it, a transparent
    corner for PNG so alpha survives round trips."""
    colour = ((level * 40 + row * 7) % 256, (row * 13 + col * 3) % 256, (col * 17 + 50) % 256)
    mode = "RGB" if fmt == "JPEG" else "RGBA"
    image = Image.new(mode, (size, size), colour + (() if mode == "RGB" else (255,)))
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), f"L{level} R{row} C{col}", fill=(255, 255, 255) if mode == "RGB" else
              (255, 255, 255, 255))
    if mode == "RGBA":
        draw.rectangle((0, size - 16, 15, size - 1), fill=(0, 0, 0, 0))
    out = io.BytesIO()
    image.save(out, "JPEG" if fmt == "JPEG" else "PNG", quality=80)
    return out.getvalue()


def write_cache(
    layers_dir: Path,
    scheme: TilingScheme,
    tiles: dict[int, TileRange],
    fmt: Optional[str] = None,
    skip: Iterable[tuple[int, int, int]] = (),
    make: Optional[Callable[[int, int, int], bytes]] = None,
) -> dict[tuple[int, int, int], bytes]:
    """Write a cache dataset (conf.xml, conf.cdi, _alllayers) holding every tile of the given
    ranges except `skip`, drawn by `make(level, row, col)` (default: `tile_image` in `fmt`);
    return {(level, row, col): bytes}."""
    fmt = fmt or ("JPEG" if scheme.tile_format == "JPEG" else "PNG")
    make = make or (lambda level, row, col: tile_image(level, row, col, fmt, scheme.tile_cols))
    skipped = set(skip)
    written: dict[tuple[int, int, int], bytes] = {}
    layers_dir = Path(layers_dir)
    alllayers = layers_dir / "_alllayers"
    for level, window in tiles.items():
        for brow, bcol in window.bundles():
            writer = open_writer(scheme.storage_format, alllayers, level, brow, bcol, "spec")
            rows = range(max(brow, window.row_min), min(brow + PACKET_SIZE, window.row_max + 1))
            cols = range(max(bcol, window.col_min), min(bcol + PACKET_SIZE, window.col_max + 1))
            for row in rows:
                for col in cols:
                    if (level, row, col) in skipped:
                        continue
                    data = make(level, row, col)
                    writer.add(row, col, data)
                    written[(level, row, col)] = data
            writer.commit()
    extent: Optional[Extent] = None
    for level, window in tiles.items():
        extent = scheme.range_extent(level, window).union(extent)
    layers_dir.mkdir(parents=True, exist_ok=True)
    (layers_dir / "conf.xml").write_bytes(write_conf_xml(scheme))
    (layers_dir / "conf.cdi").write_bytes(write_conf_cdi(extent, scheme.spatial_reference))
    return written


def read_all_tiles(path) -> dict[tuple[int, int, int], bytes]:
    """Every tile of a cache through the engine's reader: {(level, row, col): bytes}."""
    from export_map_server_cache.core.sources.local_cache import open_cache

    source = open_cache(str(path))
    tiles = {}
    try:
        for level in source.layout.levels():
            for key in source.layout.bundle_keys(level, None):
                reader = source.layout.open_bundle(level, *key)
                if reader is None:
                    continue
                for row, col in reader.present():
                    tiles[(level, row, col)] = reader.read(row, col)
                reader.close()
    finally:
        source.close()
    return tiles


def read_output(path, kind: str = "dataset-v2") -> dict[tuple[int, int, int], bytes]:
    """An export's tiles read by a reader that shares no code with the engine
    (independent_readers.output_tiles), which the engine's reader must agree with."""
    from independent_readers import output_tiles

    tiles = output_tiles(Path(path), kind)
    assert read_all_tiles(path) == tiles, "the engine reads the output otherwise"
    return tiles


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file (with its bytes) and folder below `folder`, hidden ones included."""
    found: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        found[rel] = path.read_bytes() if path.is_file() else b"<dir>"
    return found


def changed_files(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """The paths two snapshots disagree on (added, removed or changed), sorted: compared so,
    a failure lists names instead of asking pytest for a diff of two large dicts (which with
    CI set, untruncated, took more than 10 minutes)."""
    return sorted(path for path in before.keys() | after.keys()
                  if before.get(path) != after.get(path))

