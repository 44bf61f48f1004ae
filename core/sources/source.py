"""What the exporter reads from: a cache source (a local cache or a tile service) and, for a
service, what the service says of itself."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..formats.layouts import Layout, Store
from ..grid.extent import Extent
from ..grid.tiling_scheme import TilingScheme
from .service_url import ServiceUrl


@dataclass(frozen=True)
class ServiceInfo:
    url: ServiceUrl
    tilemap: bool
    export_tiles_allowed: Optional[bool]
    max_export_tiles_count: Optional[int]
    min_level: int
    max_level: int
    tile_format: str

    def describe(self) -> str:
        allowed = {True: "allowed", False: "not allowed", None: "not stated"}[
            self.export_tiles_allowed]
        limit = self.max_export_tiles_count
        return (
            f"{self.url.kind} at {self.url}: levels {self.min_level}-{self.max_level}, "
            f"{self.tile_format}, tilemap {'yes' if self.tilemap else 'no'}; exportTiles "
            f"{allowed}" + (f", maxExportTilesCount {limit}" if limit is not None else "")
        )


@dataclass
class CacheSource:
    name: str
    scheme: TilingScheme
    layout: Layout
    data_extent: Optional[Extent]
    location: Path | str  # a URL for a service
    is_package: bool
    service: Optional[ServiceInfo] = None  # set for a REST tile service

    @property
    def store(self) -> Store:
        return self.layout.store

    def close(self) -> None:
        self.store.close()


def safe_name(text: str) -> str:
    """A cache name usable as a folder or file name everywhere ArcGIS runs."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return name or "cache"
