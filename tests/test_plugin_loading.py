"""The plugin loads like QGIS loads it: qgis_process, the desktop GUI, a ZIP and `make install`."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from qgis.core import QgsApplication

PLUGIN_NAME = "export_map_server_cache"
PROVIDER_ID = "mapservercache"
ALGORITHM_ID = "mapservercache:exportmapservercache"
REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_PLUGINS_DIR = REPO_ROOT / "build" / "plugins"

EXPECTED_PARAMETERS = [
    "INPUT_SERVICE",
    "TARGET_CACHE_PATH",
    "EXPORT_CACHE_TYPE",
    "COPY_DATA_FROM_SERVER",
    "STORAGE_FORMAT_TYPE",
    "SCALES",
    "LEVELS",
    "NUM_OF_CACHING_SERVICE_INSTANCES",
    "AREA_OF_INTEREST",
    "EXPORT_EXTENT",
    "OVERWRITE",
    "AUTHCFG",
    "TOKEN",
    "MAX_REQUESTS_PER_SECOND",
    "MAX_TILE_COUNT",
    "ESTIMATE_ONLY",
    "DISABLE_CLIPPING",
    "TILE_FORMAT",
    "COMPRESSION_QUALITY",
    "OPTIMIZE_TILES_FOR_SIZE",
    "BACKGROUND_COLOR",
    "LOAD_RESULT",
    "EXPORT_METHOD",
    "RESOLUTIONS",
    "FAIL_ON_DAMAGED_TILES",
    "MAX_TILE_SIZE_MB",
]


def _registry():
    return QgsApplication.processingRegistry()


@pytest.fixture
def clean_registry():
    """The plugin tests start, like QGIS, without our provider, and must leave none behind."""
    assert _registry().providerById(PROVIDER_ID) is None, "provider registered before the test"
    yield
    leftover = _registry().providerById(PROVIDER_ID)
    if leftover is not None:  # do not poison later tests, but fail this one
        _registry().removeProvider(PROVIDER_ID)
        pytest.fail("the plugin left its Processing provider registered after unload()")


def test_qgis_process_style_start_and_unload(qgis_processing, clean_registry, monkeypatch):
    """What qgis_process does: classFactory(None) + initProcessing(), never initGui()."""
    import qgis.utils

    # pytest-qgis patches qgis.utils.iface with its stub; qgis_process passes None.
    monkeypatch.setattr(qgis.utils, "iface", None)
    monkeypatch.setattr(qgis.utils, "plugin_paths", [str(BUILD_PLUGINS_DIR)])
    qgis.utils.updateAvailablePlugins()
    assert PLUGIN_NAME in qgis.utils.available_plugins
    metadata = qgis.utils.plugins_metadata_parser[PLUGIN_NAME]
    assert metadata.get("general", "hasProcessingProvider") == "yes"

    assert qgis.utils.loadPlugin(PLUGIN_NAME), "import export_map_server_cache failed"
    started = qgis.utils.startProcessingPlugin(PLUGIN_NAME)
    try:
        assert started, "startProcessingPlugin() failed (classFactory/initProcessing raised)"
        plugin = qgis.utils.plugins[PLUGIN_NAME]
        assert plugin.iface is None
        provider = _registry().providerById(PROVIDER_ID)
        assert provider is not None
        assert [a.id() for a in provider.algorithms()] == [ALGORITHM_ID]
        assert _registry().algorithmById(ALGORITHM_ID) is not None
    finally:
        # qgis.utils.unloadPlugin() expects the GUI start path in 3.22: unload directly.
        plugin = qgis.utils.plugins.pop(PLUGIN_NAME, None)
        if PLUGIN_NAME in qgis.utils.active_plugins:
            qgis.utils.active_plugins.remove(PLUGIN_NAME)
        if plugin is not None:
            plugin.unload()
    assert _registry().providerById(PROVIDER_ID) is None
    assert _registry().algorithmById(ALGORITHM_ID) is None


class _WebMenuIface:
    """Adds the Web menu/toolbar calls that pytest-qgis 2.1.0's QgisInterface stub lacks."""

    def __init__(self, iface):
        self.iface = iface
        self.menus = {}
        self.toolbar = iface.addToolBar("Web")

    def addPluginToWebMenu(self, name, action):  # noqa: N802 (QGIS API)
        menu = self.menus.get(name)
        if menu is None:
            menu = self.menus[name] = self.iface.mainWindow().menuBar().addMenu(name)
        menu.addAction(action)

    def removePluginWebMenu(self, name, action):  # noqa: N802 (QGIS API)
        menu = self.menus.get(name)
        if menu is not None:
            menu.removeAction(action)

    def addWebToolBarIcon(self, action):  # noqa: N802 (QGIS API)
        self.toolbar.addAction(action)

    def removeWebToolBarIcon(self, action):  # noqa: N802 (QGIS API)
        self.toolbar.removeAction(action)


def test_init_gui_adds_action_and_unload_removes_it(
    qgis_processing, dialog_iface, clean_registry, monkeypatch
):
    """README: "Open it from **Web > Export Map Server Cache > Export Map Server Cache…** (or
    its Web toolbar button)": the menu's action opens the algorithm's Processing dialog."""
    from export_map_server_cache import classFactory

    qgis_iface = dialog_iface

    web = _WebMenuIface(qgis_iface)
    for name in ("addPluginToWebMenu", "removePluginWebMenu", "addWebToolBarIcon",
                 "removeWebToolBarIcon"):
        monkeypatch.setattr(qgis_iface, name, getattr(web, name), raising=False)

    plugin = classFactory(qgis_iface)
    try:
        plugin.initGui()
        assert _registry().providerById(PROVIDER_ID) is not None, "initGui must initProcessing"
        action = plugin.action
        assert action is not None
        assert action.text() == "Export Map Server Cache\u2026"
        assert not action.icon().isNull()
        menu_actions = [a for m in web.menus.values() for a in m.actions()]
        assert action in menu_actions
        assert action in web.toolbar.actions()
        assert _dialog_opened_by(menu_actions[menu_actions.index(action)]) == ALGORITHM_ID
    finally:
        plugin.unload()
    assert plugin.action is None
    assert not [a for m in web.menus.values() for a in m.actions()]
    assert not web.toolbar.actions()
    assert _registry().providerById(PROVIDER_ID) is None


def _dialog_opened_by(action) -> str:
    """Trigger the action and return the id of the algorithm whose Processing dialog it opened
    (read, then closed, from inside the dialog's modal loop); "" when none opened."""
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication, QDialog

    opened = []

    def shown() -> list:
        return [widget for widget in QApplication.topLevelWidgets()
                if isinstance(widget, QDialog) and widget.isVisible()]

    def look(tries: int = 100) -> None:
        dialogs = shown()
        if not dialogs:
            if tries:  # not shown yet (or never: then action.trigger() has returned)
                QTimer.singleShot(100, lambda: look(tries - 1))
            return
        for dialog in dialogs:
            algorithm = getattr(dialog, "algorithm", None)
            opened.append(algorithm().id() if algorithm is not None else repr(dialog))
            dialog.reject()

    def close_any() -> None:  # a dialog look() could not close must not hang the suite
        for dialog in shown():
            dialog.reject()

    QTimer.singleShot(200, look)
    QTimer.singleShot(20_000, close_any)
    action.trigger()
    return opened[0] if opened else ""


def _qgis_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    start = result.stdout.find("{")
    assert start >= 0, f"no JSON on stdout:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout[start:])


def _listed_algorithm_ids(listing: dict) -> set:
    return {
        alg_id
        for provider in listing.get("providers", {}).values()
        for alg_id in provider.get("algorithms", {})
    }


def test_qgis_process_lists_the_algorithm(run_qgis_process):
    listing = _qgis_json(run_qgis_process(["--json", "list"]))
    assert ALGORITHM_ID in _listed_algorithm_ids(listing)


def _plain_help_sections(text: str) -> dict:
    """``qgis_process.bin help`` text -> {"Arguments": [names...], "Outputs": [names...]}.

    The JSON help is a map sorted by name, so only the text form shows the declaration order.
    """
    sections, current, lines = {}, None, text.splitlines()
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and line.startswith("---") and lines[i + 1].strip():
            current = lines[i + 1].strip()
            sections.setdefault(current, [])
            continue
        match = re.match(r"^([A-Z][A-Z0-9_]*): ", line)
        if match and current is not None:
            sections[current].append(match.group(1))
    return sections


def test_qgis_process_help_parameters_and_outputs(run_qgis_process):
    details = _qgis_json(run_qgis_process(["--json", "help", ALGORITHM_ID]))
    assert set(details["parameters"]) == set(EXPECTED_PARAMETERS)
    assert {"OUTPUT_CACHE_PATH", "TILE_COUNT"} <= set(details["outputs"])

    plain = run_qgis_process(["help", ALGORITHM_ID])
    assert plain.returncode == 0, plain.stdout + plain.stderr
    sections = _plain_help_sections(plain.stdout)
    assert sections.get("Arguments") == EXPECTED_PARAMETERS, sections
    assert {"OUTPUT_CACHE_PATH", "TILE_COUNT"} <= set(sections.get("Outputs", [])), sections


def _make(target: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), target],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_package_builds_an_installable_zip():
    result = _make("package", dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "metadata.txt", encoding="utf-8")
    version = parser.get("general", "version")
    archive = REPO_ROOT / "dist" / f"{PLUGIN_NAME}-{version}.zip"
    assert archive.is_file()
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
    assert names
    assert {n.split("/", 1)[0] for n in names} == {PLUGIN_NAME}
    inner = {n.split("/", 1)[1] for n in names}
    for required in ("metadata.txt", "__init__.py", "plugin.py", "LICENSE", "icon.png",
                     "processing_provider/provider.py"):
        assert required in inner
    forbidden_top = {"tests", "sample", "bench", "scripts", ".ci", "Makefile", "build", "dist"}
    assert not {p.split("/", 1)[0] for p in inner} & forbidden_top
    assert not [p for p in inner if any(part.startswith(".") for part in p.split("/"))]
    assert not [p for p in inner if "__pycache__" in p or p.endswith(".pyc")]


def test_make_install_enables_the_plugin_for_qgis_process(tmp_path, qgis_process_env):
    env = qgis_process_env(tmp_path, enable_plugin=False)
    env.pop("QGIS_PLUGINPATH")  # the plugin must come from the profile only
    config = Path(env["QGIS_CUSTOM_CONFIG_PATH"])
    ini = config / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.write_text("[General]\nsomeKey=keep me\n", encoding="utf-8")

    result = _make("install", env)
    assert result.returncode == 0, result.stdout + result.stderr
    link = config / "profiles" / "default" / "python" / "plugins" / PLUGIN_NAME
    assert link.is_symlink() and link.resolve() == REPO_ROOT
    settings = configparser.RawConfigParser(strict=False)
    settings.optionxform = str
    settings.read(ini, encoding="utf-8")
    assert settings.get("PythonPlugins", PLUGIN_NAME) == "true"
    assert settings.get("General", "someKey") == "keep me"

    listing = subprocess.run(
        ["qgis_process.bin", "--json", "list"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ALGORITHM_ID in _listed_algorithm_ids(_qgis_json(listing))
