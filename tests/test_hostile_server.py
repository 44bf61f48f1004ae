"""Bounded downloads (issue 13, item 6): whatever a server sends for a tile (an endless body, one
far too large, a Content-Length of 2 GB then silence, a gzip bomb, a byte a second), the
download ends soon, holds no more than the cap in memory, and the run says what happened."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import QGIS_PROCESS  # noqa: E402
from test_http_export import SAMPLE, export_error  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
NETWORK_TIMEOUT_MS = 2000  # QGIS's setting: a whole transfer may take twice that
TOO_LARGE = "reply larger than 16 MiB"
REASONS = {"endless": TOO_LARGE, "oversized": TOO_LARGE, "huge_length": TOO_LARGE,
           "gzip_bomb": TOO_LARGE, "trickle": "reply not complete within 4 s"}
PEAK_RSS_MARGIN = 200 << 20  # over an export of the same tiles from an honest server


@pytest.fixture
def short_network_timeout():
    from qgis.core import QgsNetworkAccessManager

    before = QgsNetworkAccessManager.timeout()
    QgsNetworkAccessManager.setTimeout(NETWORK_TIMEOUT_MS)
    yield
    QgsNetworkAccessManager.setTimeout(before)


@pytest.mark.parametrize("fault", sorted(REASONS))
def test_a_hostile_tile_body_is_cut_short_and_reported(fault, serve, tmp_path,
                                                       short_network_timeout):
    server = serve({"world": SAMPLE}, fault=fault, fault_fraction=0.05, fault_attempts=1000,
                   hang_seconds=600)
    target = tmp_path / "out"
    started = time.monotonic()
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-3",
                            "TARGET_CACHE_PATH": str(target)})
    elapsed = time.monotonic() - started
    assert elapsed < 45, elapsed  # 8 workers, each hostile tile cut once: no minutes per tile
    assert "could not be downloaded" in message and REASONS[fault] in message, message
    assert not target.exists() or not any(target.iterdir())
    served = Counter((e.level, e.row, e.col) for e in server.log.entries() if e.kind == "tile")
    hostile = [tile for tile in served if server.options.selects(*tile)]
    assert hostile, "the fault was never served"
    assert all(served[tile] == 1 for tile in hostile)  # the same server: no point retrying


def _peak_rss_of_export(url: str, target: Path, env: dict, log: Path) -> tuple[int, str]:
    """Peak RSS (bytes) of a qgis_process.bin export, and its output."""
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(
            [QGIS_PROCESS, "run", ALG, "--", f"INPUT_SERVICE={url}", "LEVELS=0-3",
             f"TARGET_CACHE_PATH={target}"], env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the session's
        process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss * 1024, log.read_text(encoding="utf-8")


@pytest.mark.parametrize("fault", ["endless", "gzip_bomb"])
def test_memory_stays_bounded_whatever_the_server_sends(fault, serve, tmp_path,
                                                        qgis_process_env):
    """Each export in a qgis_process of its own; an honest export of the same tiles first."""
    honest = serve({"world": SAMPLE})
    env = qgis_process_env(tmp_path / "honest")
    baseline, output = _peak_rss_of_export(honest.service_url("world"), tmp_path / "a", env,
                                           tmp_path / "honest.log")
    assert "OUTPUT_CACHE_PATH" in output, output[-2000:]
    hostile = serve({"world": SAMPLE}, fault=fault, fault_fraction=0.05, fault_attempts=1000)
    env = qgis_process_env(tmp_path / "hostile")
    peak, output = _peak_rss_of_export(hostile.service_url("world"), tmp_path / "b", env,
                                       tmp_path / "hostile.log")
    assert TOO_LARGE in output, output[-2000:]
    assert peak < baseline + PEAK_RSS_MARGIN, (peak >> 20, baseline >> 20)


def test_the_tile_size_cap_is_adjustable(serve, tmp_path):
    """MAX_TILE_SIZE_MB: an honest server's tiles above a lowered cap are refused, not kept."""
    server = serve({"world": SAMPLE})
    message = export_error({"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-1",
                            "TARGET_CACHE_PATH": str(tmp_path / "out"),
                            "MAX_TILE_SIZE_MB": 0.02})  # 20 KiB: the sample's tiles are larger
    assert "could not be downloaded" in message and "reply larger than 0.02 MiB" in message, \
        message


def test_each_pool_thread_makes_its_network_objects_once(serve):
    """The watch's deadlock fix rests on this: a pool thread's QgsBlockingNetworkRequest and
    QTimer are made once, not per request (Python-made QObjects made, connected or deleted
    per request deadlocked against the GIL on 3.22)."""
    from export_map_server_cache.core.sources.http_client import ReplyLimits
    from export_map_server_cache.processing_provider.qgis_network import QgisTransport

    server = serve({"world": SAMPLE})
    transport = QgisTransport(4)
    try:
        futures = [transport.submit(transport.get, server.service_url("world") + "/tile/0/0/0",
                                    {}, ReplyLimits(1 << 20)) for _ in range(40)]
        assert all(transport.result(future).status == 200 for future in futures)
        assert len(transport._networks) == 4  # one per thread, made when it was prepared
    finally:
        transport.close()
