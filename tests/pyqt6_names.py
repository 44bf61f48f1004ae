"""Looks names up in PyQt6, in a process of its own (QGIS has PyQt5 loaded in the test process).

Reads JSON from stdin: {"paths": [[module, dotted path], ...], "names": [attribute, ...]}
(module as in PyQt6.<module>; an empty path asks for the module itself).
Writes JSON: {"pyqt": version, "qt": version,
"missing": [[module, dotted path, the scoped path it has in PyQt6 or ""], ...],
"enum_members": [those of "names" that name a member of an enum of the widget modules]}.
"""
from __future__ import annotations

import enum
import importlib
import json
import sys

WIDGET_MODULES = ("QtCore", "QtGui", "QtWidgets", "QtNetwork")


def lookup(module, path: str):
    """The object at path, or None."""
    value = module
    for part in filter(None, path.split(".")):
        value = getattr(value, part, None)
    return value


def scoped(module, path: str) -> str:
    """Qt.ItemDataRole.UserRole for Qt.UserRole, when the member is in one enum of its class."""
    owner_path, _, name = path.rpartition(".")
    owner = lookup(module, owner_path) if owner_path else None
    if not isinstance(owner, type):
        return ""
    enums = [key for key, value in vars(owner).items()
             if isinstance(value, type) and issubclass(value, enum.Enum)
             and name in value.__members__]
    return f"{owner_path}.{enums[0]}.{name}" if len(enums) == 1 else ""


def enum_member_names(modules) -> set[str]:
    names: set[str] = set()
    for module in modules:
        for cls in vars(module).values():
            if not isinstance(cls, type):
                continue
            for value in vars(cls).values():
                if isinstance(value, type) and issubclass(value, enum.Enum):
                    names.update(value.__members__)
    return names


def load(name: str):
    try:
        return importlib.import_module(f"PyQt6.{name}")
    except ImportError:
        return None  # a Qt 5 module that Qt 6 no longer has (QtWebKit, ...)


def main() -> None:
    query = json.load(sys.stdin)
    modules = {name: load(name)
               for name in sorted({module for module, _ in query["paths"]} | set(WIDGET_MODULES))}
    members = enum_member_names(modules[name] for name in WIDGET_MODULES)
    if any(name.startswith("PyQt5") for name in sys.modules):
        sys.exit("PyQt5 was loaded next to PyQt6: the answer would not be PyQt6's alone")
    json.dump({
        "pyqt": modules["QtCore"].PYQT_VERSION_STR,
        "qt": modules["QtCore"].QT_VERSION_STR,
        "missing": [[module, path, scoped(modules[module], path)]
                    for module, path in query["paths"]
                    if modules[module] is None or lookup(modules[module], path) is None],
        "enum_members": sorted(set(query["names"]) & members),
    }, sys.stdout)


if __name__ == "__main__":
    main()
