"""Readers that do not use the plugin's engine, to check what it reads and writes.

Two kinds: a tiny Compact V2 / .tpkx parser written straight from the spec (zipfile + struct,
nothing else), and thin wrappers around third-party readers (MapProxy's compact and ArcGIS
file caches, tpkutils, GDAL's ESRIC driver). Keys are always (level, row, col).
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from PIL import Image

Key = tuple[int, int, int]
PACKET = 128
V2_HEADER = struct.Struct("<4I3Q6I")
V2_INDEX_SIZE = 8 * PACKET * PACKET
V2_DATA_START = V2_HEADER.size + V2_INDEX_SIZE
BUNDLE_NAME = re.compile(r"^R([0-9a-f]{4,})C([0-9a-f]{4,})\.bundle$")
LEVEL_NAME = re.compile(r"^L(\d{2,})$")


# --- spec-only Compact V2 parser ------------------------------------------------------------


def parse_v2_bundle(data: bytes, brow: int, bcol: int) -> dict[tuple[int, int], bytes]:
    """Tiles of one Compact V2 bundle (spec §3): row-major u64 index, offset | size << 40,
    size 0 = no tile; the u32 prefix before every image must equal the index size."""
    header = V2_HEADER.unpack_from(data, 0)
    assert header[0] == 3, f"version {header[0]}"
    assert header[3] == 5, f"offset size {header[3]}"
    assert header[-1] == V2_INDEX_SIZE, f"index size {header[-1]}"
    tiles = {}
    for slot in range(PACKET * PACKET):
        (entry,) = struct.unpack_from("<Q", data, V2_HEADER.size + 8 * slot)
        size = entry >> 40
        if size == 0:
            continue
        offset = entry & ((1 << 40) - 1)
        (prefix,) = struct.unpack_from("<I", data, offset - 4)
        assert prefix == size, f"slot {slot}: record prefix {prefix} != index size {size}"
        assert offset + size <= len(data), f"slot {slot} runs past the end of the bundle"
        tiles[(brow + slot // PACKET, bcol + slot % PACKET)] = data[offset:offset + size]
    return tiles


def bundle_origin(name: str) -> tuple[int, int]:
    """(bundle_row, bundle_col) from a lower-case `R%04xC%04x.bundle` name."""
    match = BUNDLE_NAME.match(name)
    assert match, f"bad bundle name {name!r}"
    return int(match.group(1), 16), int(match.group(2), 16)


def tpkx_tiles(path: Path) -> dict[Key, bytes]:
    """Every tile of a .tpkx: root.json at the zip root names the bundle folder
    (`tileBundlesPath`), bundles are `<folder>/Lxx/RrrrrCcccc.bundle` (spec §6.2)."""
    tiles: dict[Key, bytes] = {}
    with zipfile.ZipFile(path) as archive:
        root = json.loads(archive.read("root.json"))
        folder = root["tileBundlesPath"]
        folder = folder[2:] if folder.startswith("./") else folder
        folder = folder.strip("/")
        for member in archive.namelist():
            parts = member.split("/")
            if len(parts) != 3 or parts[0] != folder or not parts[2].endswith(".bundle"):
                continue
            level_match = LEVEL_NAME.match(parts[1])
            assert level_match, member
            level = int(level_match.group(1))
            brow, bcol = bundle_origin(parts[2])
            for (row, col), data in parse_v2_bundle(archive.read(member), brow, bcol).items():
                tiles[(level, row, col)] = data
    return tiles


def v2_folder_tiles(alllayers: Path) -> dict[Key, bytes]:
    """Every tile of a Compact V2 `_alllayers` folder with the spec-only parser."""
    tiles: dict[Key, bytes] = {}
    for level_dir in sorted(Path(alllayers).iterdir()):
        level = int(LEVEL_NAME.match(level_dir.name).group(1))
        for bundle in sorted(level_dir.glob("*.bundle")):
            brow, bcol = bundle_origin(bundle.name)
            for (row, col), data in parse_v2_bundle(bundle.read_bytes(), brow, bcol).items():
                tiles[(level, row, col)] = data
    return tiles


# --- MapProxy --------------------------------------------------------------------------------


def _tile_bytes(tile) -> bytes:
    buf = tile.source.as_buffer()
    buf.seek(0)
    data = buf.read()
    buf.close()
    return data


def mapproxy_compact_tiles(alllayers: Path, version: int) -> dict[Key, bytes]:
    """Every tile of a Compact V1/V2 `_alllayers` folder through MapProxy's CompactCacheV1/V2:
    the bundles are listed here, every one of the 16,384 slots is asked of MapProxy."""
    from mapproxy.cache.compact import CompactCacheV1, CompactCacheV2
    from mapproxy.cache.tile import Tile

    cache = (CompactCacheV1 if version == 1 else CompactCacheV2)(str(alllayers))
    tiles: dict[Key, bytes] = {}
    for level_dir in sorted(Path(alllayers).iterdir()):
        level = int(LEVEL_NAME.match(level_dir.name).group(1))
        for bundle in sorted(level_dir.glob("*.bundle")):
            brow, bcol = bundle_origin(bundle.name)
            batch = [Tile((bcol + c, brow + r, level)) for r in range(PACKET)
                     for c in range(PACKET)]
            cache.load_tiles(batch)
            for tile in batch:
                if tile.source is not None:
                    x, y, z = tile.coord
                    tiles[(z, y, x)] = _tile_bytes(tile)
    return tiles


def mapproxy_compact_get(alllayers: Path, version: int, key: Key) -> Optional[bytes]:
    """One tile through MapProxy's compact cache, None when MapProxy reports it missing."""
    from mapproxy.cache.compact import CompactCacheV1, CompactCacheV2
    from mapproxy.cache.tile import Tile

    cache = (CompactCacheV1 if version == 1 else CompactCacheV2)(str(alllayers))
    level, row, col = key
    tile = Tile((col, row, level))
    if not cache.load_tile(tile):
        return None
    return _tile_bytes(tile)


def mapproxy_exploded_get(alllayers: Path, ext: str, key: Key) -> Optional[bytes]:
    """One tile through MapProxy's FileCache with directory_layout 'arcgis'
    (`Lxx/R%08x/C%08x.ext`), None when missing."""
    from mapproxy.cache.file import FileCache
    from mapproxy.cache.tile import Tile

    cache = FileCache(str(alllayers), file_ext=ext, directory_layout="arcgis")
    level, row, col = key
    tile = Tile((col, row, level))
    if not cache.load_tile(tile):
        return None
    return _tile_bytes(tile)


def exploded_keys(alllayers: Path) -> dict[Key, Path]:
    """Tile files of an exploded cache, parsed from `Lxx/R%08x/C%08x.ext` names."""
    found = {}
    for level_dir in Path(alllayers).iterdir():
        level = int(LEVEL_NAME.match(level_dir.name).group(1))
        for row_dir in level_dir.iterdir():
            assert re.fullmatch(r"R[0-9a-f]{8}", row_dir.name), row_dir
            for tile in row_dir.iterdir():
                assert re.fullmatch(r"C[0-9a-f]{8}\.(png|jpg)", tile.name), tile
                found[(level, int(row_dir.name[1:], 16), int(tile.name[1:9], 16))] = tile
    return found


# --- tpkutils ---------------------------------------------------------------------------------


def tpkutils_tiles(path: Path) -> dict[Key, bytes]:
    """tpkutils' view of a .tpk as {(level, row, col): bytes}. tpkutils reads the ArcGIS row
    (flip_y=False) but names levels by the Web Mercator zoom it derives from each LOD's
    resolution (spec §9.15); its own `lods`/`zoom_levels` lists map that back to the LevelID."""
    from tpkutils import TPK

    tpk = TPK(str(path))
    try:
        level_of = dict(zip(tpk.zoom_levels, tpk.lods))
        assert len(level_of) == len(tpk.lods), "tpkutils maps two LODs to one zoom"
        return {(level_of[t.z], t.y, t.x): t.data for t in tpk.read_tiles(flip_y=False)}
    finally:
        tpk.close()


# --- any output of the export -----------------------------------------------------------------


def output_tiles(out: Path, kind: str) -> dict[Key, bytes]:
    """Every tile of an export's output (`kind`: dataset-v1, dataset-v2, dataset-exploded, tpk,
    tpkx) through a reader that shares no code with the engine: the spec-only parser (Compact
    V2, .tpkx), MapProxy (Compact V1), tpkutils (.tpk) or the tile files' names (Exploded)."""
    if kind == "tpkx":
        return tpkx_tiles(out)
    if kind == "tpk":
        return tpkutils_tiles(out)
    alllayers = Path(out) / "_alllayers"
    if kind == "dataset-v2":
        return v2_folder_tiles(alllayers)
    if kind == "dataset-v1":
        return mapproxy_compact_tiles(alllayers, 1)
    assert kind == "dataset-exploded", kind
    return {key: path.read_bytes() for key, path in exploded_keys(alllayers).items()}


# --- GDAL ------------------------------------------------------------------------------------


def gdal_tile(dataset, level_width: int, row: int, col: int, size: int):
    """The pixels GDAL returns for one tile: find the overview (or full resolution) band set
    whose width is the level's grid width and read the tile's window, clipped to the raster
    (GDAL assumes a grid symmetric about 0,0, spec §4.2). Returns (PIL image, box) where box is
    the clipped part in tile pixel coordinates, or None when the tile is outside the raster."""
    band = dataset.GetRasterBand(1)
    candidates = [(dataset.RasterXSize, dataset.RasterYSize, None)]
    candidates += [(band.GetOverview(i).XSize, band.GetOverview(i).YSize, i)
                   for i in range(band.GetOverviewCount())]
    width, height, overview = min(candidates, key=lambda c: abs(c[0] - level_width))
    assert abs(width - level_width) <= 1, f"no GDAL level {level_width} px wide: {candidates}"
    x0, y0 = col * size, row * size
    x1, y1 = min(x0 + size, width), min(y0 + size, height)
    if x1 <= x0 or y1 <= y0:
        return None
    planes = []
    for b in range(1, dataset.RasterCount + 1):
        rb = dataset.GetRasterBand(b)
        if overview is not None:
            rb = rb.GetOverview(overview)
        planes.append(Image.frombytes(
            "L", (x1 - x0, y1 - y0), bytes(rb.ReadRaster(x0, y0, x1 - x0, y1 - y0))))
    mode = "RGB" if len(planes) == 3 else "RGBA"
    return Image.merge(mode, planes), (0, 0, x1 - x0, y1 - y0)


def decode(data: bytes, mode: str) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert(mode)


def gdal_expected(data: bytes, band_count: int, gdal_version: int) -> Image.Image:
    """What GDAL's ESRIC driver is documented to return for a tile (spec §4.2): JPEG caches
    3 bands, others 4; a tile without alpha gets alpha 255 (GDAL ignores a PNG tRNS colour key);
    before GDAL 3.8 a paletted PNG is not expanded, its palette indices come back as grey."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if band_count == 3:
        return image.convert("RGB")
    if image.mode == "P" and gdal_version < 3080000:
        grey = Image.frombytes("L", image.size, image.tobytes())
        return Image.merge("RGBA", (grey, grey, grey, Image.new("L", image.size, 255)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    rgb = image.convert("RGB")
    return Image.merge("RGBA", (*rgb.split(), Image.new("L", image.size, 255)))


def max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size and a.mode == b.mode
    pa, pb = a.tobytes(), b.tobytes()
    return max((abs(x - y) for x, y in zip(pa, pb)), default=0)


def no_leftovers(folder: Path) -> list[str]:
    """Temporary files (`.*.tmp`) and staging folders (`.partial-`) anywhere under folder."""
    bad = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if name.endswith(".tmp") or ".partial-" in name or name.startswith("."):
                bad.append(os.path.join(root, name))
    return bad


def sample(keys: Iterable[Key], per_level: int = 4) -> list[Key]:
    """A deterministic spread of keys per level: first, last and evenly spaced ones."""
    by_level: dict[int, list[Key]] = {}
    for key in sorted(keys):
        by_level.setdefault(key[0], []).append(key)
    picked = []
    for level_keys in by_level.values():
        step = max(1, len(level_keys) // per_level)
        chosen = set(level_keys[::step][:per_level]) | {level_keys[-1]}
        picked.extend(sorted(chosen))
    return picked
