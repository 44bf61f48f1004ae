"""Bad input through `processing.run`: a QgsProcessingException that says what is wrong (and,
where there is something to do, what to do), and a target folder exactly as it was before:
no `.partial-*` staging folder, no `*.tmp` file, no half-written cache or package."""
from __future__ import annotations

import os
import re
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import (  # noqa: E402
    changed_files,
    snapshot,
    tile_image,
    web_mercator_scheme,
    write_cache,
)

from export_map_server_cache.core.grid.tiling_scheme import StorageFormat, TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
LAST_BUNDLE = "L08/R0080C0080"  # exported last: levels ascend, bundles sorted, one worker
V2_HEADER = struct.Struct("<4I3Q6I")


# --- helpers --------------------------------------------------------------------------------


def prepared_target(tmp_path: Path) -> Path:
    """An existing target folder holding an unrelated file, so 'unchanged' means something."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("not ours", encoding="utf-8")
    return target


def progress_feedback():
    """A QgsProcessingFeedback whose progress values are recorded (to prove bundles before
    the corrupt one were exported)."""
    from qgis.core import QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    feedback.values = []
    feedback.progressChanged.connect(feedback.values.append)
    return feedback


def assert_fails_cleanly(params: dict, target: Path, match: str, feedback=None,
                         watch: Optional[Path] = None) -> str:
    """Run, expect a QgsProcessingException matching `match`, and check that `watch` (default:
    the target) is byte for byte unchanged; return the message."""
    import processing
    from qgis.core import QgsProcessingException

    watch = watch or target
    before = snapshot(watch) if watch.exists() else None
    full = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1,
            "NUM_OF_CACHING_SERVICE_INSTANCES": 1}
    full.update(params)
    with pytest.raises(QgsProcessingException, match=match) as raised:
        processing.run(ALG, full, feedback=feedback)
    message = str(raised.value)
    assert "Traceback" not in message
    after = snapshot(watch) if watch.exists() else None
    if before is None or after is None:
        assert after == before
    else:
        assert not changed_files(before, after)
    if watch.exists():
        leftovers = [p for p in watch.rglob("*") if ".partial-" in p.name or p.suffix == ".tmp"]
        assert leftovers == []
    return message


def make_cache(root: Path, storage: StorageFormat = StorageFormat.COMPACT_V2,
               name: str = "multi") -> Path:
    """Levels 0-3 fully tiled plus level 8 rows/cols 124-131: four bundles at level 8."""
    folder = root / name
    tiles = {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(4)}
    tiles[8] = TileRange(124, 131, 124, 131)
    write_cache(folder / "Layers", web_mercator_scheme(12, storage=storage), tiles)
    return folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[StorageFormat, Path]:
    """One valid multi-bundle cache per storage format; tests corrupt copies of them."""
    root = tmp_path_factory.mktemp("pristine")
    return {storage: make_cache(root / storage.name, storage) for storage in StorageFormat}


def copy_of(pristine: dict, storage: StorageFormat, tmp_path: Path) -> Path:
    folder = tmp_path / "source" / "multi"
    shutil.copytree(pristine[storage], folder)
    return folder


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def first_present_v2_slot(path: Path) -> tuple[int, int, int]:
    """(index position, offset, size) of the first tile entry of a V2 bundle."""
    data = path.read_bytes()
    for slot in range(128 * 128):
        position = V2_HEADER.size + 8 * slot
        (entry,) = struct.unpack_from("<Q", data, position)
        if entry >> 40:
            return position, entry & ((1 << 40) - 1), entry >> 40
    raise AssertionError(f"{path} has no tile")


# --- the input does not exist or cannot be read ---------------------------------------------


def test_missing_input_path(tmp_path):
    target = prepared_target(tmp_path)
    missing = tmp_path / "nowhere" / "cache"
    message = assert_fails_cleanly({"INPUT_SERVICE": str(missing)}, target,
                                   "does not exist")
    assert str(missing) in message


def test_dangling_symlink_as_input(tmp_path):
    """A link to a deleted package: reported as missing, not as a crash."""
    target = prepared_target(tmp_path)
    link = tmp_path / "gone.tpkx"
    link.symlink_to(tmp_path / "deleted.tpkx")
    assert_fails_cleanly({"INPUT_SERVICE": str(link)}, target, "does not exist")


def test_unreadable_conf_xml(tmp_path):
    """conf.xml that cannot be read. Tests run as root, where chmod 000 does not block reads,
    and a FIFO would block the reader forever; a directory named conf.xml is an unreadable
    'file' for root too (read() fails with EISDIR)."""
    target = prepared_target(tmp_path)
    folder = tmp_path / "cache"
    (folder / "conf.xml").mkdir(parents=True)
    (folder / "_alllayers").mkdir()
    message = assert_fails_cleanly({"INPUT_SERVICE": str(folder)}, target, "cannot be read")
    assert str(folder) in message


def test_unreadable_bundle_after_others_were_exported(pristine, tmp_path):
    """The last bundle cannot be read (a directory in its place): the export stops and the
    bundles already written are not left in the target."""
    source = copy_of(pristine, StorageFormat.COMPACT_V2, tmp_path)
    bundle = source / "Layers" / "_alllayers" / f"{LAST_BUNDLE}.bundle"
    bundle.unlink()
    bundle.mkdir()
    target = prepared_target(tmp_path)
    feedback = progress_feedback()
    message = assert_fails_cleanly({"INPUT_SERVICE": str(source)}, target,
                                   "could not be read", feedback=feedback)
    assert "R0080C0080.bundle" in message
    assert max(feedback.values, default=0) > 0


def test_folder_without_conf_xml(tmp_path):
    target = prepared_target(tmp_path)
    folder = tmp_path / "not_a_cache"
    (folder / "_alllayers" / "L00").mkdir(parents=True)
    assert_fails_cleanly({"INPUT_SERVICE": str(folder)}, target,
                         r"^INPUT_SERVICE: .*has no conf\.xml .*Point the input at the folder")


def test_conf_xml_that_is_not_xml(pristine, tmp_path):
    source = copy_of(pristine, StorageFormat.COMPACT_V2, tmp_path)
    (source / "Layers" / "conf.xml").write_text("TileCacheInfo: {not xml", encoding="utf-8")
    target = prepared_target(tmp_path)
    assert_fails_cleanly({"INPUT_SERVICE": str(source)}, target, r"conf\.xml is not valid XML")


# --- corrupt bundles, each in the bundle exported last ---------------------------------------


def corrupt_v2_version(bundle: Path) -> None:
    patch(bundle, 0, struct.pack("<I", 7))


def corrupt_v2_offset_past_end(bundle: Path) -> None:
    position, _, size = first_present_v2_slot(bundle)
    offset = bundle.stat().st_size + 1000
    patch(bundle, position, struct.pack("<Q", offset | (size << 40)))


def corrupt_v2_size_past_end(bundle: Path) -> None:
    position, offset, _ = first_present_v2_slot(bundle)
    size = bundle.stat().st_size  # from a valid offset, this runs past the end of the file
    patch(bundle, position, struct.pack("<Q", offset | (size << 40)))


def corrupt_v1_bundlx_truncated(bundle: Path) -> None:
    index = bundle.with_suffix(".bundlx")
    index.write_bytes(index.read_bytes()[:1000])


def corrupt_v1_header(bundle: Path) -> None:
    patch(bundle, 0, struct.pack("<I", 9))


def corrupt_v1_index_past_end(bundle: Path) -> None:
    index = bundle.with_suffix(".bundlx")
    data = bytearray(index.read_bytes())
    # bundlx slot (col % 128) * 128 + row % 128 of tile R131 C131 of bundle R128 C128
    position = 16 + 5 * (3 * 128 + 3)
    data[position:position + 5] = (bundle.stat().st_size + 10).to_bytes(5, "little")
    index.write_bytes(bytes(data))


CORRUPTIONS = {
    "v2-bad-version": (StorageFormat.COMPACT_V2, corrupt_v2_version,
                       r"R0080C0080\.bundle: not a Compact V2 bundle header \(version 7"),
    "v2-offset-past-end": (StorageFormat.COMPACT_V2, corrupt_v2_offset_past_end,
                           r"R0080C0080\.bundle: tile slot \d+ .*beyond the end of the file"),
    "v2-size-past-end": (StorageFormat.COMPACT_V2, corrupt_v2_size_past_end,
                         r"R0080C0080\.bundle: tile slot \d+ .*beyond the end of the file"),
    "v1-bundlx-truncated": (StorageFormat.COMPACT, corrupt_v1_bundlx_truncated,
                            r"R0080C0080\.bundlx: 1000 bytes is too short for a \.bundlx"),
    "v1-bad-header": (StorageFormat.COMPACT, corrupt_v1_header,
                      r"R0080C0080\.bundle: not a Compact V1 bundle header \(version 9"),
    "v1-index-past-end": (StorageFormat.COMPACT, corrupt_v1_index_past_end,
                          r"R0080C0080\.bundle: .*past the end of the file"),
}


@pytest.mark.parametrize("output", ["dataset-v2", "tpkx", "tpk"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_bundle_exported_last(corruption, output, pristine, tmp_path):
    storage, corrupt, match = CORRUPTIONS[corruption]
    source = copy_of(pristine, storage, tmp_path)
    corrupt(source / "Layers" / "_alllayers" / f"{LAST_BUNDLE}.bundle")
    target = prepared_target(tmp_path)
    cache_type, storage_type = {"dataset-v2": (0, 1), "tpkx": (1, 1), "tpk": (1, 0)}[output]
    feedback = progress_feedback()
    message = assert_fails_cleanly(
        {"INPUT_SERVICE": str(source), "EXPORT_CACHE_TYPE": cache_type,
         "STORAGE_FORMAT_TYPE": storage_type}, target, match, feedback=feedback)
    assert "corrupt" in message.lower() or "not a" in message or "beyond" in message
    assert max(feedback.values, default=0) > 0  # earlier bundles had been exported


def test_empty_exploded_tile_is_corrupt(pristine, tmp_path):
    source = copy_of(pristine, StorageFormat.EXPLODED, tmp_path)
    tile = source / "Layers" / "_alllayers" / "L08" / "R00000083" / "C00000083.png"
    tile.write_bytes(b"")
    target = prepared_target(tmp_path)
    feedback = progress_feedback()
    assert_fails_cleanly({"INPUT_SERVICE": str(source)}, target,
                         r"R00000083/C00000083\.png is empty", feedback=feedback)
    assert max(feedback.values, default=0) > 0


@pytest.mark.parametrize("output", ["dataset-v2", "tpkx"])
def test_corrupt_bundle_leaves_an_existing_target_unchanged(output, pristine, tmp_path):
    """Updating an existing cache (staged, as COPY_DATA_FROM_SERVER promises) or package from
    a source whose last bundle is corrupt changes nothing in the existing target."""
    import processing

    cache_type = 0 if output == "dataset-v2" else 1
    target = prepared_target(tmp_path)
    good = pristine[StorageFormat.COMPACT_V2]
    common = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": cache_type,
              "STORAGE_FORMAT_TYPE": 1, "NUM_OF_CACHING_SERVICE_INSTANCES": 1}
    processing.run(ALG, {**common, "INPUT_SERVICE": str(good), "LEVELS": "0-3"})
    source = copy_of(pristine, StorageFormat.COMPACT_V2, tmp_path)
    corrupt_v2_version(source / "Layers" / "_alllayers" / f"{LAST_BUNDLE}.bundle")
    assert_fails_cleanly({"INPUT_SERVICE": str(source), "EXPORT_CACHE_TYPE": cache_type,
                          "COPY_DATA_FROM_SERVER": True, "OVERWRITE": True}, target,
                         "not a Compact V2 bundle header")


def test_corrupt_bundle_leaves_an_existing_dataset_unchanged_without_staging(pristine,
                                                                            tmp_path):
    """The default update (COPY_DATA_FROM_SERVER=false) of an existing dataset holding all 8
    bundles of the input, from a copy whose last bundle is corrupt: README's Safety, "Bad
    input gives a clear message and leaves nothing half-written"."""
    import processing

    target = prepared_target(tmp_path)
    other = tmp_path / "other" / "multi"  # the same tiling scheme and bundles, other tiles
    tiles = {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(4)}
    tiles[8] = TileRange(124, 131, 124, 131)
    write_cache(other / "Layers", web_mercator_scheme(12), tiles,
                make=lambda level, row, col: tile_image(level, row, col + 1))
    common = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": 0,
              "STORAGE_FORMAT_TYPE": 1, "NUM_OF_CACHING_SERVICE_INSTANCES": 1}
    processing.run(ALG, {**common, "INPUT_SERVICE": str(other)})
    assert len(list(target.rglob("*.bundle"))) == 8
    source = copy_of(pristine, StorageFormat.COMPACT_V2, tmp_path)
    corrupt_v2_version(source / "Layers" / "_alllayers" / f"{LAST_BUNDLE}.bundle")
    assert_fails_cleanly({"INPUT_SERVICE": str(source)}, target,
                         "not a Compact V2 bundle header")


# --- packages that are not packages ---------------------------------------------------------


def test_zip_that_is_not_a_tile_package(tmp_path):
    package = tmp_path / "photos.tpk"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("readme.txt", "holiday pictures")
    target = prepared_target(tmp_path)
    assert_fails_cleanly({"INPUT_SERVICE": str(package)}, target,
                         r"is a zip archive but not a tile package")


def test_plain_zip_with_zip_suffix(tmp_path):
    package = tmp_path / "archive.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("data/file.csv", "a,b\n1,2\n")
    target = prepared_target(tmp_path)
    assert_fails_cleanly({"INPUT_SERVICE": str(package)}, target,
                         r"is a zip archive but not a tile package")


def test_non_zip_file_named_tpkx(tmp_path):
    package = tmp_path / "fake.tpkx"
    package.write_bytes(b"this is plain text, not a zip archive\n" * 10)
    target = prepared_target(tmp_path)
    assert_fails_cleanly({"INPUT_SERVICE": str(package)}, target,
                         r"fake\.tpkx is not a readable zip archive")


@pytest.fixture(scope="module")
def valid_tpkx(pristine, tmp_path_factory) -> Path:
    """A valid .tpkx written by the algorithm from the V2 cache (levels 0-3)."""
    import processing

    out = tmp_path_factory.mktemp("tpkx")
    result = processing.run(ALG, {"INPUT_SERVICE": str(pristine[StorageFormat.COMPACT_V2]),
                                  "TARGET_CACHE_PATH": str(out), "EXPORT_CACHE_TYPE": 1,
                                  "STORAGE_FORMAT_TYPE": 1, "LEVELS": "0-3",
                                  "NUM_OF_CACHING_SERVICE_INSTANCES": 1})
    return Path(result["OUTPUT_CACHE_PATH"])


@pytest.mark.parametrize("evil", ["../evil.bundle", "tile/L00/../../../evil.bundle",
                                  "/tmp/evil.bundle"])
def test_package_member_escaping_its_folder(evil, valid_tpkx, tmp_path):
    """A valid package plus one member whose path leaves the package (zip slip)."""
    package = tmp_path / "evil.tpkx"
    with zipfile.ZipFile(valid_tpkx) as good, zipfile.ZipFile(package, "w") as bad:
        for info in good.infolist():
            bad.writestr(info, good.read(info))
        member = zipfile.ZipInfo("placeholder")
        member.filename = evil  # ZipInfo() strips a leading '/', setting it afterwards keeps it
        bad.writestr(member, b"\x03\x00\x00\x00")
    with zipfile.ZipFile(package) as check:
        assert evil in check.namelist()
    target = prepared_target(tmp_path)
    assert_fails_cleanly({"INPUT_SERVICE": str(package)}, target,
                         r"points outside the package")
    assert not (tmp_path / "evil.bundle").exists()


# --- levels, scales, extent -----------------------------------------------------------------


def test_scale_not_in_the_scheme(pristine, tmp_path):
    target = prepared_target(tmp_path)
    message = assert_fails_cleanly(
        {"INPUT_SERVICE": str(pristine[StorageFormat.COMPACT_V2]), "SCALES": "1:500000"},
        target, r"1:500000 is not a scale of the cache's tiling scheme")
    assert "Valid scales:" in message
    assert "591657527.591555 (level 0)" in message


def test_level_not_in_the_scheme(pristine, tmp_path):
    target = prepared_target(tmp_path)
    assert_fails_cleanly(
        {"INPUT_SERVICE": str(pristine[StorageFormat.COMPACT_V2]), "LEVELS": "2,15"},
        target, r"level\(s\) 15 are not in the cache's tiling scheme\. Valid levels: 0-11")


@pytest.mark.parametrize("levels", ["a-b", "1-x", "3-1"])
def test_levels_garbage(levels, pristine, tmp_path):
    target = prepared_target(tmp_path)
    match = r"runs backwards; write 1-3" if levels == "3-1" else (
        r"is not a level or a range like 0-5\. Valid levels: 0-11")
    assert_fails_cleanly(
        {"INPUT_SERVICE": str(pristine[StorageFormat.COMPACT_V2]), "LEVELS": levels},
        target, match)


def test_extent_that_misses_the_cache(tmp_path):
    """A cache of Europe only (level 5 tiles around it) and an extent over Australia."""
    folder = tmp_path / "source" / "europe"
    write_cache(folder / "Layers", web_mercator_scheme(12), {5: TileRange(9, 12, 15, 19)})
    target = prepared_target(tmp_path)
    message = assert_fails_cleanly(
        {"INPUT_SERVICE": str(folder), "EXPORT_EXTENT": "113,154,-44,-10 [EPSG:4326]"},
        target, r"(does not overlap any tile|No tile) of the cache")
    assert "nothing was written" in message
    assert "The cache covers" in message


# --- targets that cannot be used ------------------------------------------------------------


def test_unwritable_target_below_a_regular_file(pristine, tmp_path):
    """Root ignores chmod, so the target is a path below a regular file."""
    parent = tmp_path / "x"
    parent.mkdir()
    (parent / "file.txt").write_text("a file, not a folder", encoding="utf-8")
    target = parent / "file.txt" / "sub"
    assert_fails_cleanly({"INPUT_SERVICE": str(pristine[StorageFormat.COMPACT_V2])}, target,
                         r"cannot be written to .*Choose a folder you can write to",
                         watch=parent)


def test_tile_package_with_exploded_storage(pristine, tmp_path):
    target = prepared_target(tmp_path)
    assert_fails_cleanly(
        {"INPUT_SERVICE": str(pristine[StorageFormat.COMPACT_V2]), "EXPORT_CACHE_TYPE": 1,
         "STORAGE_FORMAT_TYPE": 2}, target,
        r"A tile package cannot hold an Exploded cache: choose COMPACT")


def test_existing_non_cache_folder_at_target_name(pristine, tmp_path):
    target = prepared_target(tmp_path)
    (target / "multi").mkdir()
    (target / "multi" / "notes.txt").write_text("someone's files", encoding="utf-8")
    assert_fails_cleanly({"INPUT_SERVICE": str(pristine[StorageFormat.COMPACT_V2])}, target,
                         r"exists and is not a cache dataset .*Choose another target folder")


def test_existing_non_package_file_at_target_name(pristine, tmp_path):
    """A file that merely has the package's name is neither merged into nor replaced."""
    target = prepared_target(tmp_path)
    (target / "multi.tpkx").write_bytes(b"important, not a package")
    assert_fails_cleanly({"INPUT_SERVICE": str(pristine[StorageFormat.COMPACT_V2]),
                          "EXPORT_CACHE_TYPE": 1, "STORAGE_FORMAT_TYPE": 1}, target,
                         r"multi\.tpkx")


def test_target_is_the_input_itself(pristine, tmp_path):
    """Exporting a cache dataset onto itself is refused, not merged into itself."""
    source = copy_of(pristine, StorageFormat.COMPACT_V2, tmp_path)
    target = source.parent
    assert_fails_cleanly({"INPUT_SERVICE": str(source)}, target,
                         r"target is the input cache itself")
    assert os.listdir(target) == ["multi"]


# --- messages say what to do ----------------------------------------------------------------

ADVICE = re.compile(
    r"\b(choose|give|point|use|check|fix|repair|re-?create|rebuild|remove|rename|empty|export|"
    r"select|delete|move|restore|download|copy|try|write)\b", re.IGNORECASE)


def bad_inputs(pristine: dict, root: Path) -> dict[str, dict]:
    """Parameter sets for one bad input of each kind (inputs built under `root`)."""
    good = pristine[StorageFormat.COMPACT_V2]
    not_xml = root / "not_xml" / "multi"
    shutil.copytree(good, not_xml)
    (not_xml / "Layers" / "conf.xml").write_text("{not xml", encoding="utf-8")
    corrupt = root / "corrupt" / "multi"
    shutil.copytree(good, corrupt)
    corrupt_v2_version(corrupt / "Layers" / "_alllayers" / f"{LAST_BUNDLE}.bundle")
    unreadable = root / "unreadable"
    (unreadable / "conf.xml").mkdir(parents=True)
    fake = root / "fake.tpkx"
    fake.write_bytes(b"plain text")
    empty = root / "empty_folder"
    empty.mkdir()
    plain_zip = root / "photos.tpk"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("readme.txt", "holiday pictures")
    return {
        "missing input": {"INPUT_SERVICE": str(root / "nowhere")},
        "unreadable conf.xml": {"INPUT_SERVICE": str(unreadable)},
        "conf.xml not XML": {"INPUT_SERVICE": str(not_xml)},
        "corrupt bundle": {"INPUT_SERVICE": str(corrupt)},
        "non-zip .tpkx": {"INPUT_SERVICE": str(fake)},
        "zip that is no package": {"INPUT_SERVICE": str(plain_zip)},
        "existing non-package file at the target": {
            "INPUT_SERVICE": str(good), "EXPORT_CACHE_TYPE": 1, "STORAGE_FORMAT_TYPE": 1},
        # controls whose messages already give advice
        "folder without conf.xml": {"INPUT_SERVICE": str(empty)},
        "exploded package": {"INPUT_SERVICE": str(good), "EXPORT_CACHE_TYPE": 1,
                             "STORAGE_FORMAT_TYPE": 2},
    }


def test_messages_say_what_to_do(pristine, tmp_path):
    """Every message must tell the user what to do, not only what is wrong (the brief's rule
    for bad input). Collected in one test so one root cause gives one failure."""
    import processing
    from qgis.core import QgsProcessingException

    target = prepared_target(tmp_path)
    (target / "multi.tpkx").write_bytes(b"important, not a package")
    without_advice = {}
    for case, params in bad_inputs(pristine, tmp_path / "inputs").items():
        full = {"TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": 0,
                "STORAGE_FORMAT_TYPE": 1, "NUM_OF_CACHING_SERVICE_INSTANCES": 1, **params}
        with pytest.raises(QgsProcessingException) as raised:
            processing.run(ALG, full)
        words = re.sub(r"'?/[^\s']+'?", "<path>", str(raised.value))  # paths are no advice
        if not ADVICE.search(words):
            without_advice[case] = str(raised.value)
    assert "folder without conf.xml" not in without_advice
    assert "exploded package" not in without_advice
    assert without_advice == {}, "messages without advice:\n" + "\n".join(
        f"- {case}: {message}" for case, message in without_advice.items())
