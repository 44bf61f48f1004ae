"""Run inside a real QGIS desktop (`qgis --nologo --code bench/desktop_dialog.py`) by
run_desktop_bench.py: the plugin's Web-menu action opens the Processing dialog, the served
service is added to the project as a layer and given as the input, Run is pressed, and the time
to the end of the run goes to $BENCH_OUT (JSON); then QGIS quits."""
import json
import os
import time

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QAction, QApplication
from qgis.utils import iface

state: dict = {}


def start() -> None:
    layer = QgsRasterLayer(f"url={os.environ['BENCH_SERVICE']}", "served", "arcgismapserver")
    state["layer_valid"] = layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    action = iface.mainWindow().findChild(QAction, "exportMapServerCacheAction")
    QTimer.singleShot(1500, lambda: run(layer))
    action.trigger()  # the dialog is modal: this returns when it closes


def run(layer) -> None:
    dialog = next(w for w in QApplication.topLevelWidgets()
                  if w.isVisible() and type(w).__name__ == "AlgorithmDialog")
    dialog.setParameters({"INPUT_SERVICE": layer.id(), "LEVELS": os.environ["BENCH_LEVELS"],
                          "TARGET_CACHE_PATH": os.environ["BENCH_TARGET"],
                          "MAX_TILE_COUNT": 0, "LOAD_RESULT": False})
    dialog.algorithmFinished.connect(lambda ok, results: finished(dialog, ok))
    state["started"] = time.monotonic()
    dialog.runAlgorithm()


def finished(dialog, ok: bool) -> None:
    state["seconds"] = time.monotonic() - state.pop("started")
    state["ok"] = ok
    with open(os.environ["BENCH_OUT"], "w", encoding="utf-8") as out:
        json.dump(state, out)
    QTimer.singleShot(300, dialog.close)
    QTimer.singleShot(1500, lambda: QgsApplication.exit(0))


QTimer.singleShot(3000, start)
