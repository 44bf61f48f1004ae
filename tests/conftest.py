"""Shared pytest setup for the whole suite.

* At import time: ``build/plugins/export_map_server_cache`` is a symlink to the repository root
  and ``build/plugins`` is put on ``sys.path``, so tests ``import export_map_server_cache...``
  whatever the checkout folder is called. QGIS's own ``processing`` package is made importable too.
* pytest-qgis (pinned 2.1.0, see pytest.ini) provides ``qgis_app``, ``qgis_processing``,
  ``qgis_iface``...
* ``plugin_provider``: our Processing provider registered for the session.
* ``run_qgis_process``: run ``qgis_process.bin`` headless with a throw-away profile in which the
  plugin (from ``build/plugins``) is enabled.
* ``fixtures_dir``: the Esri-written reference caches in ``../shared/fixtures/esri-written``.
* ``message_log``: the QGIS message log during one test (tests/recording.py).
* ``make_authcfg``: QGIS authentication configurations stored for one test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_NAME = "export_map_server_cache"
PROVIDER_ID = "mapservercache"
ALGORITHM_ID = "mapservercache:exportmapservercache"

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_PLUGINS_DIR = REPO_ROOT / "build" / "plugins"
QGIS_PYTHON_PLUGINS_DIR = "/usr/share/qgis/python/plugins"
QGIS_PROCESS = os.environ.get("QGIS_PROCESS", "qgis_process.bin")


def _ensure_plugin_symlink() -> Path:
    """Make build/plugins/export_map_server_cache -> repo root (idempotent, race tolerant)."""
    BUILD_PLUGINS_DIR.mkdir(parents=True, exist_ok=True)
    link = BUILD_PLUGINS_DIR / PLUGIN_NAME
    if link.is_symlink() and link.resolve() == REPO_ROOT:
        return link
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise RuntimeError(f"{link} exists and is not a symlink; remove it")
    tmp_link = BUILD_PLUGINS_DIR / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(REPO_ROOT, target_is_directory=True)
    os.replace(tmp_link, link)
    return link


_ensure_plugin_symlink()
if str(BUILD_PLUGINS_DIR) not in sys.path:
    sys.path.insert(0, str(BUILD_PLUGINS_DIR))
if QGIS_PYTHON_PLUGINS_DIR not in sys.path:
    sys.path.append(QGIS_PYTHON_PLUGINS_DIR)  # `import processing`


def pytest_collection_modifyitems(config, items):
    """Run the plugin start/unload tests first.

    They must start from a registry without our provider (as QGIS does), so they run before any
    test has instantiated the session-wide ``plugin_provider`` fixture.
    """
    first = [item for item in items if item.path.name == "test_plugin_loading.py"]
    if first:
        rest = [item for item in items if item.path.name != "test_plugin_loading.py"]
        items[:] = first + rest


@pytest.fixture(scope="session")
def plugin_provider(qgis_processing):
    """Our ``MapServerCacheProvider`` registered in the Processing registry for the session."""
    from qgis.core import QgsApplication

    from export_map_server_cache.processing_provider.provider import MapServerCacheProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById(PROVIDER_ID) is not None:
        pytest.fail(f"a provider '{PROVIDER_ID}' is already registered (left behind by a test?)")
    provider = MapServerCacheProvider()  # keep the Python reference: see qgis-notes section 3
    assert registry.addProvider(provider), "addProvider() refused MapServerCacheProvider"
    yield provider
    if registry.providerById(PROVIDER_ID) is not None:
        registry.removeProvider(PROVIDER_ID)


def _qgis_process_env(base_dir: Path, enable_plugin: bool = True) -> dict:
    """Environment for a headless qgis_process.bin with a throw-away profile under base_dir."""
    xdg = base_dir / "xdg"
    xdg.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = base_dir / "qgis-config"
    ini = config / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    if enable_plugin:
        ini.write_text(f"[PythonPlugins]\n{PLUGIN_NAME}=true\n", encoding="utf-8")
    env = dict(os.environ)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        XDG_RUNTIME_DIR=str(xdg),
        QGIS_CUSTOM_CONFIG_PATH=str(config),
        QGIS_PLUGINPATH=str(BUILD_PLUGINS_DIR),
    )
    return env


@pytest.fixture
def qgis_process_env():
    """Return ``env(base_dir, enable_plugin=True) -> dict``: the environment used by
    ``run_qgis_process`` (throw-away profile under ``base_dir``, plugin found via QGIS_PLUGINPATH).
    """
    return _qgis_process_env


@pytest.fixture
def run_qgis_process(tmp_path_factory):
    """Return ``run(args, timeout=300) -> subprocess.CompletedProcess`` for ``qgis_process.bin``.

    ``args`` are passed as given (e.g. ``["--json", "run", ALGORITHM_ID, "--", "LEVELS=0"]``);
    stdout/stderr are captured as text. The profile is fresh per fixture use.
    """
    base = tmp_path_factory.mktemp("qgis_process")
    env = _qgis_process_env(base)

    def run(args, timeout=300):
        return subprocess.run(
            [QGIS_PROCESS, *[str(a) for a in args]],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(base),
        )

    return run


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``<repo>/../shared/fixtures/esri-written`` (beside the clone in CI). Fails if missing."""
    path = (REPO_ROOT.parent / "shared" / "fixtures" / "esri-written").resolve()
    if not path.is_dir():
        pytest.fail(
            f"Esri reference fixtures not found at {path}: the 'shared' folder must sit beside "
            "the repository (../shared/fixtures/esri-written)",
            pytrace=False,
        )
    return path


@pytest.fixture
def serve():
    """serve({name: cache path or service}, **options) -> a started loopback ArcGIS REST
    server (scripts/arcgis_rest_server.py), stopped after the test."""
    from http_helpers import rest_server_module

    srv = rest_server_module()
    started = []

    def start(services: dict, **options):
        server = srv.ArcGISRestServer(
            {name: path if isinstance(path, srv._Service) else str(path)
             for name, path in services.items()}, srv.ServerOptions(**options))
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def dialog_iface(qgis_iface):
    """pytest-qgis's iface with the browser model Processing's dialogs ask it for."""
    from qgis.gui import QgsBrowserGuiModel

    if not hasattr(qgis_iface, "browserModel"):
        model = QgsBrowserGuiModel()
        qgis_iface.browserModel = lambda: model
    return qgis_iface


@pytest.fixture
def message_log():
    """The QGIS message log's messages during the test (tests/recording.py)."""
    from recording import MessageLogRecorder

    recorder = MessageLogRecorder()
    yield recorder
    recorder.close()


@pytest.fixture
def make_authcfg():
    """make_authcfg(method, **config) -> the id of a QGIS authentication configuration (e.g.
    "Basic" with username and password, "EsriToken" with token), removed after the test."""
    from qgis.core import QgsApplication, QgsAuthMethodConfig

    manager = QgsApplication.authManager()
    if not manager.masterPasswordIsSet():
        assert manager.setMasterPassword("throw-away-profile", True)
    made = []

    def make(method: str, **config) -> str:
        auth = QgsAuthMethodConfig(method)
        auth.setName(f"loopback {method}")
        for key, value in config.items():
            auth.setConfig(key, value)
        assert manager.storeAuthenticationConfig(auth)[0], method
        made.append(auth.id())
        return auth.id()

    yield make
    for config_id in made:
        manager.removeAuthenticationConfig(config_id)
