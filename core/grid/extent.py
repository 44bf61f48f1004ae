"""Axis-aligned extents in a cache's own CRS."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Extent:
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def is_empty(self) -> bool:
        return not (self.xmax > self.xmin and self.ymax > self.ymin)

    def intersection(self, other: Extent) -> Optional[Extent]:
        result = Extent(
            max(self.xmin, other.xmin),
            max(self.ymin, other.ymin),
            min(self.xmax, other.xmax),
            min(self.ymax, other.ymax),
        )
        return None if result.is_empty else result

    def union(self, other: Optional[Extent]) -> Extent:
        if other is None:
            return self
        return Extent(
            min(self.xmin, other.xmin),
            min(self.ymin, other.ymin),
            max(self.xmax, other.xmax),
            max(self.ymax, other.ymax),
        )

    def as_dict(self) -> dict:
        return {"xmin": self.xmin, "ymin": self.ymin, "xmax": self.xmax, "ymax": self.ymax}
