"""What the exporter reads from: a cache source, local or a tile service."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..formats.layout import Layout, Store
from ..grid.extent import Extent
from ..grid.tiling_scheme import TilingScheme


@dataclass
class CacheSource:
    """A cache the exporter reads: its tiling scheme, and its tiles through `layout`. A local
    cache or package is one as it is; a tile service is a `ServiceSource`."""

    name: str
    scheme: TilingScheme
    layout: Layout
    data_extent: Optional[Extent]
    location: Path | str  # a URL for a service
    is_package: bool

    @property
    def is_service(self) -> bool:
        """Whether tiles come over the network (downloads: staged, estimated, throttled)."""
        return False

    @property
    def store(self) -> Store:
        return self.layout.store

    def close(self) -> None:
        self.store.close()


def safe_name(text: str) -> str:
    """A cache name usable as a folder or file name everywhere ArcGIS runs."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return name or "cache"
