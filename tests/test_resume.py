"""Resume (issue 13, item 2): an export into a cache dataset killed (-9, in a qgis_process of its
own) part way leaves its stage and checkpoint; the same export run again keeps the bundles that
were finished and are intact, downloads only the rest, says so, and ends byte for byte as an
uninterrupted export. A bundle altered since is done again; a different export into the same
place discards the stale work with a message. Nothing is left beside the target. Tiles already
downloaded for bundles under way at the kill are not asked for again, for a dataset or a
package."""
from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_factory import changed_files, snapshot  # noqa: E402
from conftest import QGIS_PROCESS  # noqa: E402
from independent_readers import no_leftovers  # noqa: E402
from test_http_export import SAMPLE, run_export  # noqa: E402

from export_map_server_cache.core.export.checkpoint import CHECKPOINT_NAME  # noqa: E402
from export_map_server_cache.core.export.estimate import SAMPLES_PER_LEVEL  # noqa: E402
from export_map_server_cache.core.export.targets import DOWNLOADS  # noqa: E402
from export_map_server_cache.core.grid.tiling_scheme import (  # noqa: E402
    PACKET_SIZE,
    bundle_range,
)
from export_map_server_cache.core.sources.download_spool import (  # noqa: E402
    SPOOL_SUFFIX,
    DownloadSpool,
)

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
LEVELS = "0-5"  # the sample's six levels, one bundle each; level 5 holds 1,024 of 1,365 tiles
BUNDLES = 6
LATENCY = 0.02  # per tile request: the export takes seconds, so it can be killed part way
KILL_AFTER = 3  # bundles recorded in the checkpoint


def export_args(url: str, target: Path, levels: str = LEVELS) -> list[str]:
    return ["run", ALG, "--", f"INPUT_SERVICE={url}", f"TARGET_CACHE_PATH={target}",
            f"LEVELS={levels}", "STORAGE_FORMAT_TYPE=1", "LOAD_RESULT=false"]


def finished_bundles(target: Path) -> int:
    checkpoints = list(target.glob(f".*.partial-*/{CHECKPOINT_NAME}"))
    if not checkpoints:
        return 0
    return max(0, len(checkpoints[0].read_text(encoding="utf-8").splitlines()) - 1)


def kill_part_way(url: str, target: Path, env: dict) -> None:
    """Start the export and kill it once KILL_AFTER bundles are recorded."""
    process = subprocess.Popen([QGIS_PROCESS, *export_args(url, target)], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while finished_bundles(target) < KILL_AFTER and process.poll() is None:
        assert time.monotonic() < deadline, "the export recorded no bundles"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the export ended before the kill"
    assert not (target / "world").exists()  # nothing in place yet
    assert KILL_AFTER <= finished_bundles(target) < BUNDLES


def run(args: list[str], env: dict) -> str:
    done = subprocess.run([QGIS_PROCESS, *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def tile_requests(server) -> int:
    return sum(1 for entry in server.log.entries() if entry.kind == "tile")


@pytest.fixture
def world(serve, tmp_path_factory):
    """The served sample and an uninterrupted export of it (snapshot, tile requests)."""
    server = serve({"world": SAMPLE}, latency=LATENCY)
    reference = tmp_path_factory.mktemp("reference")
    run_export({"INPUT_SERVICE": server.service_url("world"), "TARGET_CACHE_PATH":
                str(reference), "LEVELS": LEVELS, "LOAD_RESULT": False})
    requests = tile_requests(server)
    server.log.clear()
    return server, snapshot(reference), requests


@pytest.fixture
def killed(world, tmp_path, qgis_process_env):
    """An export of the served sample killed part way: (server, the uninterrupted export's
    snapshot, its tile requests, the target, the qgis_process environment, bundles kept)."""
    server, reference, all_requests = world
    env = qgis_process_env(tmp_path / "profile")
    target = tmp_path / "target"
    kill_part_way(server.service_url("world"), target, env)
    server.log.clear()
    return server, reference, all_requests, target, env, finished_bundles(target)


def test_a_killed_export_resumes_where_it_stopped(killed):
    server, reference, all_requests, target, env, kept = killed
    output = run(export_args(server.service_url("world"), target), env)
    found = re.search(r"Resuming: (\d+) of (\d+) bundles already done", output)
    assert found and int(found.group(1)) == kept and int(found.group(2)) == BUNDLES, output
    assert tile_requests(server) < all_requests  # the kept bundles' tiles were not asked again
    assert changed_files(reference, snapshot(target)) == []  # byte for byte, nothing beside
    assert manifest_errors(output, target / "world" / "Layers") == []


def manifest_errors(output: str, layers: Path) -> list[str]:
    """What the log's manifest gets wrong about the dataset's bundle files (kept ones too)."""
    found = re.search(r"Manifest of the (\d+) bundle file\(s\) written, below (.*) \(bytes, "
                      r"SHA-256, path\):\n((?:\d+ [0-9a-f]{64} \S+\n?)+)", output)
    assert found, output
    listed = dict((path, (int(size), sha)) for size, sha, path in
                  (line.split(" ") for line in found.group(3).strip().splitlines()))
    files = {path.relative_to(layers).as_posix(): path
             for path in layers.rglob("*.bundle")}
    errors = [f"{path}: listed, not written" for path in listed.keys() - files.keys()]
    errors += [f"{path}: written, not listed" for path in files.keys() - listed.keys()]
    errors += [f"{path}: size or SHA-256" for path in listed.keys() & files.keys()
               if listed[path] != (files[path].stat().st_size,
                                   hashlib.sha256(files[path].read_bytes()).hexdigest())]
    if int(found.group(1)) != len(listed) or Path(found.group(2)) != layers:
        errors.append(f"heading: {found.group(1)} files below {found.group(2)}")
    return errors


def test_a_bundle_altered_since_is_done_again(killed):
    server, reference, _, target, env, kept = killed
    bundle = sorted(target.glob(".*.partial-*/Layers/_alllayers/L00/*.bundle"))[0]
    data = bytearray(bundle.read_bytes())
    data[-1] ^= 0xFF
    bundle.write_bytes(bytes(data))
    output = run(export_args(server.service_url("world"), target), env)
    assert f"Resuming: {kept - 1} of {BUNDLES} bundles already done" in output, output
    assert changed_files(reference, snapshot(target)) == []


def test_a_different_export_discards_the_stale_work(killed):
    server, _, _, target, env, _ = killed
    output = run(export_args(server.service_url("world"), target, levels="0-4"), env)
    assert "Resuming" not in output
    assert "interrupted, different export into this target was discarded" in output, output
    assert no_leftovers(target) == []
    assert sorted(path.name for path in (target / "world" / "Layers" / "_alllayers").iterdir()
                  ) == [f"L0{level}" for level in range(5)]


# Downloads: the tiles of bundles under way at the kill are kept in the stage's spools and not
# asked for again (issue 13: "a resumed run after a kill at 50 % taking at most 60 %").
SPOOLED_BYTES = 1 << 20  # killed once this much waits in spools: a bundle part way
LEVELS_ESTIMATED = range(6)  # the estimate fetches a few sample tiles per level again


def spool_files(target: Path) -> list[Path]:
    return sorted(target.glob(f".*.partial-*/{DOWNLOADS}/*{SPOOL_SUFFIX}"))


def kill_mid_bundle(server, args: list[str], target: Path, env: dict) -> None:
    """Start the export and kill it once SPOOLED_BYTES of tiles wait in its spools."""
    process = subprocess.Popen([QGIS_PROCESS, *args], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None:
        assert time.monotonic() < deadline, "the export spooled too little"
        try:
            if sum(path.stat().st_size for path in spool_files(target)) >= SPOOLED_BYTES:
                break
        except FileNotFoundError:  # a finished bundle's spool went meanwhile
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the export ended before the kill"
    assert server.log.wait_idle(30), "the killed export's requests were never answered"


def spooled_tiles(target: Path) -> set[tuple[int, int, int]]:
    """Tiles (and known absences) the spools hold, read back as a rerun will."""
    known = set()
    for path in spool_files(target):
        level, name = path.stem.split("-")
        brow, bcol = int(name[1:5], 16), int(name[6:10], 16)
        spool = DownloadSpool(path, bundle_range(brow, bcol), 16 << 20)
        known.update((int(level[1:]), row, col) for row, col in [*spool.tiles, *spool.absent])
        spool.close()
    return known


def requested_again(server, kept: set) -> set:
    """The tiles the rerun asked for that the killed run had kept; each tile is asked once."""
    asked = [(entry.level, entry.row, entry.col) for entry in server.log.entries()
             if entry.kind == "tile"]
    assert len(asked) == len(set(asked))
    return kept.intersection(asked)


def checkpoint_records(target: Path) -> list[dict]:
    checkpoints = list(target.glob(f".*.partial-*/{CHECKPOINT_NAME}"))
    if not checkpoints:
        return []
    return [json.loads(line) for line in checkpoints[0].read_text().splitlines()[1:]]


def test_a_download_killed_inside_a_bundle_keeps_its_tiles(world, tmp_path, qgis_process_env):
    server, reference, all_requests = world
    env = qgis_process_env(tmp_path / "profile")
    target = tmp_path / "target"
    args = export_args(server.service_url("world"), target)
    kill_mid_bundle(server, args, target, env)
    finished = {tuple(record["bundle"]) for record in checkpoint_records(target)}
    spooled = {tile for tile in spooled_tiles(target)
               if (tile[0], *(n - n % PACKET_SIZE for n in tile[1:])) not in finished}
    assert len(spooled) > 2 * len(LEVELS_ESTIMATED) * SAMPLES_PER_LEVEL
    assert len(finished) < BUNDLES
    server.log.clear()
    output = run(args, env)
    assert "tiles an interrupted run of this export downloaded for" in output, output
    # only the estimate's few samples per level are fetched again (and then not used)
    assert len(requested_again(server, spooled)) <= len(LEVELS_ESTIMATED) * SAMPLES_PER_LEVEL
    assert changed_files(reference, snapshot(target)) == []  # byte for byte, nothing beside


@pytest.fixture
def world_package(world, tmp_path_factory):
    """An uninterrupted .tpkx export of the served sample: its members."""
    server, _, _ = world
    reference = tmp_path_factory.mktemp("package")
    run_export({"INPUT_SERVICE": server.service_url("world"), "TARGET_CACHE_PATH":
                str(reference), "LEVELS": LEVELS, "EXPORT_CACHE_TYPE": 1, "LOAD_RESULT": False})
    server.log.clear()
    return members(reference / "world.tpkx")


def members(package: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_package_download_killed_part_way_keeps_its_tiles(world, world_package, tmp_path,
                                                            qgis_process_env):
    server, _, all_requests = world
    env = qgis_process_env(tmp_path / "profile")
    target = tmp_path / "target"
    args = [*export_args(server.service_url("world"), target), "EXPORT_CACHE_TYPE=1"]
    kill_mid_bundle(server, args, target, env)
    assert not (target / "world.tpkx").exists()
    spooled = spooled_tiles(target)
    assert len(spooled) > 2 * len(LEVELS_ESTIMATED) * SAMPLES_PER_LEVEL
    server.log.clear()
    output = run(args, env)
    assert "tiles an interrupted run of this export downloaded for" in output, output
    assert len(requested_again(server, spooled)) <= len(LEVELS_ESTIMATED) * SAMPLES_PER_LEVEL
    assert tile_requests(server) < all_requests - len(spooled) + len(LEVELS_ESTIMATED) * (
        SAMPLES_PER_LEVEL)
    assert members(target / "world.tpkx") == world_package  # the same members, byte for byte
    assert no_leftovers(target) == []
