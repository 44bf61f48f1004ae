"""The input as the dialog's level list sees it: opened once per input, recounted per area.

Runs on the main thread (project layers, QGIS networking); a service is asked for its JSON
only, never for tiles.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from qgis.core import QgsProcessingContext, QgsProcessingParameterDefinition, QgsProject

from ..core.selection.level_table import LevelRow, level_rows
from ..core.sources.source import CacheSource
from .export_parameters import ExportParameters
from .input_layers import resolve_input
from .qgis_network import QgisTransport
from .translation import tr

LIST_WORKERS = 2
Definitions = Mapping[str, QgsProcessingParameterDefinition]


@dataclass
class LevelSource:
    source: CacheSource
    transport: Optional[QgisTransport]

    @classmethod
    def open(cls, definitions: Definitions, parameters: dict) -> LevelSource:
        context = _context()
        resolved = resolve_input(str(parameters.get("INPUT_SERVICE") or "").strip(), context)
        return cls(*ExportParameters(definitions, parameters, context).open_input(
            resolved, LIST_WORKERS))

    @property
    def present_levels(self) -> set[int]:
        if self.source.is_service:
            info = self.source.info
            return set(range(info.min_level, info.max_level + 1))
        return set(self.source.layout.levels())

    def describe(self) -> str:
        scheme = self.source.scheme
        kind = tr("Service") if self.source.is_service else scheme.storage_format.label
        return (f"{kind}, {scheme.tile_format}, {scheme.tile_cols}x{scheme.tile_rows} px, "
                f"{scheme.spatial_reference.describe()}.")

    def rows(self, definitions: Definitions, parameters: dict, feedback) -> list[LevelRow]:
        scheme = self.source.scheme
        selection = ExportParameters(definitions, parameters, _context()).selection(feedback,
                                                                              scheme)
        return level_rows(scheme, self.source.data_extent, selection)

    def close(self) -> None:
        self.source.close()
        if self.transport is not None:
            self.transport.close()


def _context() -> QgsProcessingContext:
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return context
