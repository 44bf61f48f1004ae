"""All-or-nothing updates (issue 13, items 1 and 8): an update of an existing dataset killed
(-9, in a qgis_process of its own) before its journal is written leaves the target byte for byte
as it was; killed at any point after, the next export into the target completes it, so the
target ends byte for byte as an uninterrupted update leaves it. No leftovers survive."""
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

from export_map_server_cache.core.export.journal import KILL_POINT  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
LEVELS = "0-5"  # the sample's levels: one bundle each
FIRST = "-30,-20,30,20 [EPSG:4326]"  # the target before the update: a part of the world
MOVES = 7  # the update moves its 6 bundles and conf.cdi into place


def update_args(target: Path) -> list[str]:
    return ["run", ALG, "--", f"INPUT_SERVICE={SAMPLE}", f"TARGET_CACHE_PATH={target}",
            f"LEVELS={LEVELS}", "STORAGE_FORMAT_TYPE=1"]


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """The target before the update, and after an uninterrupted one."""
    base = tmp_path_factory.mktemp("crash")
    run_export({"INPUT_SERVICE": str(SAMPLE), "TARGET_CACHE_PATH": str(base / "before"),
                "LEVELS": LEVELS, "EXPORT_EXTENT": FIRST})
    shutil.copytree(base / "before", base / "after")
    run_export({"INPUT_SERVICE": str(SAMPLE), "TARGET_CACHE_PATH": str(base / "after"),
                "LEVELS": LEVELS})
    before, after = snapshot(base / "before"), snapshot(base / "after")
    # every bundle but level 0's (its one tile lies in both areas) and conf.cdi change
    assert len(changed_files(before, after)) == MOVES - 1
    return base / "before", before, after


@pytest.mark.parametrize("kill_after", [-1, 0, 1, 4, MOVES])
def test_an_update_killed_at_any_point_ends_as_before_or_as_after(kill_after, states,
                                                                  tmp_path, qgis_process_env):
    pristine, before, after = states
    target = tmp_path / "target"
    shutil.copytree(pristine, target)
    env = qgis_process_env(tmp_path / "profile")
    env[KILL_POINT] = str(kill_after)
    killed = subprocess.run([QGIS_PROCESS, *update_args(target)], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    journal = target / ".world_map.journal"
    if kill_after == -1:  # before the journal: nothing of the target was touched
        assert not journal.exists()
        assert changed_files(snapshot(pristine / "world_map"),
                             snapshot(target / "world_map")) == []
    else:
        assert journal.exists()
    del env[KILL_POINT]
    rerun = subprocess.run([QGIS_PROCESS, *update_args(target)], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    if kill_after >= 0:
        assert "was interrupted while applying its update" in rerun.stdout + rerun.stderr
    assert changed_files(after, snapshot(target)) == []  # exactly as after, no leftovers
