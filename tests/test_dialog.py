"""The plugin as a QGIS user meets it: the Processing dialog built offscreen with the real widget
wrappers, the level list read from a served cache, the modeler and batch widgets, a run through
the Toolbox's runner task (progress, log lines, cancel) and the result on the map.

Screenshots of the dialog and of the exported cache on the map are written to build/screenshots
(`make screenshots` copies them to docs/ for the README).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import snapshot  # noqa: E402
from recording import recording_feedback  # noqa: E402
from test_http_export import SAMPLE  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
EARTH = 20037508.342789244
FRANCE = "POLYGON((-4.8 48.6,-1.5 43.3,3.2 42.4,7.7 43.8,8.2 49.0,2.5 51.1,-4.8 48.6))"


def pump(seconds: float, until=lambda: False) -> bool:
    """Run the event loop (as QGIS's main window does) until `until()` or the time is up."""
    from qgis.core import QgsApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QgsApplication.processEvents()
        if until():
            return True
        time.sleep(0.01)
    return until()


def algorithm():
    from qgis.core import QgsApplication

    return QgsApplication.processingRegistry().createAlgorithmById(ALG)


def tile_count(level: int, lon0: float, lat0: float, lon1: float, lat1: float) -> int:
    """Web Mercator tiles overlapping a lon/lat box, from the tile formulas (not the plugin)."""
    def tile_x(lon):
        return (lon + 180) / 360 * 2**level

    def tile_y(lat):
        rad = math.radians(lat)
        return (1 - math.log(math.tan(rad) + 1 / math.cos(rad)) / math.pi) / 2 * 2**level

    cols = math.floor(tile_x(lon1)) - math.floor(tile_x(lon0)) + 1
    rows = math.floor(tile_y(lat0)) - math.floor(tile_y(lat1)) + 1
    return cols * rows


@pytest.fixture
def project_layers():
    """Layers added to the project for one test, removed after it."""
    from qgis.core import QgsProject

    added = []

    def add(layer):
        assert layer.isValid(), layer.source()
        QgsProject.instance().addMapLayer(layer)
        added.append(layer.id())
        return layer

    yield add
    QgsProject.instance().removeMapLayers(added)


def france_layer():
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "France outline", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(FRANCE))
    layer.dataProvider().addFeatures([feature])
    return layer


def list_texts(widget) -> dict[int, list[str]]:
    tree = widget.tree
    return {int(tree.topLevelItem(i).text(0)): [tree.topLevelItem(i).text(c) for c in range(4)]
            for i in range(tree.topLevelItemCount())}


def test_dialog_lists_a_served_caches_levels_and_counts_follow_extent_and_aoi(
        serve, project_layers, dialog_iface):
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsProcessingContext, QgsRasterLayer

    server = serve({"world": SAMPLE})
    url = server.service_url("world")
    xyz = project_layers(QgsRasterLayer(f"type=xyz&url={url}/tile/{{z}}/{{y}}/{{x}}",
                                        "World basemap", "wms"))
    outline = project_layers(france_layer())
    dialog = AlgorithmDialog(algorithm())
    try:
        wrappers = dialog.mainWidget().wrappers
        input_widget = wrappers["INPUT_SERVICE"].widget
        combo = input_widget.combo
        names = [combo.itemText(i) for i in range(combo.count())]
        assert names == ["World basemap (project layer)"]  # the polygon layer is not offered
        combo.setCurrentIndex(0)
        assert wrappers["INPUT_SERVICE"].value() == xyz.id()

        levels = wrappers["LEVELS"].widget
        assert pump(15, lambda: levels.tree.topLevelItemCount() > 0), levels.status.text()
        rows = list_texts(levels)
        assert sorted(rows) == list(range(23))  # the sample's 23 LODs, minLOD..maxLOD 0..22
        assert rows[0][1] == "1:591,657,528" and rows[0][2] == "156543"
        assert "Service" in levels.status.text()
        assert rows[5][3] == "1,024"  # no extent: the service's full extent (the world)

        context = QgsProcessingContext()
        wrappers["EXPORT_EXTENT"].setParameterValue("-5,10,41,52 [EPSG:4326]", context)
        assert pump(5, lambda: list_texts(levels)[5][3] != "1,024")
        rows = list_texts(levels)
        for level in (3, 6, 9):
            assert rows[level][3] == f"{tile_count(level, -5, 41, 10, 52):,}", level

        wrappers["AREA_OF_INTEREST"].setParameterValue(outline, context)
        before = rows
        assert pump(5, lambda: list_texts(levels)[9][3] != before[9][3])
        rows = list_texts(levels)
        in_box = tile_count(9, -4.8, 42.4, 8.2, 51.1)
        in_polygon = int(rows[9][3].replace(",", ""))
        assert 0.5 * in_box < in_polygon < in_box  # the outline leaves corners of its box out

        levels.first.setValue(2)
        levels.last.setValue(4)
        levels.range_button.click()
        assert wrappers["LEVELS"].value() == "2-4"
        levels.all_button.click()
        assert wrappers["LEVELS"].value() == "0-22"
        wrappers["LEVELS"].setValue("0-3,7")
        assert wrappers["LEVELS"].value() == "0-3,7"

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        dialog.resize(1100, 1150)
        dialog.show()
        pump(0.5)
        shot = SCREENSHOTS / "dialog.png"
        assert dialog.grab().save(str(shot))
        assert shot.stat().st_size > 20_000
    finally:
        dialog.close()
        dialog.deleteLater()


def test_level_list_says_why_an_input_cannot_be_read(dialog_iface, tmp_path):
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    dialog = AlgorithmDialog(algorithm())
    try:
        wrappers = dialog.mainWidget().wrappers
        wrappers["INPUT_SERVICE"].setValue(str(tmp_path / "missing"))
        levels = wrappers["LEVELS"].widget
        assert pump(5, lambda: "Cannot list" in levels.status.text())
        assert "missing" in levels.status.text()
        assert levels.tree.topLevelItemCount() == 0
    finally:
        dialog.close()
        dialog.deleteLater()


def test_modeler_widgets_take_model_inputs_and_plain_strings(dialog_iface):
    from processing.modeler.ModelerParametersDialog import ModelerParametersDialog
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelParameter,
        QgsProcessingParameterString,
    )
    from qgis.core import QgsProcessingModelChildParameterSource as Source

    model = QgsProcessingModelAlgorithm("m", "g")
    for name, text in (("cache_in", "Cache to export"), ("levels_in", "Levels to export")):
        model.addModelParameter(QgsProcessingParameterString(name, text),
                                QgsProcessingModelParameter(name))
    dialog = ModelerParametersDialog(algorithm(), model)
    try:
        wrappers = dialog.widget.widget.wrappers
        levels, source = wrappers["LEVELS"], wrappers["INPUT_SERVICE"]
        items = [levels.widget.itemText(i) for i in range(levels.widget.count())]
        assert "Levels to export" in items and "Cache to export" in items
        levels.widget.setCurrentIndex(items.index("Levels to export"))
        assert levels.value() == Source.fromModelParameter("levels_in")
        source.widget.setEditText("/data/cache.tpkx")
        assert source.value() == "/data/cache.tpkx"
        source.setWidgetValue(Source.fromStaticValue("/data/other.tpk"), None)
        assert source.value() == "/data/other.tpk"
        child = dialog.createAlgorithm()
        assert child.parameterSources()["LEVELS"] == [Source.fromModelParameter("levels_in")]
        assert child.parameterSources()["INPUT_SERVICE"][0].staticValue() == "/data/other.tpk"
    finally:
        dialog.deleteLater()


def test_batch_widgets_are_plain_text(dialog_iface):
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from qgis.PyQt.QtWidgets import QLineEdit

    dialog = BatchAlgorithmDialog(algorithm())
    try:
        panel = dialog.mainWidget()
        names = [p.name() for p in panel.alg.parameterDefinitions()
                 if not p.isDestination() and p.name() in ("INPUT_SERVICE", "LEVELS")]
        assert names
        found = 0
        for wrapper in panel.wrappers[0]:
            if wrapper is None or not hasattr(wrapper, "parameterDefinition"):
                continue
            if wrapper.parameterDefinition().name() in ("INPUT_SERVICE", "LEVELS"):
                assert isinstance(wrapper.widget, QLineEdit)
                wrapper.setValue("0-2")
                assert wrapper.value() == "0-2"
                found += 1
        assert found == 2
    finally:
        dialog.deleteLater()


def run_task(parameters: dict, feedback, cancel_when=None, timeout: float = 60):
    """The Toolbox's way: a QgsProcessingAlgRunnerTask in QGIS's task manager while the main
    thread keeps turning its event loop. Returns (ok, results, context, main-loop turns,
    seconds from cancel to the end)."""
    from qgis.core import (
        QgsApplication,
        QgsProcessingAlgRunnerTask,
        QgsProcessingContext,
        QgsProject,
    )

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    task = QgsProcessingAlgRunnerTask(algorithm(), parameters, context, feedback)
    finished: list = []
    task.executed.connect(lambda ok, results: finished.append((ok, results,
                                                               time.monotonic())))
    QgsApplication.taskManager().addTask(task)
    turns, canceled_at = 0, None
    end = time.monotonic() + timeout
    while not finished and time.monotonic() < end:
        QgsApplication.processEvents()
        turns += 1
        if cancel_when is not None and canceled_at is None and cancel_when():
            canceled_at = time.monotonic()
            feedback.cancel()
        time.sleep(0.005)
    assert finished, "the task did not finish"
    ok, results, ended = finished[0]
    return ok, results, context, turns, (ended - canceled_at if canceled_at else None)


def test_background_run_reports_per_level_progress_and_hands_the_result_over(serve,
                                                                             tmp_path):
    server = serve({"world": SAMPLE}, latency=0.02)
    feedback = recording_feedback()
    progress: list[float] = []
    feedback.progressChanged.connect(progress.append)
    ok, results, context, turns, _ = run_task(
        {"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-4",
         "TARGET_CACHE_PATH": str(tmp_path / "out"), "NUM_OF_CACHING_SERVICE_INSTANCES": 2,
         "LOAD_RESULT": True}, feedback)
    assert ok, "\n".join(feedback.infos + feedback.warnings)
    assert results["TILE_COUNT"] == 341
    assert progress == sorted(progress) and progress[-1] == pytest.approx(100)
    assert len(progress) > 10
    assert turns > 100  # the main thread kept its event loop going during the export
    lines = "\n".join(feedback.infos)
    periodic = [line for line in feedback.infos
                if line.startswith("Level ") and " bundles), " in line]
    assert periodic, lines
    assert all("tiles/s" in line and "left for this level" in line for line in periodic), lines
    assert any(" of 256 tiles" in line for line in periodic), lines  # the estimate's total
    for level, tiles in ((0, 1), (1, 4), (2, 16), (3, 64), (4, 256)):
        assert f"Level {level} done: {tiles:,} tiles" in lines
    assert lines.index("Level 3 done") < lines.index("Level 4 done")

    loaded = [context.getMapLayer(layer_id) for layer_id in context.layersToLoadOnCompletion()]
    assert [layer.name() for layer in loaded] == ["world"]


def test_an_aoi_export_lands_on_the_map_clipped_to_the_polygon(project_layers, tmp_path):
    """LOAD_RESULT hands the dataset to QGIS when the task ends; drawn by QGIS, the France
    outline's inside shows the basemap and the rest of its box stays empty."""
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsMapRendererSequentialJob,
        QgsMapSettings,
        QgsPointXY,
        QgsProject,
    )
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    outline = project_layers(france_layer())
    feedback = recording_feedback()
    ok, results, context, _, _ = run_task(
        {"INPUT_SERVICE": str(SAMPLE / "Layers"), "LEVELS": "0-5", "LOAD_RESULT": True,
         "AREA_OF_INTEREST": outline.id(), "TARGET_CACHE_PATH": str(tmp_path)}, feedback)
    assert ok, "\n".join(feedback.infos + feedback.warnings)
    loaded = [context.getMapLayer(layer_id) for layer_id in context.layersToLoadOnCompletion()]
    assert len(loaded) == 1 and loaded[0].isValid()
    layer = loaded[0]
    assert layer.providerType() == "gdal" and layer.source().endswith("conf.xml")
    to_map = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), layer.crs(),
                                    QgsProject.instance())
    box = to_map.transformBoundingBox(outline.extent()).buffered(60_000)
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    # about 5,300 m a pixel: level 5 (4,892 m), the sample's finest, is what GDAL draws
    settings.setOutputSize(QSize(320, 320))
    settings.setExtent(box)
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert image.save(str(SCREENSHOTS / "map.png"))

    def pixel(lon, lat):
        point = settings.mapToPixel().transform(to_map.transform(QgsPointXY(lon, lat)))
        return QColor(image.pixel(int(point.x()), int(point.y())))

    white = QColor(255, 255, 255)
    assert pixel(2.5, 46.5) != white  # inside: the basemap
    for lon, lat in ((7.6, 42.7), (-4.5, 42.8), (7.8, 50.8), (-4.5, 50.8)):
        assert pixel(lon, lat) == white, (lon, lat)  # in the box, outside the outline


@pytest.mark.parametrize("cache_type,storage,message", [
    (1, 1, "GDAL 3.6"), (0, 0, "reads only Compact V2"), (1, 0, "reads only Compact V2")])
def test_outputs_qgis_cannot_show_get_a_message_instead_of_a_layer(cache_type, storage,
                                                                   message, tmp_path):
    feedback = recording_feedback()
    ok, _, context, _, _ = run_task(
        {"INPUT_SERVICE": str(SAMPLE / "Layers"), "LEVELS": "0-1", "LOAD_RESULT": True,
         "TARGET_CACHE_PATH": str(tmp_path), "EXPORT_CACHE_TYPE": cache_type,
         "STORAGE_FORMAT_TYPE": storage}, feedback)
    assert ok
    assert context.layersToLoadOnCompletion() == {}
    assert message in "\n".join(feedback.infos + feedback.warnings)


def test_cancel_in_the_background_stops_within_a_second_and_leaves_nothing(serve, tmp_path):
    server = serve({"world": SAMPLE}, latency=0.2)
    feedback = recording_feedback()
    target = tmp_path / "out"

    def tiles_requested():
        return sum(1 for e in server.log.entries() if e.kind == "tile") >= 10

    ok, _, _, _, after_cancel = run_task(
        {"INPUT_SERVICE": server.service_url("world"), "LEVELS": "0-5",
         "TARGET_CACHE_PATH": str(target), "EXPORT_CACHE_TYPE": 1}, feedback,
        cancel_when=tiles_requested)
    assert not ok
    assert after_cancel is not None and after_cancel < 1.0
    assert not target.exists() or snapshot(target) == {}


def test_without_processings_widget_wrapper_api_the_fields_stay_plain(monkeypatch):
    """QGIS removed Processing's Python WidgetWrapper API after 4.0 (QEP 427): there the two
    custom fields fall back to QGIS's own text fields instead of breaking the dialog."""
    import types

    ui = "export_map_server_cache.ui"
    assert algorithm().parameterDefinition("LEVELS").metadata() == {
        "widget_wrapper": {"class": f"{ui}.level_wrapper.LevelListWrapper"}}
    monkeypatch.setitem(sys.modules, "processing.gui.wrappers",
                        types.ModuleType("processing.gui.wrappers"))
    for name in ("INPUT_SERVICE", "LEVELS"):
        assert "widget_wrapper" not in algorithm().parameterDefinition(name).metadata()
