"""A download through the desktop's code path (a QgsProcessingAlgRunnerTask in QGIS's task
manager, the main thread turning its event loop) with what the desktop has listening: QGIS's
message log panel and a network logger on the main thread's network manager, against the same
download through processing.run. Request rates are read on the server's side.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import web_mercator_scheme, write_cache  # noqa: E402
from recording import recording_feedback  # noqa: E402
from test_dialog import run_task  # noqa: E402
from test_http_export import run_export  # noqa: E402

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")


def _tile(level: int, row: int, col: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (256, 256), (level * 30, row % 256, col % 256)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def sparse_world(tmp_path_factory) -> Path:
    """Levels 0-6 of a world cache with one tile in 16 from level 3 on: served without a
    tilemap, 5,461 requests of which about 4,000 are 404s with ArcGIS's JSON error body."""
    folder = tmp_path_factory.mktemp("sparse") / "sparse"
    windows = {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(7)}
    skip = [(z, r, c) for z in range(3, 7) for r in range(2**z) for c in range(2**z)
            if (r * 3 + c) % 16]
    write_cache(folder / "Layers", web_mercator_scheme(), windows, skip=skip, make=_tile)
    return folder


class NetworkLogger:
    """Listens on the main thread's network manager as QGIS's Network Logger (F12) does when it
    records: every request kept, each answer's row found by a linear search."""

    def __init__(self):
        from qgis.core import (
            QgsNetworkAccessManager,
            QgsNetworkReplyContent,
            QgsNetworkRequestParameters,
        )

        self.requests: list[tuple[int, str]] = []
        self.answered = 0
        manager = QgsNetworkAccessManager.instance()
        self._signals = (
            (manager.requestAboutToBeCreated[QgsNetworkRequestParameters], self._created),
            (manager.finished[QgsNetworkReplyContent], self._finished),
        )
        for signal, slot in self._signals:
            signal.connect(slot)

    def _created(self, parameters) -> None:
        self.requests.append((parameters.requestId(), parameters.request().url().toString()))

    def _finished(self, content) -> None:
        wanted = content.requestId()
        self.answered += any(number == wanted for number, _ in self.requests)

    def close(self) -> None:
        for signal, slot in self._signals:
            signal.disconnect(slot)


def _rate(server) -> tuple[int, float]:
    """Tile requests and their rate (requests/s from the first start to the last end)."""
    tiles = [e for e in server.log.entries() if e.kind == "tile"]
    span = max(e.finished for e in tiles) - min(e.started for e in tiles)
    return len(tiles), len(tiles) / span


def test_the_desktop_downloads_as_fast_as_processing_run(serve, sparse_world, tmp_path):
    """Both ways twice, alternately, so that a change of load on the machine hits both: the
    best desktop rate within 1.5x of the best processing.run rate."""
    from qgis.gui import QgsMessageLogViewer

    server = serve({"sparse": sparse_world}, tilemap=False)
    params = {"INPUT_SERVICE": server.service_url("sparse"), "LEVELS": "0-6",
              "EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1, "LOAD_RESULT": False}
    viewer = QgsMessageLogViewer()  # appends every message of QGIS's log, as the desktop's panel
    viewer.show()
    logger = NetworkLogger()
    rates: dict[str, list[float]] = {"cli": [], "desktop": []}
    try:
        for attempt in range(2):
            server.log.clear()
            run_export({**params, "TARGET_CACHE_PATH": str(tmp_path / f"cli{attempt}")})
            requests, rate = _rate(server)
            assert requests == sum(4**z for z in range(7))
            rates["cli"].append(rate)

            server.log.clear()
            feedback = recording_feedback()
            ok, _, _, _, _ = run_task(
                {**params, "TARGET_CACHE_PATH": str(tmp_path / f"desktop{attempt}")}, feedback,
                timeout=300)
            assert ok, "\n".join(feedback.infos + feedback.errors)
            requests, rate = _rate(server)
            assert requests == sum(4**z for z in range(7))
            rates["desktop"].append(rate)
    finally:
        logger.close()
        viewer.close()
    assert not [url for _, url in logger.requests if "/tile/" in url], \
        "tile requests reached the main thread's network manager"
    assert max(rates["desktop"]) * 1.5 >= max(rates["cli"]), rates
