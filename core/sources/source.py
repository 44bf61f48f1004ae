"""What the exporter reads from: a cache source, local or a tile service."""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..formats.layout import Layout, Store
from ..grid.extent import Extent
from ..grid.tiling_scheme import TilingScheme


@dataclass
class CacheSource(ABC):
    """A cache the exporter reads: its tiling scheme, and its tiles through `layout`: a local
    cache dataset or package (`LocalCache`) or a tile service (`ServiceSource`)."""

    name: str
    scheme: TilingScheme
    layout: Layout
    data_extent: Optional[Extent]
    location: Path | str  # a URL for a service
    is_package: bool

    @property
    @abstractmethod
    def is_service(self) -> bool:
        """Whether tiles come over the network (downloads: staged, estimated, throttled)."""

    @property
    def store(self) -> Store:
        return self.layout.store

    def close(self) -> None:
        self.store.close()


@dataclass
class LocalCache(CacheSource):
    """A cache dataset folder or a tile package on disk."""

    @property
    def is_service(self) -> bool:
        return False


def safe_name(text: str) -> str:
    """A cache name usable as a folder or file name everywhere ArcGIS runs."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return name or "cache"
