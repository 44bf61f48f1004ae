"""One writer per target (issue 13, item 3): the lock beside the target, held for the whole run,
names the run that holds it, and dies with its process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import BUILD_PLUGINS_DIR  # noqa: E402
from test_http_export import SAMPLE, export_error, run_export  # noqa: E402

from export_map_server_cache.core.errors import CacheError  # noqa: E402
from export_map_server_cache.core.export.target_lock import TargetLock, lock_path  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from export_map_server_cache.core.export.target_lock import TargetLock
lock = TargetLock(Path(sys.argv[2]))
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder():
    """Start a process that takes the lock of a path and keeps it until killed."""
    started = []

    def start(output: Path) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", HOLDER, str(BUILD_PLUGINS_DIR),
                                  str(output)], stdout=subprocess.PIPE, text=True)
        started.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield start
    for child in started:
        child.kill()
        child.wait()
        child.stdout.close()


def test_a_second_writer_is_told_who_holds_the_target_and_the_lock_dies_with_its_process(
        holder, tmp_path):
    output = tmp_path / "cache.tpkx"
    child = holder(output)
    with pytest.raises(CacheError) as refused:
        TargetLock(output).acquire()
    message = str(refused.value)
    assert f"process {child.pid} on {socket.gethostname()}, started " in message, message
    assert str(output) in message
    os.kill(child.pid, signal.SIGKILL)  # no clean-up code runs: the OS drops the lock
    child.wait()
    with TargetLock(output):
        assert lock_path(output).exists()
    assert not lock_path(output).exists()  # no litter once released


@pytest.mark.parametrize("kind, name", [(0, "world_map"), (1, "world_map.tpkx")])
def test_an_export_into_a_target_another_run_writes_stops_at_once(kind, name, holder, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    child = holder(target / name)
    params = {"INPUT_SERVICE": str(SAMPLE), "TARGET_CACHE_PATH": str(target),
              "EXPORT_CACHE_TYPE": kind, "STORAGE_FORMAT_TYPE": 1, "LEVELS": "0-2"}
    message = export_error(params)
    assert message.startswith("TARGET_CACHE_PATH: Another export is writing to "), message
    assert f"process {child.pid} on " in message
    assert sorted(p.name for p in target.iterdir()) == [f".{name}.lock"]  # nothing written
    child.kill()
    child.wait()
    run_export(params)
    assert sorted(p.name for p in target.iterdir()) == [name]  # done, and no lock file left


def test_an_export_holds_the_lock_for_its_whole_run(tmp_path):
    """Asked at every progress report of a running export, the lock is taken."""
    from qgis.core import QgsProcessingFeedback

    target = tmp_path / "target"
    output = target / "world_map.tpkx"
    seen: list[str] = []

    def try_lock(_progress: float) -> None:
        if not lock_path(output).exists():
            seen.append("no lock file")
            return
        try:
            TargetLock(output).acquire()
            seen.append("free")
        except CacheError as exc:
            seen.append(str(exc))

    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(try_lock)
    run_export({"INPUT_SERVICE": str(SAMPLE), "TARGET_CACHE_PATH": str(target),
                "EXPORT_CACHE_TYPE": 1, "STORAGE_FORMAT_TYPE": 1}, feedback)
    assert seen, "the export reported no progress"
    assert all(f"process {os.getpid()} on " in text for text in seen), seen[:3]
    assert sorted(p.name for p in target.iterdir()) == ["world_map.tpkx"]
