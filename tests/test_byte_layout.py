"""What the engine writes follows esri-tile-formats.md byte for byte: bundle headers, index
entries, record order, file names, package members and metadata."""
from __future__ import annotations

import io
import json
import re
import struct
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import web_mercator_scheme, write_cache  # noqa: E402

from export_map_server_cache.core.exporter import Exporter, ExportOptions  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402
from export_map_server_cache.core.selection.tile_selection import Selection  # noqa: E402
from export_map_server_cache.core.sources.local_cache import open_cache  # noqa: E402

PACKET = 128
SLOTS = PACKET * PACKET
V2_HEADER = struct.Struct("<4I3Q6I")
V1_HEADER = struct.Struct("<4I3Q5I")
V2_DATA_START = 64 + 8 * SLOTS  # 131,136
V1_DATA_START = 60 + 4 * SLOTS  # 65,596
BUNDLX_SIZE = 81952
BUNDLX_HEADER = bytes.fromhex("03000000100000000040000005000000")
BUNDLX_FOOTER = bytes.fromhex("00000000100000001000000000000000")
LEVELS = 14
# Level 13 window crossing four bundles whose names contain hex letters
# (rows 0xb00/0xb80, cols 0xa00/0xa80), plus a small coarse level.
WINDOWS = {5: TileRange(10, 12, 25, 28), 13: TileRange(2940, 2945, 2685, 2690)}
SKIP = [(13, 2941, 2686), (13, 2944, 2689), (5, 11, 26)]
TILE_COUNT = 12 + 36 - len(SKIP)
STORAGE = {"v2": StorageFormat.COMPACT_V2, "v1": StorageFormat.COMPACT,
           "exploded": StorageFormat.EXPLODED, "tpkx": StorageFormat.COMPACT_V2,
           "tpk": StorageFormat.COMPACT}

Tiles = dict[tuple[int, int, int], bytes]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, tuple[Path, Tiles]]:
    """One PNG source and one JPEG source, each exported to every target kind."""
    base = tmp_path_factory.mktemp("layout")
    made: dict[str, tuple[Path, Tiles]] = {}
    for fmt in ("PNG", "JPEG"):
        scheme = web_mercator_scheme(levels=LEVELS, tile_format=fmt)
        name = f"Src{fmt}"
        tiles = write_cache(base / name / "Layers", scheme, WINDOWS, skip=SKIP)
        assert len(tiles) == TILE_COUNT
        source = open_cache(str(base / name))
        try:
            for kind, storage in STORAGE.items():
                result = Exporter(
                    source, sorted(WINDOWS), Selection(),
                    ExportOptions(base / f"{kind}-{fmt}", storage,
                                  package=kind in ("tpk", "tpkx")),
                ).run()
                assert result.tile_count == TILE_COUNT
                made[f"{kind}-{fmt}"] = (result.output_path, tiles)
        finally:
            source.close()
    return made


def _bundle_tiles(tiles: Tiles, level: int, brow: int, bcol: int) -> dict[tuple[int, int], bytes]:
    return {(r, c): d for (lv, r, c), d in tiles.items()
            if lv == level and r - r % PACKET == brow and c - c % PACKET == bcol}


def _expected_bundles(tiles: Tiles) -> set[tuple[int, int, int]]:
    return {(lv, r - r % PACKET, c - c % PACKET) for lv, r, c in tiles}


def check_v2_bundle(data: bytes, in_bundle: dict[tuple[int, int], bytes], profile: str) -> None:
    header = V2_HEADER.unpack_from(data, 0)
    largest = max(len(d) for d in in_bundle.values())
    if profile == "spec":
        want = (3, 16384, largest, 5, 0, len(data), 40, 131092, 3, 16, 16384, 5, 131072)
    else:
        want = (3, 0, max(131092, largest), 5, 0, len(data), 40, 131092, 3, 0, 16384, 5, 131072)
    assert header == want
    entries = struct.unpack_from(f"<{SLOTS}Q", data, 64)
    by_slot = {(r % PACKET) * PACKET + c % PACKET: d for (r, c), d in in_bundle.items()}
    expected_offset = V2_DATA_START + 4  # first image byte at 131,140
    for slot, entry in enumerate(entries):  # slot = row * 128 + col: row-major
        if slot not in by_slot:
            assert entry == 4, f"empty slot {slot} holds {entry:#x}, spec says 4"
            continue
        tile = by_slot[slot]
        offset, size = entry & ((1 << 40) - 1), entry >> 40
        assert size == len(tile)
        # Records are contiguous and in row-major order: the slot order is the file order.
        assert offset == expected_offset, f"slot {slot}: record at {offset}"
        assert struct.unpack_from("<I", data, offset - 4)[0] == size
        assert data[offset:offset + size] == tile
        expected_offset = offset + size + 4
    assert expected_offset - 4 == len(data), "bytes after the last record"


def check_v1_bundle(bundle: bytes, bundlx: bytes, in_bundle: dict[tuple[int, int], bytes],
                    brow: int, bcol: int) -> None:
    header = V1_HEADER.unpack_from(bundle, 0)
    largest = max(len(d) for d in in_bundle.values())
    assert header == (3, 16384, largest, 5, 4 * len(in_bundle), len(bundle), 40, 16,
                      brow, brow + 127, bcol, bcol + 127)
    assert bundle[60:V1_DATA_START] == bytes(4 * SLOTS), "size table must be zeros"
    assert len(bundlx) == BUNDLX_SIZE
    assert bundlx[:16] == BUNDLX_HEADER
    assert bundlx[-16:] == BUNDLX_FOOTER
    offsets = {}
    for i in range(SLOTS):
        entry = int.from_bytes(bundlx[16 + 5 * i:21 + 5 * i], "little")
        col, row = bcol + i // PACKET, brow + i % PACKET  # column-major
        if (row, col) not in in_bundle:
            assert entry == 60 + 4 * i, f"empty entry {i} = {entry}, spec says {60 + 4 * i}"
            continue
        tile = in_bundle[(row, col)]
        assert struct.unpack_from("<I", bundle, entry)[0] == len(tile)
        assert bundle[entry + 4:entry + 4 + len(tile)] == tile
        offsets[(row, col)] = entry
    # ArcGIS writes records contiguously, row-major, from 65,596.
    position = V1_DATA_START
    for key in sorted(in_bundle):
        assert offsets[key] == position, f"record of {key} at {offsets[key]}, want {position}"
        position += 4 + len(in_bundle[key])
    assert position == len(bundle)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_compact_v2_dataset_bundles(outputs, fmt):
    layers, tiles = outputs[f"v2-{fmt}"]
    alllayers = layers / "_alllayers"
    found = set()
    for path in alllayers.glob("L*/*"):
        assert re.fullmatch(r"R[0-9a-f]{4,}C[0-9a-f]{4,}\.bundle", path.name), path
        level = int(path.parent.name[1:])
        assert path.parent.name == "L%02d" % level
        brow, bcol = int(path.name[1:5], 16), int(path.name[6:10], 16)
        assert path.name == "R%04xC%04x.bundle" % (brow, bcol)
        found.add((level, brow, bcol))
        check_v2_bundle(path.read_bytes(), _bundle_tiles(tiles, level, brow, bcol), "spec")
    assert found == _expected_bundles(tiles)
    assert {p.name for p in (alllayers / "L13").iterdir()} == {
        "R0b00C0a00.bundle", "R0b00C0a80.bundle", "R0b80C0a00.bundle", "R0b80C0a80.bundle"}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_compact_v1_dataset_bundles(outputs, fmt):
    layers, tiles = outputs[f"v1-{fmt}"]
    alllayers = layers / "_alllayers"
    found = set()
    for path in alllayers.glob("L*/*.bundle"):
        level = int(path.parent.name[1:])
        brow, bcol = int(path.name[1:5], 16), int(path.name[6:10], 16)
        assert path.name == "R%04xC%04x.bundle" % (brow, bcol)
        found.add((level, brow, bcol))
        check_v1_bundle(path.read_bytes(), path.with_suffix(".bundlx").read_bytes(),
                        _bundle_tiles(tiles, level, brow, bcol), brow, bcol)
    assert found == _expected_bundles(tiles)
    names = {p.name for p in (alllayers / "L13").iterdir()}
    assert names == {f"{stem}.{ext}" for stem in (
        "R0b00C0a00", "R0b00C0a80", "R0b80C0a00", "R0b80C0a80") for ext in ("bundle", "bundlx")}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exploded_names(outputs, fmt):
    layers, tiles = outputs[f"exploded-{fmt}"]
    ext = "jpg" if fmt == "JPEG" else "png"
    alllayers = layers / "_alllayers"
    files = {p.relative_to(alllayers).as_posix() for p in alllayers.rglob("*") if p.is_file()}
    assert files == {"L%02d/R%08x/C%08x.%s" % (lv, r, c, ext) for lv, r, c in tiles}
    assert "L13/R00000b7c/C00000a7d.%s" % ext in files  # row 2940, col 2685
    for (lv, r, c), data in tiles.items():
        assert (alllayers / ("L%02d/R%08x/C%08x.%s" % (lv, r, c, ext))).read_bytes() == data


def _conf(xml: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(xml)


def check_conf_xml(xml: bytes, storage: str, packet: int, levels: int, fmt: str) -> None:
    root = _conf(xml)
    assert root.tag == "CacheInfo"
    wkt = root.findtext("TileCacheInfo/SpatialReference/WKT")
    assert wkt and "Mercator_Auxiliary_Sphere" in wkt  # GDAL takes the CRS only from WKT
    assert root.findtext("TileCacheInfo/SpatialReference/WKID") in ("102100", "3857")
    assert float(root.findtext("TileCacheInfo/TileOrigin/X")) == pytest.approx(-20037508.342787)
    assert float(root.findtext("TileCacheInfo/TileOrigin/Y")) == pytest.approx(20037508.342787)
    assert root.findtext("TileCacheInfo/TileCols") == "256"
    assert root.findtext("TileCacheInfo/TileRows") == "256"
    assert root.findtext("TileCacheInfo/DPI") == "96"
    ids = [int(e.text) for e in root.findall("TileCacheInfo/LODInfos/LODInfo/LevelID")]
    assert ids == list(range(levels))
    resolutions = [float(e.text) for e in root.findall(
        "TileCacheInfo/LODInfos/LODInfo/Resolution")]
    assert resolutions == sorted(resolutions, reverse=True) and len(resolutions) == levels
    assert root.findtext("TileImageInfo/CacheTileFormat") == fmt
    assert root.findtext("CacheStorageInfo/StorageFormat") == storage
    assert root.findtext("CacheStorageInfo/PacketSize") == str(packet)
    assert len(xml) >= 512 and b"<CacheInfo" in xml[:512]  # GDAL identification


def check_conf_cdi(xml: bytes, tiles: Tiles) -> None:
    root = _conf(xml)
    assert root.tag == "EnvelopeN"
    scheme = web_mercator_scheme(levels=LEVELS)
    extent = None
    for level, window in WINDOWS.items():
        extent = scheme.range_extent(level, window).union(extent)
    got = [float(root.findtext(k)) for k in ("XMin", "YMin", "XMax", "YMax")]
    assert got == pytest.approx([extent.xmin, extent.ymin, extent.xmax, extent.ymax])
    assert root.findtext("SpatialReference/WKT")


@pytest.mark.parametrize("kind", ["v2", "v1", "exploded"])
def test_dataset_conf_files(outputs, kind):
    layers, tiles = outputs[f"{kind}-PNG"]
    assert sorted(p.name for p in layers.iterdir()) == ["_alllayers", "conf.cdi", "conf.xml"]
    storage = {"v2": "esriMapCacheStorageModeCompactV2", "v1": "esriMapCacheStorageModeCompact",
               "exploded": "esriMapCacheStorageModeExploded"}[kind]
    check_conf_xml((layers / "conf.xml").read_bytes(), storage,
                   0 if kind == "exploded" else 128, LEVELS, "PNG")
    check_conf_cdi((layers / "conf.cdi").read_bytes(), tiles)
    jpeg_layers = outputs[f"{kind}-JPEG"][0]
    assert _conf((jpeg_layers / "conf.xml").read_bytes()).findtext(
        "TileImageInfo/CompressionQuality") == "75"


def _origin(member: str) -> tuple[int, int]:
    match = re.search(r"/R([0-9a-f]{4,})C([0-9a-f]{4,})\.bundle$", member)
    assert match, member
    return int(match.group(1), 16), int(match.group(2), 16)


def _tile_members(tiles: Tiles, prefix: str, v1: bool) -> list[str]:
    members = []
    for level, brow, bcol in sorted(_expected_bundles(tiles)):
        stem = f"{prefix}/L{level:02d}/R{brow:04x}C{bcol:04x}"
        members.append(stem + ".bundle")
        if v1:
            members.append(stem + ".bundlx")
    return members


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_tpkx_members_and_bundles(outputs, fmt):
    path, tiles = outputs[f"tpkx-{fmt}"]
    assert path.name == f"Src{fmt}.tpkx"
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        names = [i.filename for i in infos]
        assert names == ["iteminfo.json", "root.json", "thumbnail.png"] + _tile_members(
            tiles, "tile", False)
        for name in names[3:]:
            level = int(name.split("/")[1][1:])
            brow, bcol = _origin(name)
            check_v2_bundle(archive.read(name), _bundle_tiles(tiles, level, brow, bcol),
                            "arcgis")
        raw_root = archive.read("root.json")
        root = json.loads(raw_root)
        item = json.loads(archive.read("iteminfo.json"))
        thumbnail = archive.read("thumbnail.png")
    assert b'"tileBundlesPath"' in raw_root[:512]
    assert root["tileBundlesPath"] == "./tile"
    assert root["storageInfo"] == {"storageFormat": "esriMapCacheStorageModeCompactV2",
                                   "packetSize": 128}
    assert (root["minLOD"], root["maxLOD"]) == (min(WINDOWS), max(WINDOWS))
    assert root["tileImageInfo"]["format"] == fmt
    info = root["tileInfo"]
    assert (info["rows"], info["cols"], info["dpi"]) == (256, 256, 96)
    assert info["origin"]["x"] == pytest.approx(-20037508.342787)
    assert [lod["level"] for lod in info["lods"]] == list(range(LEVELS))
    assert root["spatialReference"].get("latestWkid", root["spatialReference"]["wkid"]) in (
        3857, 102100)
    full = root["fullExtent"]
    assert full["xmin"] < full["xmax"] and full["ymin"] < full["ymax"]
    assert item["type"] == "Compact Tile Package"
    assert {"Compact Tile Package", "Tile Package", "tpkx"} <= set(item["typeKeywords"])
    assert item["thumbnail"] == "./thumbnail.png"
    assert item["name"] == f"Src{fmt}"
    image = Image.open(io.BytesIO(thumbnail))
    assert image.format == "PNG"
    image.load()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_tpk_members_and_bundles(outputs, fmt):
    path, tiles = outputs[f"tpk-{fmt}"]
    assert path.name == f"Src{fmt}.tpk"
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        names = [i.filename for i in infos]
        assert names == [
            "esriinfo/item.pkinfo",
            "esriinfo/iteminfo.xml",
            "esriinfo/thumbnail/thumbnail.png",
            "servicedescriptions/mapserver/mapserver.json",
            "v101/Layers/conf.cdi",
            "v101/Layers/conf.xml",
        ] + _tile_members(tiles, "v101/Layers/_alllayers", True)
        for name in names[6::2]:
            level = int(name.split("/")[3][1:])
            brow, bcol = _origin(name)
            check_v1_bundle(archive.read(name), archive.read(name[:-1] + "x"),
                            _bundle_tiles(tiles, level, brow, bcol), brow, bcol)
        conf = archive.read("v101/Layers/conf.xml")
        cdi = archive.read("v101/Layers/conf.cdi")
        iteminfo = ElementTree.fromstring(archive.read("esriinfo/iteminfo.xml"))
        pkinfo = ElementTree.fromstring(archive.read("esriinfo/item.pkinfo"))
        service = json.loads(archive.read("servicedescriptions/mapserver/mapserver.json"))
        thumbnail = archive.read("esriinfo/thumbnail/thumbnail.png")
    check_conf_xml(conf, "esriMapCacheStorageModeCompact", 128, LEVELS, fmt)
    check_conf_cdi(cdi, tiles)
    # tpkutils calls .text on each of these (spec §6.1).
    for tag in ("title", "summary", "tags", "description", "accessinformation", "licenseinfo"):
        assert iteminfo.find(tag) is not None, tag
    assert iteminfo.findtext("type") == "Tile Package"
    assert pkinfo.tag == "pkinfo"
    assert "geoFullExtent" in service["resourceInfo"]
    assert isinstance(service["resources"], list)
    image = Image.open(io.BytesIO(thumbnail))
    assert image.format == "PNG"
    image.load()


@pytest.mark.parametrize("name", ["arcmap-10.3-states_filled.tpk", "arcgis-pro-wgs84.tpkx",
                                  "arcgis-server-10.1-compact-v1", "esri-sample-compact-v2"])
def test_fixture_exports_follow_the_layout(fixtures_dir, tmp_path, name):
    """Re-exported Esri caches (dead space, 512-px tiles, far-away bundles) come out compact
    and in spec order in every bundled format."""
    source = open_cache(str(fixtures_dir / name))
    try:
        levels = sorted(source.layout.levels())
        tiles: Tiles = {}
        for level in levels:
            for brow, bcol in source.layout.bundle_keys(level, None):
                reader = source.layout.open_bundle(level, brow, bcol)
                for row, col in reader.present():
                    tiles[(level, row, col)] = reader.read(row, col)
                reader.close()
        results = {}
        for kind in ("v2", "v1", "tpkx", "tpk"):
            results[kind] = Exporter(source, levels, Selection(), ExportOptions(
                tmp_path / kind, STORAGE[kind], package=kind in ("tpk", "tpkx"))).run()
    finally:
        source.close()
    for level, brow, bcol in _expected_bundles(tiles):
        in_bundle = _bundle_tiles(tiles, level, brow, bcol)
        stem = "L%02d/R%04xC%04x" % (level, brow, bcol)
        v2 = results["v2"].output_path / "_alllayers" / (stem + ".bundle")
        check_v2_bundle(v2.read_bytes(), in_bundle, "spec")
        v1 = results["v1"].output_path / "_alllayers" / (stem + ".bundle")
        check_v1_bundle(v1.read_bytes(), v1.with_suffix(".bundlx").read_bytes(), in_bundle,
                        brow, bcol)
        with zipfile.ZipFile(results["tpkx"].output_path) as archive:
            check_v2_bundle(archive.read(f"tile/{stem}.bundle"), in_bundle, "arcgis")
        with zipfile.ZipFile(results["tpk"].output_path) as archive:
            prefix = f"v101/Layers/_alllayers/{stem}"
            check_v1_bundle(archive.read(prefix + ".bundle"), archive.read(prefix + ".bundlx"),
                            in_bundle, brow, bcol)
    for kind in ("tpkx", "tpk"):
        with zipfile.ZipFile(results[kind].output_path) as archive:
            assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
