"""All-or-nothing updates (issue 13, items 1 and 8): an update of an existing dataset or .tpkx
killed (-9, in a qgis_process of its own) at each phase — after planning, with its bundles
written, before and after its journal, part way through applying it, before and after the
package's rename — leaves the target byte for byte as it was (or, past the point of no return,
as after); the same export run again completes it, so the target ends byte for byte as an
uninterrupted update leaves it, with nothing beside it."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_factory import changed_files, snapshot  # noqa: E402
from conftest import QGIS_PROCESS  # noqa: E402
from test_http_export import SAMPLE, run_export  # noqa: E402

from export_map_server_cache.core.export.kill_points import KILL_AT  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
LEVELS = "0-5"  # the sample's levels: one bundle each
FIRST = "-30,-20,30,20 [EPSG:4326]"  # the target before the update: a part of the world
MOVES = 7  # a dataset's update moves its 6 bundles and conf.cdi into place
WORKERS = 1  # a package's members are in the order its workers finish: one, for byte equality
# kill point -> the target right after the kill is as "before" or as "after" the update
DATASET_POINTS = {"planned": "before", "bundles-written": "before", "journal": "before",
                  "moved-0": "before", "moved-1": None, "moved-4": None, f"moved-{MOVES}": None}
PACKAGE_POINTS = {"planned": "before", "bundles-written": "before",
                  "package-finished": "before", "package-renamed": "after"}


def update_args(target: Path, package: bool) -> list[str]:
    return ["run", ALG, "--", f"INPUT_SERVICE={SAMPLE}", f"TARGET_CACHE_PATH={target}",
            f"LEVELS={LEVELS}", "STORAGE_FORMAT_TYPE=1", f"EXPORT_CACHE_TYPE={int(package)}",
            "LOAD_RESULT=false", f"NUM_OF_CACHING_SERVICE_INSTANCES={WORKERS}"]


def states(base: Path, package: bool):
    """The target before the update, and after an uninterrupted one."""
    common = {"INPUT_SERVICE": str(SAMPLE), "LEVELS": LEVELS, "EXPORT_CACHE_TYPE": int(package),
              "LOAD_RESULT": False, "NUM_OF_CACHING_SERVICE_INSTANCES": WORKERS}
    run_export({**common, "TARGET_CACHE_PATH": str(base / "before"), "EXPORT_EXTENT": FIRST})
    shutil.copytree(base / "before", base / "after")
    run_export({**common, "TARGET_CACHE_PATH": str(base / "after")})
    return base / "before", snapshot(base / "before"), snapshot(base / "after")


@pytest.fixture(scope="module")
def dataset_states(tmp_path_factory):
    pristine, before, after = states(tmp_path_factory.mktemp("dataset"), package=False)
    # every bundle but level 0's (its one tile lies in both areas) and conf.cdi change
    assert len(changed_files(before, after)) == MOVES - 1
    return pristine, before, after


@pytest.fixture(scope="module")
def package_states(tmp_path_factory):
    pristine, before, after = states(tmp_path_factory.mktemp("package"), package=True)
    assert changed_files(before, after) == ["world_map.tpkx"]
    return pristine, before, after


def kill_then_rerun(point: str, right_after: str, package: bool, pristine: Path,
                    before: dict, after: dict, tmp_path: Path, env: dict) -> str:
    """Kill the update at `point`; check the target then; run it again; its output."""
    target = tmp_path / "target"
    shutil.copytree(pristine, target)
    killed = subprocess.run([QGIS_PROCESS, *update_args(target, package)],
                            env={**env, KILL_AT: point}, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    visible = {name: data for name, data in snapshot(target).items()
               if not name.startswith(".")}  # the stage and the journal are hidden
    if right_after is not None:
        assert changed_files({"before": before, "after": after}[right_after], visible) == []
    rerun = subprocess.run([QGIS_PROCESS, *update_args(target, package)], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert changed_files(after, snapshot(target)) == []  # exactly as after, no leftovers
    return rerun.stdout + rerun.stderr


@pytest.mark.parametrize("point", sorted(DATASET_POINTS))
def test_a_dataset_update_killed_at_any_point_ends_as_before_or_as_after(
        point, dataset_states, tmp_path, qgis_process_env):
    output = kill_then_rerun(point, DATASET_POINTS[point], False, *dataset_states, tmp_path,
                             qgis_process_env(tmp_path / "profile"))
    if point.startswith("moved-"):  # the journal was written: the rerun completed it first
        assert "was interrupted while applying its update" in output
    if point in ("bundles-written", "journal"):  # every bundle was done: none is done again
        assert "Resuming: 6 of 6 bundles already done" in output


@pytest.mark.parametrize("point", sorted(PACKAGE_POINTS))
def test_a_package_update_killed_at_any_point_ends_as_before_or_as_after(
        point, package_states, tmp_path, qgis_process_env):
    kill_then_rerun(point, PACKAGE_POINTS[point], True, *package_states, tmp_path,
                    qgis_process_env(tmp_path / "profile"))
