"""The loopback ArcGIS REST server (scripts/arcgis_rest_server.py) imported as a module."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SERVER_PATH = Path(__file__).resolve().parent.parent / "scripts" / "arcgis_rest_server.py"


def rest_server_module():
    name = "arcgis_rest_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SERVER_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules[name]
