"""The algorithm where users meet it besides the Toolbox: inside a Processing model built in
code (also chained: tpk -> V2 dataset) and from `qgis_process.bin` in a subprocess."""
from __future__ import annotations

import json
import math
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_factory import (  # noqa: E402
    LEVEL0_RES,
    ORIGIN,
    read_all_tiles,
    web_mercator_scheme,
    write_cache,
)

from export_map_server_cache.core.grid.tiling_scheme import TileRange  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
MANDATORY_DEFAULTS = {"COPY_DATA_FROM_SERVER": False, "OVERWRITE": False,
                      "NUM_OF_CACHING_SERVICE_INSTANCES": 2}


@pytest.fixture(scope="module")
def source_cache(tmp_path_factory) -> tuple[Path, dict]:
    """Web Mercator V2 cache `demo`, levels 0-3 fully tiled (85 tiles), 12 LODs."""
    folder = tmp_path_factory.mktemp("src") / "demo"
    tiles = write_cache(folder / "Layers", web_mercator_scheme(12),
                        {z: TileRange(0, 2**z - 1, 0, 2**z - 1) for z in range(4)})
    return folder, tiles


def add_export_child(model, child_id: str, input_source, static: dict, output_name: str):
    """A child running the export; its TARGET_CACHE_PATH becomes the model output
    `<child_id>:<output_name>` (a static destination would be replaced by a temporary one)."""
    from qgis.core import (
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelOutput,
    )
    from qgis.core import QgsProcessingModelChildParameterSource as Source

    child = QgsProcessingModelChildAlgorithm(ALG)
    child.setChildId(child_id)
    child.addParameterSources("INPUT_SERVICE", [input_source])
    for key, value in {**MANDATORY_DEFAULTS, **static}.items():
        child.addParameterSources(key, [Source.fromStaticValue(value)])
    output = QgsProcessingModelOutput(output_name)
    output.setChildId(child_id)
    output.setChildOutputName("TARGET_CACHE_PATH")
    child.setModelOutputs({output_name: output})
    model.addChildAlgorithm(child)


def new_model():
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelParameter,
        QgsProcessingParameterString,
    )

    model = QgsProcessingModelAlgorithm("export cache model", "tests")
    model.addModelParameter(QgsProcessingParameterString("input_cache", "Input cache"),
                            QgsProcessingModelParameter("input_cache"))
    return model


def test_algorithm_runs_inside_a_model(source_cache, tmp_path):
    """INPUT_SERVICE bound to a model string input, other parameters static."""
    import processing
    from qgis.core import QgsProcessingModelChildParameterSource as Source

    folder, tiles = source_cache
    model = new_model()
    add_export_child(model, "export", Source.fromModelParameter("input_cache"),
                     {"EXPORT_CACHE_TYPE": 1, "STORAGE_FORMAT_TYPE": 1, "LEVELS": "1-2"},
                     "packages")
    model.updateDestinationParameters()
    assert model.validateChildAlgorithm("export")[0]
    target = tmp_path / "packages"
    results = processing.run(model, {"input_cache": str(folder),
                                     "export:packages": str(target)})
    package = target / "demo.tpkx"
    child = results["CHILD_RESULTS"]["export"]
    assert Path(child["OUTPUT_CACHE_PATH"]) == package
    expected = {k: v for k, v in tiles.items() if k[0] in (1, 2)}
    assert child["TILE_COUNT"] == len(expected) == 20
    assert read_all_tiles(package) == expected


def test_model_output_of_the_target_folder_is_reported(source_cache, tmp_path):
    """TARGET_CACHE_PATH is a declared output (a folder destination creates one); the algorithm
    must return it, or a model's output bound to it is None and cannot feed anything."""
    import processing
    from qgis.core import QgsProcessingModelChildParameterSource as Source

    folder, _ = source_cache
    model = new_model()
    add_export_child(model, "export", Source.fromModelParameter("input_cache"),
                     {"EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1, "LEVELS": "0"},
                     "datasets")
    model.updateDestinationParameters()
    target = tmp_path / "datasets"
    results = processing.run(model, {"input_cache": str(folder),
                                     "export:datasets": str(target)})
    assert results["CHILD_RESULTS"]["export"]["TILE_COUNT"] == 1
    assert results["export:datasets"] == str(target)


def test_modeler_offers_a_child_file_output_for_input_service(source_cache):
    """The modeler widget for INPUT_SERVICE (a string) accepts the first child's
    OUTPUT_CACHE_PATH (a file output): a value pointing at it survives the round trip, which
    it would not if the widget did not list that source."""
    from qgis.core import QgsApplication, QgsProcessingContext
    from qgis.core import QgsProcessingModelChildParameterSource as Source
    from qgis.gui import QgsGui

    model = new_model()
    add_export_child(model, "to_tpk", Source.fromModelParameter("input_cache"),
                     {"EXPORT_CACHE_TYPE": 1, "STORAGE_FORMAT_TYPE": 0}, "packages")
    add_export_child(model, "to_v2", Source.fromStaticValue(""),
                     {"EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1}, "datasets")
    param = QgsApplication.processingRegistry().algorithmById(ALG).parameterDefinition(
        "INPUT_SERVICE")
    widget = QgsGui.processingGuiRegistry().createModelerParameterWidget(
        model, "to_v2", param, QgsProcessingContext())
    widget.setWidgetValue(Source.fromChildOutput("to_tpk", "OUTPUT_CACHE_PATH"))
    value = widget.value()
    assert value.source() == Source.ChildOutput
    assert (value.outputChildId(), value.outputName()) == ("to_tpk", "OUTPUT_CACHE_PATH")
    widget.deleteLater()


def test_second_child_reexports_the_first_childs_package(source_cache, tmp_path):
    """Chain: export a .tpk (Compact V1), then export that .tpk again as a V2 dataset."""
    import processing
    from qgis.core import QgsProcessingModelChildParameterSource as Source

    folder, tiles = source_cache
    model = new_model()
    add_export_child(model, "to_tpk", Source.fromModelParameter("input_cache"),
                     {"EXPORT_CACHE_TYPE": 1, "STORAGE_FORMAT_TYPE": 0, "LEVELS": "0-2"},
                     "packages")
    add_export_child(model, "to_v2", Source.fromChildOutput("to_tpk", "OUTPUT_CACHE_PATH"),
                     {"EXPORT_CACHE_TYPE": 0, "STORAGE_FORMAT_TYPE": 1}, "datasets")
    model.updateDestinationParameters()
    assert model.validateChildAlgorithm("to_v2")[0]
    assert "to_tpk" in model.dependsOnChildAlgorithms("to_v2")
    results = processing.run(model, {"input_cache": str(folder),
                                     "to_tpk:packages": str(tmp_path / "pk"),
                                     "to_v2:datasets": str(tmp_path / "ds")})
    package = tmp_path / "pk" / "demo.tpk"
    assert results["CHILD_RESULTS"]["to_tpk"]["OUTPUT_CACHE_PATH"] == str(package)
    assert results["CHILD_INPUTS"]["to_v2"]["INPUT_SERVICE"] == str(package)
    dataset = tmp_path / "ds" / "demo" / "Layers"
    assert Path(results["CHILD_RESULTS"]["to_v2"]["OUTPUT_CACHE_PATH"]) == dataset
    expected = {k: v for k, v in tiles.items() if k[0] <= 2}
    assert read_all_tiles(package) == expected
    assert read_all_tiles(dataset) == expected
    assert "esriMapCacheStorageModeCompactV2<" in (dataset / "conf.xml").read_text("utf-8")
    assert results["CHILD_RESULTS"]["to_v2"]["TILE_COUNT"] == len(expected) == 21


# --- qgis_process ---------------------------------------------------------------------------


def expected_cli_tiles(tiles: dict) -> dict:
    """Tiles of levels 0-3 overlapping lon -20..30, lat 40..60 (spec §8.2; EPSG:3857 from its
    spherical Mercator definition)."""

    def mercator(lon: float, lat: float) -> tuple[float, float]:
        return (6378137.0 * math.radians(lon),
                6378137.0 * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)))

    xmin, ymin = mercator(-20.0, 40.0)
    xmax, ymax = mercator(30.0, 60.0)
    chosen = {}
    for (level, row, col), data in tiles.items():
        span = LEVEL0_RES / 2**level * 256
        tile_xmin, tile_ymax = -ORIGIN + col * span, ORIGIN - row * span
        tol = span / 256 / 100
        if (min(tile_xmin + span, xmax) - max(tile_xmin, xmin) > tol
                and min(tile_ymax, ymax) - max(tile_ymax - span, ymin) > tol):
            chosen[(level, row, col)] = data
    return chosen


def test_qgis_process_json_run(run_qgis_process, source_cache, tmp_path):
    folder, tiles = source_cache
    target = tmp_path / "cli"
    completed = run_qgis_process([
        "--json", "run", ALG, "--",
        f"INPUT_SERVICE={folder}", f"TARGET_CACHE_PATH={target}", "EXPORT_CACHE_TYPE=1",
        "STORAGE_FORMAT_TYPE=1", "LEVELS=0-3", "EXPORT_EXTENT=-20,40,30,60 [EPSG:4326]",
    ])
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    package = target / "demo.tpkx"
    expected = expected_cli_tiles(tiles)
    assert document["results"]["OUTPUT_CACHE_PATH"] == str(package)
    assert document["results"]["TILE_COUNT"] == len(expected)
    assert {k[0] for k in expected} == {0, 1, 2, 3}
    assert document["algorithm_details"]["id"] == ALG
    assert document["inputs"]["LEVELS"] == "0-3"
    assert read_all_tiles(package) == expected
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        assert {"iteminfo.json", "root.json", "thumbnail.png"} <= names
        root = json.loads(archive.read("root.json"))
        assert root["tileInfo"]["rows"] == 256
    assert sorted(p.name for p in target.iterdir()) == ["demo.tpkx"]


def test_qgis_process_failing_run_is_clean(run_qgis_process, source_cache, tmp_path):
    """Bad LEVELS: rc 1, nothing on stdout, the engine's message on stderr, no traceback."""
    folder, _ = source_cache
    target = tmp_path / "cli"
    completed = run_qgis_process([
        "--json", "run", ALG, "--",
        f"INPUT_SERVICE={folder}", f"TARGET_CACHE_PATH={target}", "EXPORT_CACHE_TYPE=1",
        "STORAGE_FORMAT_TYPE=1", "LEVELS=a-b",
    ])
    assert completed.returncode == 1
    assert completed.stdout.strip() == ""
    assert "LEVELS: 'a-b' is not a level or a range like 0-5" in completed.stderr
    assert "Valid levels: 0-11" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not target.exists() or not any(target.iterdir())
