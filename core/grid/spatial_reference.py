"""Spatial references as Esri files carry them (WKID, latest WKID, ESRI WKT, XY/Z/M domain)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

from .extent import Extent
from .json_values import int_or

WEB_MERCATOR_WKT = (
    'PROJCS["WGS_1984_Web_Mercator_Auxiliary_Sphere",GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",'
    'SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],'
    'UNIT["Degree",0.0174532925199433]],PROJECTION["Mercator_Auxiliary_Sphere"],'
    'PARAMETER["False_Easting",0.0],PARAMETER["False_Northing",0.0],'
    'PARAMETER["Central_Meridian",0.0],PARAMETER["Standard_Parallel_1",0.0],'
    'PARAMETER["Auxiliary_Sphere_Type",0.0],UNIT["Meter",1.0],AUTHORITY["EPSG",3857]]'
)
WGS84_WKT = (
    'GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,298.257223563]],'
    'PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433],AUTHORITY["EPSG",4326]]'
)
WEB_MERCATOR_CODES = frozenset({3857, 102100, 102113, 900913, 3785})

# conf.xml element <-> REST/root.json key for the coordinate domain Esri stores with a CRS.
DOMAIN_KEYS = (
    ("XOrigin", "falseX"),
    ("YOrigin", "falseY"),
    ("XYScale", "xyUnits"),
    ("ZOrigin", "falseZ"),
    ("ZScale", "zUnits"),
    ("MOrigin", "falseM"),
    ("MScale", "mUnits"),
    ("XYTolerance", "xyTolerance"),
    ("ZTolerance", "zTolerance"),
    ("MTolerance", "mTolerance"),
)
WEB_MERCATOR_DOMAIN = (
    ("XOrigin", "-20037700"),
    ("YOrigin", "-30241100"),
    ("XYScale", "148923141.92838538"),
    ("ZOrigin", "-100000"),
    ("ZScale", "10000"),
    ("MOrigin", "-100000"),
    ("MScale", "10000"),
    ("XYTolerance", "0.001"),
    ("ZTolerance", "0.001"),
    ("MTolerance", "0.001"),
    ("HighPrecision", "true"),
)
GEOGRAPHIC_DOMAIN = (
    ("XOrigin", "-400"),
    ("YOrigin", "-400"),
    ("XYScale", "999999999.99999988"),
    ("ZOrigin", "-100000"),
    ("ZScale", "10000"),
    ("MOrigin", "-100000"),
    ("MScale", "10000"),
    ("XYTolerance", "8.983152841195215e-09"),
    ("ZTolerance", "0.001"),
    ("MTolerance", "0.001"),
    ("HighPrecision", "true"),
)


@dataclass(frozen=True)
class SpatialReference:
    wkid: Optional[int] = None
    latest_wkid: Optional[int] = None
    wkt: Optional[str] = None
    # conf.xml children other than WKT/WKID/LatestWKID, in file order, kept to write them back.
    domain: tuple = field(default=(), compare=False)

    @property
    def is_geographic(self) -> bool:
        if self.wkt:
            return self.wkt.lstrip().upper().startswith("GEOGCS")
        return self.code == 4326

    @property
    def code(self) -> Optional[int]:
        return self.latest_wkid or self.wkid

    @property
    def is_web_mercator(self) -> bool:
        return self.wkid in WEB_MERCATOR_CODES or self.latest_wkid in WEB_MERCATOR_CODES

    def with_defaults(self) -> SpatialReference:
        """Fill WKT and the coordinate domain for the CRSs the engine knows by heart."""
        wkt, domain = self.wkt, self.domain
        if not wkt and self.is_web_mercator:
            wkt = WEB_MERCATOR_WKT
        elif not wkt and self.code == 4326:
            wkt = WGS84_WKT
        if not domain:
            domain = GEOGRAPHIC_DOMAIN if (wkt or "").upper().startswith("GEOGCS") else (
                WEB_MERCATOR_DOMAIN if self.is_web_mercator else (("HighPrecision", "true"),)
            )
        return replace(self, wkt=wkt, domain=domain)

    def same_crs(self, other: SpatialReference) -> bool:
        if self.code is not None and other.code is not None:
            codes = {self.code, other.code}
            return len(codes) == 1 or codes <= WEB_MERCATOR_CODES
        return _normalise_wkt(self.wkt) == _normalise_wkt(other.wkt)

    def describe(self) -> str:
        if self.code is not None:
            return f"WKID {self.code}"
        return (self.wkt or "unknown CRS")[:60]

    def to_json(self) -> dict:
        """The REST/root.json form: wkid, latestWkid (or wkt) and the domain keys."""
        result: dict = {}
        if self.wkid is not None:
            result["wkid"] = self.wkid
            if self.latest_wkid is not None:
                result["latestWkid"] = self.latest_wkid
        elif self.latest_wkid is not None:
            result["wkid"] = self.latest_wkid
            result["latestWkid"] = self.latest_wkid
        elif self.wkt:
            result["wkt"] = self.wkt
        domain = dict(self.domain)
        for xml_key, json_key in DOMAIN_KEYS:
            if xml_key in domain:
                result[json_key] = _number(domain[xml_key])
        return result

    def to_short_json(self) -> dict:
        short = {k: v for k, v in self.to_json().items() if k in ("wkid", "latestWkid", "wkt")}
        return short

    @classmethod
    def from_json(cls, data: Optional[dict]) -> SpatialReference:
        if not data:
            return cls()
        domain = tuple(
            (xml_key, _decimal(float(data[json_key])))
            for xml_key, json_key in DOMAIN_KEYS
            if isinstance(data.get(json_key), (int, float))
            and math.isfinite(data[json_key])
        )
        if domain:  # JSON has no HighPrecision; every domain ArcGIS 10+ writes is high precision
            domain += (("HighPrecision", "true"),)
        return cls(
            wkid=int_or(data.get("wkid")),
            latest_wkid=int_or(data.get("latestWkid")),
            wkt=data.get("wkt") or None,
            domain=domain,
        )


def geographic_extent(extent: Extent, sr: SpatialReference) -> Optional[Extent]:
    """Longitude/latitude bounds for the CRSs known without a projection library, else None."""
    if sr.is_web_mercator:
        radius = 6378137.0

        def lon(x: float) -> float:
            return max(-180.0, min(180.0, math.degrees(x / radius)))

        def lat(y: float) -> float:
            return math.degrees(2 * math.atan(math.exp(y / radius)) - math.pi / 2)

        return Extent(lon(extent.xmin), lat(extent.ymin), lon(extent.xmax), lat(extent.ymax))
    if sr.code == 4326:
        return Extent(
            max(extent.xmin, -180.0), max(extent.ymin, -90.0),
            min(extent.xmax, 180.0), min(extent.ymax, 90.0),
        )
    return None


def _decimal(value: float) -> str:
    """Shortest round-tripping text, integers without '.0' (as ArcGIS writes them)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 1e15 else value


def _normalise_wkt(wkt: Optional[str]) -> str:
    return "".join((wkt or "").split()).upper()
