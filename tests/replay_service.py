"""A service the loopback server answers for the way a real ArcGIS server did: its JSON replayed
from a captured reply (tests/fixtures/arcgis-replies), its tiles from bytes the test read on its
own (never through the engine's readers), and recorded replies (error pages, error JSON) for a
kind of request."""
from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Optional

from http_helpers import rest_server_module

REPLIES = Path(__file__).resolve().parent / "fixtures" / "arcgis-replies"
PACKET = 128
Key = tuple[int, int, int]
srv = rest_server_module()


def reply_fixture(name: str) -> bytes:
    return (REPLIES / name).read_bytes()


def service_fixture(name: str) -> dict:
    return json.loads(reply_fixture(name))


class _Present:
    def __init__(self, tiles: frozenset):
        self.present = tiles


class ReplayService(srv._Service):
    """`service_json` as the service's JSON, `tiles` as its tiles (tilemaps answered from
    them by the server's own rule), `replies[kind]` = (status, body, content type) for every
    request of that kind ("service", "tile", "tilemap")."""

    def __init__(self, service_json: dict, tiles: dict[Key, bytes],
                 replies: Optional[dict[str, tuple[int, bytes, str]]] = None):
        super().__init__("replay", "MapServer", "")
        self._json, self._tiles, self._replies = service_json, tiles, replies or {}
        bundles: dict[Key, set] = {}
        for level, row, col in tiles:
            bundles.setdefault((level, row - row % PACKET, col - col % PACKET), set()).add(
                (row, col))
        self._present = {key: _Present(frozenset(keys)) for key, keys in bundles.items()}

    def open(self) -> None:
        """Nothing to open: everything is in memory."""

    def close(self) -> None:
        """Nothing to close."""

    def description(self, options) -> dict:
        return copy.deepcopy(self._json)

    def recorded(self, kind: str) -> Optional[tuple[int, bytes, str]]:
        return self._replies.get(kind)

    def tile(self, level: int, row: int, col: int) -> Optional[bytes]:
        return self._tiles.get((level, row, col))

    def _bundle_at(self, level: int, row: int, col: int) -> Optional[_Present]:
        return self._present.get((level, row - row % PACKET, col - col % PACKET))


def service_json_of_dataset(layers: Path, capabilities: str = "Map,Tilemap") -> dict:
    """A MapServer JSON for a cache dataset, read from its conf.xml as plain XML (tile size,
    origin, levels, format, spatial reference) and its conf.cdi (the extent)."""
    info = ElementTree.parse(layers / "conf.xml").getroot().find("TileCacheInfo")
    sr = {"wkid": int(info.findtext("SpatialReference/WKID"))}
    if info.findtext("SpatialReference/LatestWKID"):
        sr["latestWkid"] = int(info.findtext("SpatialReference/LatestWKID"))
    cdi = ElementTree.parse(layers / "conf.cdi").getroot()
    extent = {key.lower(): float(cdi.findtext(key)) for key in ("XMin", "YMin", "XMax", "YMax")}
    lods = [{"level": int(lod.findtext("LevelID")), "resolution": float(lod.findtext(
        "Resolution")), "scale": float(lod.findtext("Scale"))}
        for lod in info.find("LODInfos")]
    image = ElementTree.parse(layers / "conf.xml").getroot().find("TileImageInfo")
    return {
        "currentVersion": 10.91, "mapName": "Layers", "capabilities": capabilities,
        "singleFusedMapCache": True, "spatialReference": sr,
        "tileInfo": {
            "rows": int(info.findtext("TileRows")), "cols": int(info.findtext("TileCols")),
            "dpi": int(info.findtext("DPI")), "format": image.findtext("CacheTileFormat"),
            "compressionQuality": int(image.findtext("CompressionQuality")),
            "origin": {"x": float(info.findtext("TileOrigin/X")),
                       "y": float(info.findtext("TileOrigin/Y"))},
            "spatialReference": sr, "lods": lods},
        "fullExtent": {**extent, "spatialReference": sr},
        "initialExtent": {**extent, "spatialReference": sr},
        "minLOD": lods[0]["level"], "maxLOD": lods[-1]["level"],
        # a replayed service runs no exportTiles jobs: its replies are tiles and JSON only
        "exportTilesAllowed": False, "maxExportTilesCount": 100000,
    }
