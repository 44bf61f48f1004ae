"""A static check that the plugin's Python runs on QGIS 4 (Qt 6, PyQt6) as well as on QGIS 3.22.

QGIS 4 cannot run here, so the plugin's sources are read (AST) and every name they take from Qt or
QGIS is looked up:

* Qt: each `qgis.PyQt` import and each attribute chain on it (`Qt.ItemDataRole.UserRole`,
  `QNetworkRequest.Attribute.HttpStatusCodeAttribute`) must exist in PyQt6, asked in a process of
  its own (tests/pyqt6_names.py). PyQt6 has only scoped enums, so `Qt.UserRole` is missing there.
  An enum member read from an instance (`self.palette().Disabled`) is reported as well: PyQt6
  instances have no enum members.
* No `PyQt5`/`PyQt6` import (only `qgis.PyQt` follows the QGIS build) and no `exec_`.
* QGIS: each chain must exist in the running QGIS 3.22 (the oldest supported), name every enum
  member through its enum (`Class.Enum.Member`: QGIS 4's PyQt6 bindings scope them all), and use
  none of the 3.22 enums that QGIS moved into `Qgis` and QGIS 4 no longer has (MOVED_ENUMS).
  The compatibility module (qgis_compat.py) alone may name the moved enums and the `Qgis`
  enums that 3.22 lacks: it picks one of the two by version.
* core/ imports neither QGIS nor Qt.
"""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPAT_MODULE = "qgis_compat.py"
# what `make package` leaves out of the plugin: the rest is what QGIS loads
NOT_SHIPPED = {"tests", "bench", "scripts", "sample", "docs", "build", "dist"}
QGIS_MODULES = ("qgis.core", "qgis.gui", "qgis.analysis", "processing")
# QGIS's Qt 6 qgis.PyQt.QtWidgets also offers these three, which Qt 6 moved to QtGui, so that
# one import serves both lines (QGIS pull requests 55658 and 57467).
QT_WIDGETS_FROM_GUI = {"QAction", "QActionGroup", "QShortcut"}
# QGIS 3.22 enums (sip qualified names) that QGIS moved into Qgis; QGIS 4 has only the new ones.
MOVED_ENUMS = {
    "QgsWkbTypes.Type": "Qgis.WkbType (3.30)",
    "QgsWkbTypes.GeometryType": "Qgis.GeometryType (3.30)",
    "QgsMapLayerType": "Qgis.LayerType (3.30)",
    "QgsProcessingModelChildParameterSource.Source":
        "Qgis.ProcessingModelChildParameterSource (3.34)",
    "QgsProcessing.SourceType": "Qgis.ProcessingSourceType (3.36)",
    "QgsProcessingParameterNumber.Type": "Qgis.ProcessingNumberParameterType (3.36)",
    "QgsProcessingParameterDefinition.Flag": "Qgis.ProcessingParameterFlag (3.36)",
    "QgsProcessingAlgorithm.Flag": "Qgis.ProcessingAlgorithmFlag (3.36)",
    "QgsProcessingProvider.Flag": "Qgis.ProcessingProviderFlag (3.36)",
    "QgsProcessingParameterField.DataType": "Qgis.ProcessingFieldParameterDataType (3.36)",
    "QgsProcessingParameterFile.Behavior": "Qgis.ProcessingFileParameterBehavior (3.36)",
    "QgsProcessingParameterDateTime.Type": "Qgis.ProcessingDateTimeParameterDataType (3.36)",
}


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.kind}] {self.message}"


@dataclass(frozen=True)
class Binding:
    """What a name of a module stands for: a Qt or QGIS module, or a dotted path in one."""
    family: str  # "qt" or "qgis"
    module: str  # "QtCore" (as in PyQt6.QtCore) or "qgis.core"
    path: tuple[str, ...] = ()


@dataclass
class Reference:
    binding: Binding
    chain: tuple[str, ...]  # attributes read after the bound name
    line: int

    @property
    def path(self) -> tuple[str, ...]:
        return self.binding.path + self.chain


@dataclass
class ModuleScan:
    path: str
    references: list[Reference] = field(default_factory=list)
    instance_attributes: list[tuple[str, int]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def is_compat(self) -> bool:
        return self.path == COMPAT_MODULE

    @property
    def is_core(self) -> bool:
        return self.path.startswith("core/")


@dataclass
class Report:
    findings: list[Finding]
    files: list[str]
    qt_names: int  # Qt names looked up in PyQt6
    qgis_names: int  # QGIS names looked up in QGIS 3.22
    pyqt_version: str


def plugin_sources(root: Path = REPO_ROOT) -> dict[str, str]:
    """The plugin's Python files (as `make package` ships them), by path relative to root."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in NOT_SHIPPED or any(part.startswith(".") for part in parts):
            continue
        sources["/".join(parts)] = path.read_text(encoding="utf-8")
    return sources


def check_sources(sources: dict[str, str]) -> Report:
    scans = [_scan(path, text) for path, text in sources.items()]
    qt = _ask_pyqt6(scans)
    findings = [finding for scan in scans for finding in scan.findings]
    qgis_names = 0
    for scan in scans:
        for reference in scan.references:
            if reference.binding.family == "qt":
                dotted = ".".join(reference.path)
                missing = qt.missing.get((reference.binding.module, dotted))
                if missing is not None:
                    hint = f": write {missing}" if missing else ""
                    findings.append(Finding(
                        scan.path, reference.line, "qt6-missing",
                        f"PyQt6.{reference.binding.module} has no {dotted or 'such module'}"
                        f"{hint}"))
            else:
                qgis_names += 1
                findings.extend(_check_qgis(scan, reference))
        for name, line in scan.instance_attributes:
            if name in qt.enum_members:
                findings.append(Finding(
                    scan.path, line, "qt6-instance-enum",
                    f"enum member {name} read from an instance: PyQt6 has it only on its enum "
                    "class (e.g. QPalette.ColorRole.Text)"))
    return Report(sorted(findings), sorted(sources), len(qt.asked), qgis_names, qt.version)


# -- reading one module ---------------------------------------------------------------------------

def _scan(path: str, text: str) -> ModuleScan:
    scan = ModuleScan(path)
    tree = ast.parse(text, filename=path)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    bindings: dict[str, Binding] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            _bind_import(scan, node, bindings)
    _bind_aliases(tree, bindings)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr == "exec_":
                scan.findings.append(Finding(path, node.lineno, "exec_",
                                             "exec_() is gone in PyQt6: call exec()"))
            if isinstance(node.value, ast.Call) and node.attr[:1].isupper():
                scan.instance_attributes.append((node.attr, node.lineno))
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.value is node:
                continue  # not the whole chain
            chain = _chain(node)
            if chain and chain[0] in bindings:
                scan.references.append(Reference(bindings[chain[0]], chain[1:], node.lineno))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "exec_":
            scan.findings.append(Finding(path, node.lineno, "exec_",
                                         "a method named exec_: PyQt6 calls exec()"))
    return scan


def _bind_import(scan: ModuleScan, node, bindings: dict[str, Binding]) -> None:
    modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
               else [node.module or ""])
    for module in modules:
        if module.split(".")[0] in ("PyQt5", "PyQt6", "sip"):
            scan.findings.append(Finding(
                scan.path, node.lineno, "pyqt-import",
                f"import of {module}: import Qt through qgis.PyQt, which follows the QGIS build"))
        if scan.is_core and module.split(".")[0] in ("qgis", "processing", "PyQt5", "PyQt6"):
            scan.findings.append(Finding(scan.path, node.lineno, "core-imports-qgis",
                                         f"core/ imports {module}: the engine is plain Python"))
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "processing" or alias.name.startswith("processing."):
                bindings[alias.asname or "processing"] = Binding(
                    "qgis", alias.name if alias.asname else "processing")
        return
    if node.level or node.module is None:
        return
    for alias in node.names:
        binding = _binding_for(node.module, alias.name)
        if binding is None:
            continue
        bindings[alias.asname or alias.name] = binding
        scan.references.append(Reference(binding, (), node.lineno))  # the import itself


def _binding_for(module: str, name: str) -> Optional[Binding]:
    if module == "qgis.PyQt":
        return Binding("qt", name)
    if module.startswith("qgis.PyQt."):
        qt_module = module.split(".")[2]
        if qt_module == "QtWidgets" and name in QT_WIDGETS_FROM_GUI:
            qt_module = "QtGui"
        return Binding("qt", qt_module, (name,))
    if module in QGIS_MODULES or module.startswith("processing."):
        return Binding("qgis", module, (name,))
    return None


def _bind_aliases(tree: ast.AST, bindings: dict[str, Binding]) -> None:
    """`Source = QgsProcessingModelChildParameterSource` makes `Source.X` a QGIS name too."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            chain = _chain(node.value)
            if chain and chain[0] in bindings and node.targets[0].id not in bindings:
                root = bindings[chain[0]]
                bindings[node.targets[0].id] = Binding(root.family, root.module,
                                                       root.path + chain[1:])


def _chain(node: ast.AST) -> tuple[str, ...]:
    """("Qt", "ItemDataRole", "UserRole") for Qt.ItemDataRole.UserRole; () unless a name with
    attributes only."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ()
    return (node.id, *reversed(parts))


# -- Qt: PyQt6 in a process of its own ------------------------------------------------------------

@dataclass
class _PyQt6Answer:
    asked: set[tuple[str, str]]
    missing: dict[tuple[str, str], str]  # (module, path) -> its scoped spelling in PyQt6, or ""
    enum_members: set[str]
    version: str


def _ask_pyqt6(scans: list[ModuleScan]) -> _PyQt6Answer:
    asked = {(reference.binding.module, ".".join(reference.path))
             for scan in scans for reference in scan.references
             if reference.binding.family == "qt"}
    names = sorted({name for scan in scans for name, _ in scan.instance_attributes})
    query = json.dumps({"paths": sorted(asked), "names": names})
    done = subprocess.run(
        [sys.executable, "-I", str(Path(__file__).with_name("pyqt6_names.py"))],
        input=query, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"PyQt6 could not be asked (is it installed from "
                           f"requirements-test.txt?):\n{done.stderr}")
    answer = json.loads(done.stdout)
    return _PyQt6Answer(asked, {(module, path): hint for module, path, hint in answer["missing"]},
                        set(answer["enum_members"]), f"{answer['pyqt']} (Qt {answer['qt']})")


# -- QGIS: the running QGIS 3.22 ------------------------------------------------------------------

def _check_qgis(scan: ModuleScan, reference: Reference) -> list[Finding]:
    dotted = ".".join(reference.path)

    def finding(kind: str, message: str) -> Finding:
        return Finding(scan.path, reference.line, kind, message)

    value = importlib.import_module(reference.binding.module)
    owner = None
    found = []
    for part in reference.path:
        if not hasattr(value, part):
            if scan.is_compat:
                return found  # the QGIS >= 3.30 branch of the compatibility module
            return found + [finding(
                "qgis-not-in-3.22",
                f"{dotted} does not exist in QGIS 3.22: take it from {COMPAT_MODULE}")]
        owner, value = value, getattr(value, part)
        enum_type = _enum_type_of(value)
        # a class's member (a module's constant, e.g. processing's DIALOG_BATCH, is QGIS's own)
        if enum_type is not None and isinstance(owner, type) and owner is not enum_type:
            found.append(finding(
                "qgis-unscoped-enum",
                f"{dotted}: QGIS 4 knows enum members only through their enum "
                f"({enum_type.__qualname__}.{part})"))
        moved = _moved(value)
        if moved and not scan.is_compat:
            found.append(finding(
                "qgis-moved-enum",
                f"{dotted}: QGIS 4 has only {moved}: take it from {COMPAT_MODULE}"))
            break
    return found


def _enum_type_of(value) -> Optional[type]:
    """The sip enum class of a QGIS 3.22 enum member, else None."""
    cls = type(value)
    return cls if type(cls).__name__ == "enumtype" else None


def _moved(value) -> Optional[str]:
    enum_type = value if type(value).__name__ == "enumtype" else _enum_type_of(value)
    return MOVED_ENUMS.get(enum_type.__qualname__) if enum_type is not None else None
