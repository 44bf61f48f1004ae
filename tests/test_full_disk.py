"""A full disk (issue 13, item 8): a small filesystem (a tmpfs, mounted as root) fills up while an
export writes into it, after its free-space check passed: an update of a cache dataset and an
update of a .tpkx each fail with a message that says the disk is full, and leave the target byte
for byte as it was, with nothing beside it. A package downloaded from a service needs room for
its tiles twice (they wait in the stage until the package is complete): where there is room for
them once, it is refused before a byte is written, while a dataset goes through."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_factory import changed_files, snapshot  # noqa: E402
from conftest import QGIS_PROCESS  # noqa: E402
from independent_readers import no_leftovers  # noqa: E402
from test_http_export import SAMPLE, export_error, run_export  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
DISK = "32m"  # the sample is 6.4 MB: the free-space check passes with room to spare
WEST = "-180,0,-85,85 [EPSG:4326]"  # the target before the update
LATENCY = 0.02  # the export takes seconds, so the disk fills while it writes


def tmpfs(folder: Path, size: str):
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"this test mounts a tmpfs (as root): {mounted.stderr}"
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    yield from tmpfs(tmp_path / "disk", DISK)


@pytest.fixture
def disk_for_one_copy(tmp_path):
    """Room for the sample once (6.4 MB), not twice."""
    yield from tmpfs(tmp_path / "disk", "10m")


def fill_when_staged(disk: Path, started: threading.Event) -> None:
    """Fill the filesystem once the export has begun writing (its stage exists): its
    free-space check is behind it."""
    deadline = time.monotonic() + 60
    while not any(disk.glob(".*.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.002)
    started.set()
    with open(disk / "filler", "wb", buffering=0) as filler:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    filler.write(bytes(size))
            except OSError:
                continue


@pytest.mark.parametrize("package", [False, True], ids=["dataset", "tpkx"])
def test_a_disk_that_fills_up_leaves_the_target_as_it_was(package, small_disk, serve,
                                                           tmp_path, qgis_process_env):
    common = {"TARGET_CACHE_PATH": str(small_disk), "LEVELS": "0-5",
              "EXPORT_CACHE_TYPE": int(package), "LOAD_RESULT": False}
    run_export({"INPUT_SERVICE": str(SAMPLE), "EXPORT_EXTENT": WEST, **common})
    before = snapshot(small_disk)
    server = serve({"world_map": SAMPLE}, latency=LATENCY)
    started = threading.Event()
    filler = threading.Thread(target=fill_when_staged, args=(small_disk, started))
    filler.start()
    done = subprocess.run(
        [QGIS_PROCESS, "run", ALG, "--", f"INPUT_SERVICE={server.service_url('world_map')}",
         *(f"{name}={value}" for name, value in common.items())],
        env=qgis_process_env(tmp_path / "profile"), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=300)
    filler.join()
    assert started.is_set()
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "The disk holding the target folder is full" in output, output[-3000:]
    (small_disk / "filler").unlink()
    assert changed_files(before, snapshot(small_disk)) == []
    assert no_leftovers(small_disk) == []


def test_a_package_from_a_service_needs_room_for_its_tiles_twice(disk_for_one_copy, serve):
    server = serve({"world_map": SAMPLE})
    common = {"INPUT_SERVICE": server.service_url("world_map"), "LEVELS": "0-5",
              "LOAD_RESULT": False}
    package = export_error({**common, "TARGET_CACHE_PATH": str(disk_for_one_copy / "p"),
                            "EXPORT_CACHE_TYPE": 1})
    assert "Not enough free space" in package, package
    assert not (disk_for_one_copy / "p").exists() or not any((disk_for_one_copy / "p").iterdir())
    run_export({**common, "TARGET_CACHE_PATH": str(disk_for_one_copy / "d")})
    assert (disk_for_one_copy / "d" / "world_map" / "Layers" / "conf.xml").exists()
