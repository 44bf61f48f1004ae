"""The metadata members of tile packages: root.json/iteminfo.json (.tpkx, esri-formats §6.2) and
iteminfo.xml/item.pkinfo/mapserver.json (.tpk, esri-formats §6.1)."""
from __future__ import annotations

import json
import uuid
from typing import Optional
from xml.sax.saxutils import escape

from ..grid.extent import Extent
from ..grid.tiling_scheme import TilingScheme

CREATOR = "Export Map Server Cache (QGIS)"
WORLD = Extent(-180.0, -90.0, 180.0, 90.0)
WGS84_JSON = {"wkid": 4326, "latestWkid": 4326}


def _json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _envelope(extent: Extent, sr: dict) -> dict:
    return {**extent.as_dict(), "spatialReference": sr}


def _units(scheme: TilingScheme) -> str:
    return "esriDecimalDegrees" if scheme.spatial_reference.is_geographic else "esriMeters"


def tile_info(scheme: TilingScheme) -> dict:
    return {
        "rows": scheme.tile_rows,
        "cols": scheme.tile_cols,
        "dpi": scheme.dpi,
        "format": scheme.tile_format,
        "compressionQuality": scheme.compression_quality,
        "origin": {"x": scheme.origin_x, "y": scheme.origin_y},
        "spatialReference": scheme.spatial_reference.to_short_json(),
        "lods": [
            {"level": lod.level, "resolution": lod.resolution, "scale": lod.scale}
            for lod in scheme.lods
        ],
    }


def root_json(
    scheme: TilingScheme, name: str, min_lod: int, max_lod: int, extent: Extent
) -> bytes:
    """root.json with tileBundlesPath and storageInfo first, so older GDAL identifies it."""
    sr = scheme.spatial_reference.to_json()
    info = tile_info(scheme)
    del info["format"], info["compressionQuality"]
    return _json(
        {
            "version": 1.0,
            "name": name,
            "tileBundlesPath": "./tile",
            "storageInfo": {"storageFormat": scheme.storage_format.value, "packetSize": 128},
            "tileImageInfo": {
                "format": scheme.tile_format,
                "compressionQuality": scheme.compression_quality,
                "bandCount": 1,
                "lercError": 0,
            },
            "serviceDescription": "",
            "spatialReference": sr,
            "units": _units(scheme),
            "minLOD": min_lod,
            "maxLOD": max_lod,
            "minScale": scheme.lod(min_lod).scale,
            "maxScale": scheme.lod(max_lod).scale,
            "resampling": True,
            "exportTilesAllowed": False,
            "initialExtent": _envelope(extent, sr),
            "fullExtent": _envelope(extent, sr),
            "tileInfo": info,
        }
    )


def iteminfo_json(name: str, geographic: Optional[Extent], item_id: uuid.UUID) -> bytes:
    return _json(
        {
            "creator": CREATOR,
            "name": name,
            "guid": str(item_id).upper(),
            "version": 1.0,
            "created": 0,
            "snippet": f"Tiles of {name}",
            "description": "",
            "summary": f"Tiles of {name}",
            "title": name,
            "tags": "tiles",
            "type": "Compact Tile Package",
            "typeKeywords": ["Compact Tile Package", "Tile Package", "tpkx"],
            "thumbnail": "./thumbnail.png",
            "extent": _envelope(geographic or WORLD, WGS84_JSON),
        }
    )


def item_pkinfo(name: str, item_id: uuid.UUID) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8" ?>\r\n<pkinfo Culture=\'en-US\'>\r\n'
        f"<ID>{item_id}</ID>\r\n<name>{escape(name)}</name>\r\n<version>10.3</version>\r\n"
        "<size>-1</size>\r\n<created></created>\r\n<type>Tile Package</type>\r\n"
        "<servable>false</servable>\r\n<packagelocation></packagelocation>\r\n"
        "<pkinfolocation></pkinfolocation>\r\n</pkinfo>\r\n"
    ).encode()


def iteminfo_xml(name: str, geographic: Optional[Extent], crs_name: str,
                 item_id: uuid.UUID) -> bytes:
    extent = geographic or WORLD
    text = escape(name)
    return (
        '<?xml version="1.0" encoding="utf-8" ?>'
        "<ESRI_ItemInformation Culture='en-US'>"
        f"<name>{text}</name><guid>{item_id}</guid><catalogpath></catalogpath>"
        f"<snippet>Tiles of {text}</snippet><description></description>"
        f"<summary>Tiles of {text}</summary><title>{text}</title><tags>tiles</tags>"
        "<type>Tile Package</type><typekeywords><typekeyword>Data</typekeyword>"
        "<typekeyword>Tile Package</typekeyword><typekeyword>tpk</typekeyword></typekeywords>"
        "<thumbnail>thumbnail/thumbnail.png</thumbnail><documentation></documentation>"
        f"<url></url><datalastModifiedTime></datalastModifiedTime>"
        f"<extent><xmin>{extent.xmin!r}</xmin><ymin>{extent.ymin!r}</ymin>"
        f"<xmax>{extent.xmax!r}</xmax><ymax>{extent.ymax!r}</ymax></extent>"
        f"<spatialreference>{escape(crs_name)}</spatialreference>"
        "<accessinformation></accessinformation><licenseinfo></licenseinfo>"
        "</ESRI_ItemInformation>"
    ).encode()


def mapserver_json(
    scheme: TilingScheme, name: str, extent: Extent, geographic: Optional[Extent]
) -> bytes:
    sr = scheme.spatial_reference.to_json()
    geo = _envelope(geographic or WORLD, WGS84_JSON)
    contents = {
        "currentVersion": 10.3,
        "serviceDescription": "",
        "mapName": name,
        "description": "",
        "copyrightText": "",
        "layers": [],
        "tables": [],
        "spatialReference": sr,
        "singleFusedMapCache": True,
        "tileInfo": tile_info(scheme),
        "initialExtent": _envelope(extent, sr),
        "fullExtent": _envelope(extent, sr),
        "minScale": 0,
        "maxScale": 0,
        "units": _units(scheme),
        "supportedImageFormatTypes": "PNG32,PNG24,PNG,JPG,DIB,TIFF,EMF,PS,PDF,GIF,SVG,SVGZ,BMP",
        "documentInfo": {"Title": name, "Author": "", "Comments": "", "Subject": "",
                         "Category": "", "Keywords": "", "Credits": ""},
        "capabilities": "Map,Query,Data",
        "exportTilesAllowed": False,
        "maxRecordCount": 1000,
        "maxImageHeight": 4096,
        "maxImageWidth": 4096,
    }
    return _json(
        {
            "name": "MapServer",
            "contents": contents,
            "resourceInfo": {
                "geoFullExtent": geo,
                "spatialReferenceDomain": {},
                "geoInitialExtent": geo,
            },
            "resources": [
                {"name": "layers", "resources": []},
                {"name": "tables", "resources": []},
                {"name": "legend", "contents": {"layers": []}},
            ],
        }
    )
