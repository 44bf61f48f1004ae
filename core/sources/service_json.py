"""Tiling schemes from JSON: REST service JSON, a .tpkx root.json, a .tpk mapserver.json."""
from __future__ import annotations

import json
from typing import Optional

from ..errors import CacheError
from ..grid import checked_values as checked
from ..grid.extent import Extent
from ..grid.spatial_reference import SpatialReference
from ..grid.tiling_scheme import Lod, StorageFormat, TilingScheme


def load_json(data: bytes, what: str) -> dict:
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CacheError(f"{what} is not valid JSON ({exc}).") from exc
    if not isinstance(value, dict):
        raise CacheError(f"{what} is not a JSON object.")
    return value


def parse_extent(data: Optional[dict]) -> Optional[Extent]:
    if not isinstance(data, dict):
        return None
    try:
        extent = Extent(*(checked.coordinate(data[key], "", key)
                          for key in ("xmin", "ymin", "xmax", "ymax")))
    except (KeyError, CacheError):  # an extent is optional: a bad one is no extent
        return None
    return None if extent.is_empty else extent


def scheme_from_service_json(service: dict, what: str) -> TilingScheme:
    """Build a scheme from any JSON carrying `tileInfo` (esri-formats §6.2, §7.1)."""
    tile_info = service.get("tileInfo")
    if not isinstance(tile_info, dict):
        raise CacheError(f"{what} has no tileInfo: it does not describe a tile cache.")
    try:
        lods = []
        for lod in tile_info.get("lods") or []:
            level = checked.level_id(lod["level"], what)
            lods.append(Lod(level, checked.resolution(lod["resolution"], what, level),
                            checked.scale(lod.get("scale", 0), what, level)))
        origin = tile_info["origin"]
        origin_x = checked.coordinate(origin["x"], what, "tileInfo.origin.x")
        origin_y = checked.coordinate(origin["y"], what, "tileInfo.origin.y")
        cols = checked.tile_pixels(tile_info["cols"], what, "tileInfo.cols")
        rows = checked.tile_pixels(tile_info["rows"], what, "tileInfo.rows")
    except (KeyError, TypeError) as exc:
        raise CacheError(f"{what}: tileInfo is incomplete or malformed ({exc!r}).") from exc
    sr_json = tile_info.get("spatialReference") or service.get("spatialReference")
    top_sr = service.get("spatialReference")
    if isinstance(top_sr, dict) and isinstance(sr_json, dict):
        sr_json = {**top_sr, **sr_json}  # root.json keeps the domain at the top level
    image = service.get("tileImageInfo") or {}
    storage = (service.get("storageInfo") or {}).get("storageFormat") or tile_info.get(
        "storageFormat"
    )
    try:
        storage_format = StorageFormat(storage) if storage else StorageFormat.COMPACT_V2
    except ValueError as exc:
        raise CacheError(f"{what}: unknown storage format {storage!r}.") from exc
    return TilingScheme(
        spatial_reference=SpatialReference.from_json(sr_json),
        origin_x=origin_x,
        origin_y=origin_y,
        tile_cols=cols,
        tile_rows=rows,
        dpi=checked.dpi(tile_info.get("dpi") or 96, what),
        lods=checked.checked_lods(lods, what),
        tile_format=str(image.get("format") or tile_info.get("format") or "PNG"),
        compression_quality=checked.quality(
            image.get("compressionQuality") or tile_info.get("compressionQuality") or 0, what),
        storage_format=storage_format,
        full_extent=parse_extent(service.get("fullExtent")),
        initial_extent=parse_extent(service.get("initialExtent")),
    )
