"""An ArcGIS token leaves the plugin only in the request header, whichever way it is given
(TOKEN, TOKEN=env:NAME, `token=` in INPUT_SERVICE, an EsriToken authentication configuration):
every channel a user, a log or a file could show is grepped for it, in successful and failing
runs, through processing.run, the Toolbox dialog and qgis_process.
"""
from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from recording import recording_feedback  # noqa: E402
from test_dialog import pump  # noqa: E402
from test_http_export import SAMPLE  # noqa: E402

pytestmark = pytest.mark.usefixtures("plugin_provider")

ALG = "mapservercache:exportmapservercache"
SECRET = "tok-5ecr3t-d41d8cd98f"
ENV_NAME = "EXPORT_TEST_SECRET_TOKEN"
WAYS = ("TOKEN", "env", "url", "authcfg")


@pytest.fixture(autouse=True)
def token_in_env(monkeypatch):
    """Set before run_qgis_process copies the environment."""
    monkeypatch.setenv(ENV_NAME, SECRET)


@pytest.fixture
def give_token(make_authcfg):
    """give_token(way, service_url) -> the parameters that give SECRET that way."""

    def parameters(way: str, url: str) -> dict:
        token = SECRET
        if way == "TOKEN":
            return {"INPUT_SERVICE": url, "TOKEN": token}
        if way == "env":
            return {"INPUT_SERVICE": url, "TOKEN": f"env:{ENV_NAME}"}
        if way == "url":
            return {"INPUT_SERVICE": f"{url}?f=json&token={token}"}
        assert way == "authcfg"
        return {"INPUT_SERVICE": url, "AUTHCFG": make_authcfg("EsriToken", token=token)}

    return parameters


@pytest.fixture
def network_log():
    """URLs of the requests that reach the main thread's network manager during the test,
    where QGIS's Network Logger panel listens (the export's pool threads pass theirs on no
    more; whatever a change lets through again must not carry the token)."""
    from qgis.core import QgsNetworkAccessManager, QgsNetworkRequestParameters

    urls: list[str] = []

    def record(parameters):
        urls.append(parameters.request().url().toString())

    signal = QgsNetworkAccessManager.instance().requestAboutToBeCreated[
        QgsNetworkRequestParameters]
    signal.connect(record)
    yield urls
    signal.disconnect(record)


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch) -> Path:
    """Python's temporary files of the run go here, where they can be looked at after it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def run(parameters: dict, feedback) -> dict:
    import processing

    full = {"EXPORT_CACHE_TYPE": 1, "STORAGE_FORMAT_TYPE": 1, "LEVELS": "0-2",
            "LOAD_RESULT": False, **parameters}
    return processing.run(ALG, full, feedback=feedback)


def failure(parameters: dict, feedback) -> str:
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException) as info:
        run(parameters, feedback)
    return str(info.value)


def files_holding(secret: str, *folders: Path) -> list[str]:
    """Files under `folders` (zip members read too) whose bytes contain `secret`."""
    found = []
    for folder in folders:
        for path in (p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    data += b"".join(archive.read(info) for info in archive.infolist())
            if secret.encode() in data:
                found.append(str(path))
    return found


def shown_values(parameters: dict) -> str:
    """Everything QGIS derives from the parameters to show or store them: the Python command
    (history, "Copy as Python command"), each value as the 3.22 dialog logs it, and (QGIS 3.24
    and later) as the dialog, the history's JSON and qgis_process command line show it."""
    from qgis.core import QgsApplication, QgsProcessingContext

    algorithm = QgsApplication.processingRegistry().algorithmById(ALG)
    context = QgsProcessingContext()
    shown = [algorithm.asPythonCommand(parameters, context)]
    for name, value in parameters.items():
        definition = algorithm.parameterDefinition(name)
        shown.append(definition.valueAsPythonString(value, context))
        for method in ("valueAsString", "valueAsJsonObject"):
            if hasattr(type(definition), method) and hasattr(definition, "shown"):
                shown.append(str(getattr(definition, method)(value, context)))
    return "\n".join(shown)


def assert_sent_as_header_only(server, secret: str = SECRET) -> None:
    entries = server.log.entries()
    assert entries
    assert {e.headers.get("x-esri-authorization", "").strip() for e in entries} == {
        f"Bearer {secret}"}
    assert not [e for e in entries if secret in e.path or secret in json.dumps(e.query)]


@pytest.mark.parametrize("way", WAYS)
def test_an_export_shows_the_token_nowhere(way, serve, give_token, message_log, network_log,
                                           private_tempdir, tmp_path):
    from qgis.core import QgsApplication

    server = serve({"world": SAMPLE}, token=SECRET)
    parameters = {**give_token(way, server.service_url("world")),
                  "TARGET_CACHE_PATH": str(tmp_path / "out")}
    feedback = recording_feedback()
    result = run(parameters, feedback)
    assert result["TILE_COUNT"] == 21
    assert_sent_as_header_only(server)

    assert "Service: MapServer at http://127.0.0.1" in feedback.text  # the recorder works
    assert SECRET not in feedback.text
    assert SECRET not in feedback.textLog() + feedback.htmlLog()
    assert SECRET not in message_log.text
    QgsApplication.processEvents()
    assert not [url for url in network_log if SECRET in url]
    assert SECRET not in repr(result)
    assert SECRET not in shown_values(parameters)
    settings = Path(QgsApplication.qgisSettingsDirPath())
    assert files_holding(SECRET, tmp_path, settings) == []


@pytest.mark.parametrize("way", WAYS)
def test_failures_show_the_token_nowhere(way, serve, give_token, message_log, network_log,
                                         tmp_path):
    from qgis.core import QgsApplication

    failing = serve({"world": SAMPLE}, token=SECRET, fault="503", fault_fraction=0.1,
                    fault_attempts=1000)
    feedback = recording_feedback()
    message = failure({**give_token(way, failing.service_url("world")),
                       "TARGET_CACHE_PATH": str(tmp_path / "a")}, feedback)
    assert "could not be downloaded" in message and "HTTP 503" in message
    assert_sent_as_header_only(failing)

    other = serve({"world": SAMPLE}, token="another-token")
    message += failure({**give_token(way, other.service_url("world")),
                        "TARGET_CACHE_PATH": str(tmp_path / "b")}, feedback)
    assert "refused access (498" in message
    assert_sent_as_header_only(other)

    QgsApplication.processEvents()
    for text in (message, feedback.text, message_log.text, "\n".join(network_log)):
        assert SECRET not in text
    assert files_holding(SECRET, tmp_path) == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/arcgis/rest/services?token={}",  # not a service
    "http://127.0.0.1:9/arcgis/rest/services/x/MapServer?token={}",  # nobody answers
    "ftp://127.0.0.1/arcgis/rest/services/x/MapServer?token={}",  # not http(s)
])
def test_messages_about_a_bad_url_keep_its_token_out(url, message_log, tmp_path):
    feedback = recording_feedback()
    message = failure({"INPUT_SERVICE": url.format(SECRET),
                       "TARGET_CACHE_PATH": str(tmp_path / "out")}, feedback)
    assert message
    for text in (message, feedback.text, message_log.text):
        assert SECRET not in text


@pytest.mark.parametrize("value,shown", [
    ("https://h/arcgis/rest/services/A/MapServer?token=S1", "MapServer?token=********"),
    ("https://h/arcgis/rest/services/A/MapServer?f=json&TOKEN=S1&x=1",
     "?f=json&TOKEN=********&x=1"),
    ("https://h/arcgis/rest/services/A/MapServer?%74oken=S1#S", "?%74oken=********#S"),
    ("/data/cache.tpkx", "/data/cache.tpkx"),
])
def test_the_service_input_is_shown_with_its_token_masked(value, shown):
    from qgis.core import QgsApplication, QgsProcessingContext

    algorithm = QgsApplication.processingRegistry().algorithmById(ALG)
    context = QgsProcessingContext()
    command = algorithm.asPythonCommand({"INPUT_SERVICE": value}, context)
    assert shown in command and "S1" not in command
    clone = algorithm.parameterDefinition("INPUT_SERVICE").clone()
    assert shown in clone.valueAsPythonString(value, context)
    assert clone.metadata() == algorithm.parameterDefinition("INPUT_SERVICE").metadata()


def test_token_env_names_its_variable_and_hides_a_literal_token():
    from qgis.core import QgsApplication, QgsProcessingContext

    algorithm = QgsApplication.processingRegistry().algorithmById(ALG)
    context = QgsProcessingContext()
    assert "'TOKEN':'env:ARCGIS_TOKEN'" in algorithm.asPythonCommand(
        {"INPUT_SERVICE": "x", "TOKEN": "env:ARCGIS_TOKEN"}, context)
    command = algorithm.asPythonCommand({"INPUT_SERVICE": "x", "TOKEN": SECRET}, context)
    assert SECRET not in command and "'TOKEN':'********'" in command


@pytest.mark.parametrize("way", WAYS)
def test_the_toolbox_dialog_log_and_history_show_no_token(way, serve, give_token, message_log,
                                                          dialog_iface, tmp_path):
    """The real Processing dialog: its log (the input parameters it lists, the run's lines)
    and the history it appends to (processing.log in the profile)."""
    from processing.core.ProcessingLog import ProcessingLog
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsApplication, QgsProcessingContext
    from qgis.PyQt.QtWidgets import QTextEdit

    server = serve({"world": SAMPLE}, token=SECRET)
    parameters = {**give_token(way, server.service_url("world")), "LEVELS": "0-2",
                  "EXPORT_CACHE_TYPE": 1, "TARGET_CACHE_PATH": str(tmp_path / "out"),
                  "LOAD_RESULT": False}
    history_file = Path(ProcessingLog.logFilename())
    history_before = len(history_file.read_text("utf-8").splitlines())
    dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById(ALG))
    finished = []
    dialog.algorithmFinished.connect(lambda ok, results: finished.append(ok))
    try:
        wrappers = dialog.mainWidget().wrappers
        for name, value in parameters.items():
            wrappers[name].setParameterValue(value, QgsProcessingContext())
        dialog.runAlgorithm()
        assert pump(60, lambda: bool(finished)), "the dialog's run did not finish"
        log = dialog.findChild(QTextEdit, "txtLog").toPlainText()
    finally:
        dialog.close()
        dialog.deleteLater()
    assert finished == [True], log
    assert_sent_as_header_only(server)
    assert "Input parameters:" in log and "'LEVELS' : '0-2'" in log
    assert "Exported 21 tiles" in log
    assert SECRET not in log
    added = history_file.read_text("utf-8").splitlines()[history_before:]
    assert len(added) == 1 and "mapservercache:exportmapservercache" in added[0]
    assert SECRET not in added[0]
    assert SECRET not in message_log.text


@pytest.mark.parametrize("way", ["TOKEN", "env", "url"])
def test_qgis_process_echoes_only_its_own_arguments(way, serve, give_token, run_qgis_process,
                                                    tmp_path):
    """qgis_process 3.22 repeats its command line (the Inputs of its text output, the JSON's
    "inputs"; hence the README's advice to use TOKEN=env:NAME); nothing else it prints and
    nothing the plugin writes holds the token."""
    server = serve({"world": SAMPLE}, token=SECRET)
    parameters = {**give_token(way, server.service_url("world")), "LEVELS": "0-2",
                  "EXPORT_CACHE_TYPE": 1, "TARGET_CACHE_PATH": str(tmp_path / "text")}
    arguments = [f"{name}={value}" for name, value in parameters.items()]
    done = run_qgis_process(["run", ALG, "--", *arguments])
    assert done.returncode == 0, done.stderr
    assert "Exported 21 tiles" in done.stdout
    echoes = [line for line in done.stdout.splitlines() if SECRET in line]
    assert echoes == ([] if way == "env" else [f"{name}:\t{value}" for name, value
                                                 in parameters.items() if SECRET in str(value)])
    assert SECRET not in done.stderr

    parameters["TARGET_CACHE_PATH"] = str(tmp_path / "out")
    done = run_qgis_process(["--json", "run", ALG, "--",
                             *(f"{name}={value}" for name, value in parameters.items())])
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["results"]["TILE_COUNT"] == 21
    assert Path(answer["results"]["OUTPUT_CACHE_PATH"]).is_file()
    assert_sent_as_header_only(server)
    echoed = json.dumps(answer.pop("inputs"))
    assert (SECRET in echoed) == (way != "env")
    assert "Exported 21 tiles" in json.dumps(answer)  # the run's log is in the JSON
    assert SECRET not in json.dumps(answer) and SECRET not in done.stderr
    assert files_holding(SECRET, tmp_path / "out", tmp_path / "text") == []
