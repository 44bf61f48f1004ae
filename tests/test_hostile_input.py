"""Hostile input (issue 13 item 4), each case crafted here: bounded work and a clear message,
never a traceback, a hang, unbounded memory or an output that grows without end.

Device files, pipes, endless LEVELS ranges, zip bombs (a bundle and root.json), index entries
pointing into the header or all at one record, a 16 MB zero "tile", a cache larger than the free
space, and numbers in conf.xml / root.json that are NaN, infinite, out of range or no numbers.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import read_output, tile_image, web_mercator_scheme, write_cache  # noqa: E402
from recording import recording_feedback  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
PLUGINS = Path(__file__).resolve().parents[1] / "build" / "plugins"
V2_HEADER_SIZE = 64
V2_DATA_START = 64 + 8 * 128 * 128


def run(source, target: Path, **extra):
    import processing

    feedback = recording_feedback()
    params = {"INPUT_SERVICE": str(source), "TARGET_CACHE_PATH": str(target),
              "EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1,
              "NUM_OF_CACHING_SERVICE_INSTANCES": 1, "LOAD_RESULT": False}
    params.update(extra)
    return processing.run(ALG, params, feedback=feedback), feedback


def refused(source, tmp_path: Path, match: str, **extra) -> str:
    """The run fails with a message matching `match` (no traceback) and writes nothing."""
    from qgis.core import QgsProcessingException

    target = tmp_path / "out"
    target.mkdir(parents=True, exist_ok=True)
    with pytest.raises(QgsProcessingException, match=match) as raised:
        run(source, target, **extra)
    assert "Traceback" not in str(raised.value)
    assert list(target.iterdir()) == []
    return str(raised.value)


def peak_rss_mib(code: str) -> tuple[float, str]:
    """Run `code` (after `imports`) in a child Python; the growth of its peak RSS in MiB over
    what the imports took, and its output."""
    script = "import resource\n" + IMPORTS + (
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n") + textwrap.dedent(code) + (
        "\nprint('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(PLUGINS)})
    assert done.returncode == 0, done.stderr
    peak = int(re.search(r"peak (\d+)", done.stdout).group(1))
    return peak / 1024, done.stdout


IMPORTS = """
from export_map_server_cache.core.errors import CacheError
from export_map_server_cache.core.selection.levels import level_ranges
from export_map_server_cache.core.sources.local_cache import open_cache
"""


@pytest.fixture
def cache(tmp_path) -> Path:
    """A small Compact V2 cache dataset: levels 0-3, one bundle each."""
    folder = tmp_path / "src" / "cache"
    write_cache(folder / "Layers", web_mercator_scheme(6),
                {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(4)})
    return folder


# --- device files, pipes, ranges -------------------------------------------------------------


def test_dev_zero_is_refused_at_once(tmp_path):
    started = time.monotonic()
    refused("/dev/zero", tmp_path, r"'/dev/zero' is not a regular file or folder")
    assert time.monotonic() - started < 10
    peak, out = peak_rss_mib("""
        try:
            open_cache("/dev/zero")
        except CacheError as exc:
            print("refused:", exc)
    """)
    assert "refused:" in out
    assert peak < 16


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "conf.xml"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    refused(fifo, tmp_path, r"is not a regular file or folder \(a device, pipe or socket\)")


def test_a_huge_levels_range_is_matched_without_expanding_it(tmp_path, cache):
    started = time.monotonic()
    message = refused(cache, tmp_path, r"LEVELS: level\(s\) 6,7,8,9,10,11,12,13,14,15,… are not in "
                      r"the cache's tiling scheme\. Valid levels: 0-5", LEVELS="0-100000000")
    assert time.monotonic() - started < 10, message
    peak, out = peak_rss_mib("""
        print(level_ranges("0-100000000,5-999999999999"))
    """)
    assert "(0, 100000000)" in out and peak < 16


def test_a_wide_range_over_a_scheme_selects_its_levels(tmp_path, cache):
    result, _ = run(cache, tmp_path / "out", LEVELS="2-5")
    assert {key[0] for key in read_output(result["OUTPUT_CACHE_PATH"])} == {2, 3}


# --- zip bombs --------------------------------------------------------------------------------


def rewritten_package(base: Path, out: Path, replace: dict[str, tuple[bytes, int]]) -> Path:
    """A copy of the package `base` with members replaced: name -> (bytes, compression)."""
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in replace:
                data, method = replace[info.filename]
                dst.writestr(info.filename, data, compress_type=method)
            else:
                dst.writestr(info, src.read(info))
    return out


def deflated_bomb(base: Path, out: Path, member: str, size: int) -> Path:
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename == member:
                target = zipfile.ZipInfo(member)
                target.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(target, "w", force_zip64=True) as handle:
                    chunk = bytes(16 << 20)
                    for _ in range(size // len(chunk)):
                        handle.write(chunk)
            else:
                dst.writestr(info, src.read(info))
    with zipfile.ZipFile(out) as check:
        info = check.getinfo(member)
        assert info.compress_type == zipfile.ZIP_DEFLATED and info.file_size == size
        assert info.compress_size < size // 500
    return out


def test_a_deflated_bundle_bomb_is_refused_in_bounded_memory(tmp_path, fixtures_dir):
    member = "tile/L02/R0000C0000.bundle"
    package = deflated_bomb(fixtures_dir / "arcgis-pro-wgs84.tpkx", tmp_path / "bomb.tpkx",
                            member, 512 << 20)
    refused(package, tmp_path, rf"the member {member} inflates to more than \d+ bytes .*"
            "malformed or malicious")
    peak, out = peak_rss_mib(f"""
        source = open_cache({str(package)!r})
        try:
            source.layout.open_bundle(2, 0, 0)
        except CacheError as exc:
            print("refused:", exc)
    """)
    assert "refused:" in out
    assert peak < 64, f"{peak:.0f} MiB for a 512 MiB member"


def test_a_deflated_root_json_bomb_is_refused(tmp_path, fixtures_dir):
    package = deflated_bomb(fixtures_dir / "arcgis-pro-wgs84.tpkx", tmp_path / "bomb.tpkx",
                            "root.json", 256 << 20)
    refused(package, tmp_path, r"the member root\.json inflates to more than \d+ bytes")


# --- bundle indexes ---------------------------------------------------------------------------


def v2_entries(bundle: Path) -> list[int]:
    data = bundle.read_bytes()
    return list(struct.unpack_from("<16384Q", data, V2_HEADER_SIZE))


def write_entries(bundle: Path, entries: list[int]) -> None:
    with open(bundle, "r+b") as handle:
        handle.seek(V2_HEADER_SIZE)
        handle.write(struct.pack("<16384Q", *entries))


def level_bundle(cache: Path, level: int) -> Path:
    return cache / "Layers" / "_alllayers" / f"L{level:02d}" / "R0000C0000.bundle"


def test_index_entries_into_the_header_or_all_at_one_record_are_left_out(tmp_path, cache):
    """Level 2: one entry points into the header. Level 3: all 16,384 slots point at the
    first tile's record (the output would grow 16,384 times). Both are left out, reported,
    and the output stays the size of the input."""
    bundle2, bundle3 = level_bundle(cache, 2), level_bundle(cache, 3)
    entries = v2_entries(bundle2)
    entries[128 + 1] = (100 << 40) | 1000  # 100 bytes at offset 1,000: inside the index
    write_entries(bundle2, entries)
    first = v2_entries(bundle3)[0]
    write_entries(bundle3, [first] * 16384)
    result, feedback = run(cache, tmp_path / "out")
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    assert (2, 1, 1) not in tiles and (2, 0, 1) in tiles
    assert [key for key in tiles if key[0] == 3] == [(3, 0, 0)]
    assert tiles[(3, 0, 0)] == tile_image(3, 0, 0)
    infos = "\n".join(feedback.infos)
    assert re.search(r"Level 2: 1 damaged tile\(s\) .*row 1 col 1: .*points into the bundle's "
                     r"header or index", infos), infos
    assert re.search(r"Level 3: 16383 damaged tile\(s\) .*overlaps another tile's", infos), infos
    out = Path(result["OUTPUT_CACHE_PATH"]) / "_alllayers" / "L03" / "R0000C0000.bundle"
    assert out.stat().st_size < V2_DATA_START + 64 * 1024
    refused(cache, tmp_path / "again", r"damaged tiles: 1 in the bundle of level 2 .*points "
            r"into the bundle's header", FAIL_ON_DAMAGED_TILES=True)


def test_a_16_mb_zero_tile_is_left_out(tmp_path):
    big = bytes(16_000_000)

    def make(level: int, row: int, col: int) -> bytes:
        return big if (level, row, col) == (1, 1, 0) else tile_image(level, row, col)

    folder = tmp_path / "src" / "cache"
    write_cache(folder / "Layers", web_mercator_scheme(4),
                {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(2)}, make=make)
    result, feedback = run(folder, tmp_path / "out")
    tiles = read_output(result["OUTPUT_CACHE_PATH"])
    assert sorted(tiles) == [(0, 0, 0), (1, 0, 0), (1, 0, 1), (1, 1, 1)]
    assert any(re.match(r"Level 1: 1 damaged tile\(s\) .*row 1 col 0: not a PNG, JPEG or LERC",
                        line) for line in feedback.infos), feedback.infos


# --- free space -------------------------------------------------------------------------------


def test_an_export_larger_than_the_free_space_is_refused_before_writing(tmp_path, cache):
    """A bundle made (sparse) larger than the free space of the target's disk."""
    free = shutil.disk_usage(tmp_path).free
    with open(level_bundle(cache, 3), "r+b") as handle:
        handle.truncate(free + (1 << 30))
    message = refused(cache, tmp_path, r"Not enough free space: the export needs about .* "
                      r"\((\d+) bytes\) but .* has .* \((\d+) bytes\) free")
    needed, available = map(int, re.search(r"\((\d+) bytes\) but .*\((\d+) bytes\) free",
                                           message).groups())
    assert needed > free >= available - (1 << 30)


# --- numbers of the description files ---------------------------------------------------------


CONF_EDITS = {
    "NaN TileCols": (r"<TileCols>256</TileCols>", "<TileCols>NaN</TileCols>",
                     r"conf\.xml: TileCols is not a finite number \('NaN'\)"),
    "LevelID 1e400": (r"<LevelID>1</LevelID>", "<LevelID>1e400</LevelID>",
                      r"conf\.xml: LevelID is not a finite number \('1e400'\)"),
    "string resolution": (r"<Resolution>[^<]+</Resolution>", "<Resolution>abc</Resolution>",
                          r"conf\.xml: the resolution of level 0 is not a number \('abc'\)"),
    "NaN origin": (r"<X>[^<]+</X>", "<X>nan</X>", r"conf\.xml: TileOrigin/X is not a finite"),
    "1e308 origin": (r"<Y>[^<]+</Y>", "<Y>1e308</Y>",
                     r"conf\.xml: TileOrigin/Y is 1e308, outside the range"),
    "10^7-pixel tiles": (r"<TileRows>256</TileRows>", "<TileRows>10000000</TileRows>",
                         r"conf\.xml: TileRows is 10000000, outside the range 1 to 4096"),
    "duplicate LevelID": (r"<LevelID>2</LevelID>", "<LevelID>1</LevelID>",
                          r"conf\.xml: LevelID 1 is listed twice"),
    "negative LevelID": (r"<LevelID>3</LevelID>", "<LevelID>-3</LevelID>",
                         r"conf\.xml: LevelID is -3, outside the range 0 to 99"),
    "fractional LevelID": (r"<LevelID>3</LevelID>", "<LevelID>2.5</LevelID>",
                           r"conf\.xml: LevelID is 2.5, not a whole number"),
    "NaN DPI": (r"<DPI>96</DPI>", "<DPI>NaN</DPI>", r"conf\.xml: DPI is not a finite number"),
}


@pytest.mark.parametrize("case", list(CONF_EDITS))
def test_bad_numbers_in_conf_xml_are_refused_naming_the_field(tmp_path, cache, case):
    pattern, replacement, match = CONF_EDITS[case]
    conf = cache / "Layers" / "conf.xml"
    text, count = re.subn(pattern, replacement, conf.read_text(encoding="utf-8"), count=1)
    assert count == 1
    conf.write_text(text, encoding="utf-8")
    refused(cache, tmp_path, match)


def test_bad_numbers_in_conf_cdi_leave_no_extent(tmp_path, cache):
    """conf.cdi is optional (the extent comes from the tiles then): a NaN corner is no extent,
    never an output with NaN in its metadata."""
    cdi = cache / "Layers" / "conf.cdi"
    cdi.write_text(re.sub(r"<XMin>[^<]+</XMin>", "<XMin>NaN</XMin>",
                          cdi.read_text(encoding="utf-8")), encoding="utf-8")
    result, _ = run(cache, tmp_path / "out")
    written = (Path(result["OUTPUT_CACHE_PATH"]) / "conf.cdi").read_text(encoding="utf-8")
    assert "nan" not in written.lower() and "inf" not in written.lower()


ROOT_EDITS = {
    "string cols": (lambda root: root["tileInfo"].update(cols="256px"),
                    r"root\.json: tileInfo\.cols is not a number \('256px'\)"),
    "NaN origin": (lambda root: root["tileInfo"]["origin"].update(x=float("nan")),
                   r"root\.json: tileInfo\.origin\.x is not a finite number"),
    "1e308 origin": (lambda root: root["tileInfo"]["origin"].update(y=1e308),
                     r"root\.json: tileInfo\.origin\.y is 1e\+308, outside the range"),
    "level 1e400": (lambda root: root["tileInfo"]["lods"][1].update(level=float("inf")),
                    r"root\.json: LevelID is not a finite number"),
    "boolean resolution": (lambda root: root["tileInfo"]["lods"][0].update(resolution=True),
                           r"root\.json: the resolution of level 0 is not a number \(True\)"),
    "duplicate level": (lambda root: root["tileInfo"]["lods"][2].update(level=1),
                        r"root\.json: LevelID 1 is listed twice"),
}


@pytest.mark.parametrize("case", list(ROOT_EDITS))
def test_bad_numbers_in_root_json_are_refused_naming_the_field(tmp_path, fixtures_dir, case):
    edit, match = ROOT_EDITS[case]
    base = fixtures_dir / "arcgis-pro-wgs84.tpkx"
    with zipfile.ZipFile(base) as src:
        root = json.loads(src.read("root.json"))
    edit(root)
    text = json.dumps(root).replace("Infinity", "1e400")  # JSON's overflow, as a file has it
    package = rewritten_package(base, tmp_path / "bad.tpkx",
                                {"root.json": (text.encode(), zipfile.ZIP_STORED)})
    refused(package, tmp_path, match)
