"""conf.xml (tiling scheme) and conf.cdi (data extent) of cache datasets (esri-formats §4, §5)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Optional
from xml.sax.saxutils import escape

from ..errors import CacheError
from ..grid import checked_values as checked
from ..grid.extent import Extent
from ..grid.spatial_reference import SpatialReference
from ..grid.tiling_scheme import Lod, StorageFormat, TilingScheme

NAMESPACES = (
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
    'xmlns:typens="http://www.esri.com/schemas/ArcGIS/10.3"'
)
SR_IDENTITY_TAGS = ("WKT", "WKID", "LatestWKID")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> Optional[ET.Element]:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _text(element: ET.Element, path: str, default: Optional[str] = None) -> Optional[str]:
    node: Optional[ET.Element] = element
    for name in path.split("/"):
        node = _child(node, name) if node is not None else None
    if node is None or node.text is None:
        return default
    return node.text.strip()


def _parse_xml(data: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise CacheError(
            f"{what} is not valid XML ({exc}). The file is damaged: restore it from the "
            "original cache."
        ) from exc


def _value(element: ET.Element, path: str, what: str, default: Optional[str] = None) -> str:
    """The text of a required element (`default` when it may be missing)."""
    text = _text(element, path, default)
    if text is None:
        raise CacheError(f"{what} has no {path}.")
    return text


def parse_spatial_reference(element: Optional[ET.Element], what: str) -> SpatialReference:
    if element is None:
        return SpatialReference()
    domain = tuple(
        (_local(child.tag), (child.text or "").strip())
        for child in element
        if _local(child.tag) not in SR_IDENTITY_TAGS
    )
    def as_int(name: str) -> Optional[int]:
        text = _text(element, name)
        return checked.number(text, what, f"SpatialReference/{name}", 0, 1e9, integer=True
                              ) if text else None
    return SpatialReference(
        wkid=as_int("WKID"), latest_wkid=as_int("LatestWKID"), wkt=_text(element, "WKT"),
        domain=domain,
    )


def parse_conf_xml(data: bytes, what: str = "conf.xml") -> TilingScheme:
    root = _parse_xml(data, what)
    if _local(root.tag) != "CacheInfo":
        raise CacheError(f"{what} is not an Esri cache description (no CacheInfo element).")
    info = _child(root, "TileCacheInfo")
    if info is None:
        raise CacheError(f"{what} has no TileCacheInfo.")
    lods_node = _child(info, "LODInfos")
    lods = []
    for node in list(lods_node) if lods_node is not None else []:
        level = checked.level_id(_value(node, "LevelID", what), what)
        lods.append(Lod(level, checked.resolution(_value(node, "Resolution", what), what, level),
                        checked.scale(_value(node, "Scale", what, "0"), what, level)))
    storage_text = _text(root, "CacheStorageInfo/StorageFormat", StorageFormat.EXPLODED.value)
    try:
        storage = StorageFormat(storage_text)
    except ValueError as exc:
        raise CacheError(f"{what}: unknown StorageFormat {storage_text!r}.") from exc
    return TilingScheme(
        spatial_reference=parse_spatial_reference(_child(info, "SpatialReference"), what),
        origin_x=checked.coordinate(_value(info, "TileOrigin/X", what), what, "TileOrigin/X"),
        origin_y=checked.coordinate(_value(info, "TileOrigin/Y", what), what, "TileOrigin/Y"),
        tile_cols=checked.tile_pixels(_value(info, "TileCols", what), what, "TileCols"),
        tile_rows=checked.tile_pixels(_value(info, "TileRows", what), what, "TileRows"),
        dpi=checked.dpi(_value(info, "DPI", what, "96"), what),
        lods=checked.checked_lods(lods, what),
        tile_format=_text(root, "TileImageInfo/CacheTileFormat", "PNG") or "PNG",
        compression_quality=checked.quality(
            _value(root, "TileImageInfo/CompressionQuality", what, "0"), what),
        storage_format=storage,
    )


def parse_conf_cdi(data: bytes, what: str = "conf.cdi") -> Optional[Extent]:
    root = _parse_xml(data, what)
    try:
        extent = Extent(*(checked.coordinate(_value(root, name, what), what, name)
                          for name in ("XMin", "YMin", "XMax", "YMax")))
    except CacheError:
        return None
    return None if extent.is_empty else extent


def _sr_xml(sr: SpatialReference) -> str:
    sr = sr.with_defaults()
    kind = "GeographicCoordinateSystem" if sr.is_geographic else "ProjectedCoordinateSystem"
    parts = [f'<SpatialReference xsi:type="typens:{kind}">']
    if sr.wkt:
        parts.append(f"<WKT>{escape(sr.wkt)}</WKT>")
    parts.extend(f"<{tag}>{escape(text)}</{tag}>" for tag, text in sr.domain)
    if sr.wkid is not None:
        parts.append(f"<WKID>{sr.wkid}</WKID>")
    if sr.latest_wkid is not None:
        parts.append(f"<LatestWKID>{sr.latest_wkid}</LatestWKID>")
    parts.append("</SpatialReference>")
    return "".join(parts)


def write_conf_xml(scheme: TilingScheme, lods: Optional[tuple[Lod, ...]] = None) -> bytes:
    """conf.xml in ArcGIS's element order; numbers as shortest round-tripping decimals."""
    packet = 0 if scheme.storage_format is StorageFormat.EXPLODED else 128
    lod_xml = "".join(
        '<LODInfo xsi:type="typens:LODInfo">'
        f"<LevelID>{lod.level}</LevelID><Scale>{lod.scale!r}</Scale>"
        f"<Resolution>{lod.resolution!r}</Resolution></LODInfo>"
        for lod in (lods if lods is not None else scheme.lods)
    )
    xml = (
        '<?xml version="1.0" encoding="utf-8" ?>'
        f'<CacheInfo xsi:type="typens:CacheInfo" {NAMESPACES}>'
        '<TileCacheInfo xsi:type="typens:TileCacheInfo">'
        f"{_sr_xml(scheme.spatial_reference)}"
        '<TileOrigin xsi:type="typens:PointN">'
        f"<X>{scheme.origin_x!r}</X><Y>{scheme.origin_y!r}</Y></TileOrigin>"
        f"<TileCols>{scheme.tile_cols}</TileCols><TileRows>{scheme.tile_rows}</TileRows>"
        f"<DPI>{scheme.dpi}</DPI><PreciseDPI>{scheme.dpi}</PreciseDPI>"
        f'<LODInfos xsi:type="typens:ArrayOfLODInfo">{lod_xml}</LODInfos>'
        "</TileCacheInfo>"
        '<TileImageInfo xsi:type="typens:TileImageInfo">'
        f"<CacheTileFormat>{escape(scheme.tile_format)}</CacheTileFormat>"
        f"<CompressionQuality>{scheme.compression_quality}</CompressionQuality>"
        "<Antialiasing>false</Antialiasing><BandCount>1</BandCount><LERCError>0</LERCError>"
        "</TileImageInfo>"
        '<CacheStorageInfo xsi:type="typens:CacheStorageInfo">'
        f"<StorageFormat>{scheme.storage_format.value}</StorageFormat>"
        f"<PacketSize>{packet}</PacketSize></CacheStorageInfo>"
        "</CacheInfo>"
    )
    return xml.encode("utf-8")


def write_conf_cdi(extent: Extent, sr: SpatialReference) -> bytes:
    xml = (
        '<?xml version="1.0" encoding="utf-8" ?>'
        f'<EnvelopeN xsi:type="typens:EnvelopeN" {NAMESPACES}>'
        f"<XMin>{extent.xmin!r}</XMin><YMin>{extent.ymin!r}</YMin>"
        f"<XMax>{extent.xmax!r}</XMax><YMax>{extent.ymax!r}</YMax>"
        f"{_sr_xml(sr)}</EnvelopeN>"
    )
    return xml.encode("utf-8")
