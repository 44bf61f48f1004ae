#!/usr/bin/env python3
"""A loopback ArcGIS REST MapServer/ImageServer that serves local Esri caches, for tests, the
demo and the bench.

It answers what tile clients ask a real server (service JSON, /tile, /tilemap) from the plugin's
own cache reader, and can misbehave on purpose (latency, faults, rate limits, authentication) so
clients can be tested against the failures real servers produce. Standard library only.

    python scripts/arcgis_rest_server.py CACHE [CACHE ...] [--name NAME] [--port 0] ...
"""
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Optional
from urllib.parse import parse_qsl, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "export_map_server_cache"
SERVICES_PATH = "/arcgis/rest/services"
DIRECTORIES_PATH = "/arcgis/rest/directories/arcgisoutput"
SERVICE_TYPES = ("MapServer", "ImageServer")
CURRENT_VERSION = 10.91
FAULTS = ("500", "503", "429", "json200", "html", "truncated", "short", "hang", "notimage",
          "endless", "oversized", "huge_length", "gzip_bomb", "trickle")
HOSTILE = FAULTS[-5:]  # bodies no honest server sends: endless, too big, a lie, a bomb, a trickle
OVERSIZED_BYTES = 32 << 20
HUGE_LENGTH = 2 << 30
BOMB_BYTES = 1 << 30  # decoded size of the gzip bomb (about 1 MB sent)
# How a tilemap window is answered (esri-formats §7.3 leaves room): the whole window; clipped to the
# top-left tile's bundle (the spec), to a smaller block (`tilemap_block`), or to the level's grid.
TILEMAP_CLIPS = ("window", "bundle", "block", "grid")
# When a tilemap answers 422: only for a window with no tile at all; also when the answered
# (clipped) part is empty though the rest of the window has tiles (Esri BUG-000158087); never
# (an all-zero map instead, and for a window wholly beyond the grid an empty location).
TILEMAP_422S = ("window", "answered", "never")
# The body of a 404 for a missing tile: ArcGIS's JSON error (application/json), the same JSON
# sent as text/plain, an HTML page, or nothing.
MISSING_TILE_BODIES = ("json", "plain", "html", "empty")
OPEN_READERS = 64
JSON_TYPE = "application/json; charset=utf-8"
IMAGE_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
FAULT_HTML = (
    b"<html><head><title>Error</title></head><body><h1>Server Error</h1>"
    b"<p>The tile could not be exported.</p></body></html>"
)


def _core_module(name: str) -> ModuleType:
    """A module of the plugin's core package, whatever the checkout folder is called."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.core.{name}")


local_cache = _core_module("sources.local_cache")
package_metadata = _core_module("formats.package_metadata")
errors = _core_module("errors")
tiling_scheme = _core_module("grid.tiling_scheme")
_jobs_spec = importlib.util.spec_from_file_location(
    "export_tiles_jobs", Path(__file__).resolve().parent / "export_tiles_jobs.py")
export_tiles_jobs = sys.modules["export_tiles_jobs"] = importlib.util.module_from_spec(_jobs_spec)
_jobs_spec.loader.exec_module(export_tiles_jobs)
PACKET = tiling_scheme.PACKET_SIZE  # tiles per bundle side (esri-formats §0)


@dataclass
class ServerOptions:
    """How the server behaves; read on every request, so tests can flip switches between runs."""

    latency: float = 0.0
    tilemap: bool = True
    tilemap_clip: str = "bundle"
    tilemap_block: int = 8
    tilemap_422: str = "window"
    missing_tile_body: str = "json"
    blank_tiles: bool = False
    ignore_blank_tile_param: bool = False
    fault: Optional[str] = None
    fault_fraction: float = 0.0
    fault_attempts: int = 1
    fault_tilemap: bool = False
    retry_after: Optional[float] = None
    rate_limit: float = 0.0
    hang_seconds: float = 30.0
    basic_auth: Optional[tuple[str, str]] = None
    token: Optional[str] = None
    export_tiles_allowed: bool = False
    max_export_tiles_count: int = 100000
    job_latency: float = 0.0  # exportTiles jobs (scripts/export_tiles_jobs.py)
    job_failure: Optional[str] = None
    job_hosted: bool = False
    download_token: Optional[str] = None
    drop_downloads: int = 0
    json_overrides: dict = field(default_factory=dict)
    seed: int = 1

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS} or None, not {self.fault!r}")
        for name, allowed in (("tilemap_clip", TILEMAP_CLIPS), ("tilemap_422", TILEMAP_422S),
                              ("missing_tile_body", MISSING_TILE_BODIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.tilemap_block < 1:
            raise ValueError("tilemap_block must be at least 1")

    def selects(self, level: int, row: int, col: int) -> bool:
        """Whether `fault` hits this tile: a seeded hash, so runs and processes agree."""
        digest = hashlib.sha256(f"{self.seed}/{level}/{row}/{col}".encode()).digest()
        return int.from_bytes(digest[:8], "big") < self.fault_fraction * 2**64


@dataclass
class RequestRecord:
    started: float
    finished: float
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int
    kind: str
    level: Optional[int] = None
    row: Optional[int] = None
    col: Optional[int] = None


class RequestLog:
    """Every request the server answered (rejected ones too) and the peak of requests in flight,
    so tests can check what a client sent and how many requests it overlapped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._entries: list[RequestRecord] = []
        self._in_flight = 0
        self._max = 0

    def entries(self) -> list[RequestRecord]:
        with self._cond:
            return list(self._entries)

    def clear(self) -> None:
        with self._cond:
            self._entries = []
            self._max = self._in_flight

    @property
    def max_concurrency(self) -> int:
        with self._cond:
            return self._max

    def _begin(self) -> None:
        """A request arrived (called by the server)."""
        with self._cond:
            self._in_flight += 1
            self._max = max(self._max, self._in_flight)

    def _end(self, record: RequestRecord) -> None:
        """A request was answered (called by the server)."""
        with self._cond:
            self._in_flight -= 1
            self._entries.append(record)
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every request under way was answered within `timeout` seconds (a killed
        client's last requests are logged once the server gives up on them)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: Optional[int] = None  # a Content-Length larger than the body ("short")
    hostile: Optional[str] = None  # one of HOSTILE: how _send misbehaves after the headers


@dataclass(frozen=True)
class _Route:
    kind: str  # "service" | "tile" | "tilemap" | "job" | "download" | "other"
    service: Optional[_Service] = None
    args: tuple[str, ...] = ()
    folder: Optional[str] = None  # a catalog request ("" = the root)


class _Bundle:
    def __init__(self, reader) -> None:
        self.reader = reader
        self.present = frozenset(reader.present())


class _Service:
    """One cache served under one name; its reader state is shared by the handler threads, so
    every access to it holds `_lock` (bundle readers seek and read one file handle)."""

    def __init__(self, name: str, kind: str, path: str) -> None:
        self.name, self.kind, self.path = name, kind, path
        self.source = None
        self._lock = threading.Lock()
        self._bundles: OrderedDict[tuple[int, int, int], Optional[_Bundle]] = OrderedDict()
        self._levels: frozenset[int] = frozenset()
        self.full_extent = None
        self.initial_extent = None
        self.blank = b""

    def open(self) -> None:
        source = local_cache.open_cache(self.path)
        with self._lock:
            self.source = source
            scheme = source.scheme
            self._levels = frozenset(scheme.levels) & frozenset(source.layout.levels())
            self.full_extent = scheme.full_extent or source.data_extent or self._tiles_extent()
            self.initial_extent = scheme.initial_extent or self.full_extent
            self.blank = blank_png(scheme.tile_cols, scheme.tile_rows)

    def close(self) -> None:
        with self._lock:
            for bundle in self._bundles.values():
                if bundle is not None:
                    bundle.reader.close()
            self._bundles.clear()
            if self.source is not None:
                self.source.close()
                self.source = None

    def _tiles_extent(self):
        """Extent of the tiles of the first level that has any: the cache says nothing else."""
        scheme, layout = self.source.scheme, self.source.layout
        for lod in scheme.lods:
            keys = layout.bundle_keys(lod.level, None) if lod.level in self._levels else []
            bundles = [self._bundle_at(lod.level, *key) for key in keys]
            tiles = [tile for bundle in bundles if bundle is not None for tile in bundle.present]
            if tiles:
                rows, cols = [t[0] for t in tiles], [t[1] for t in tiles]
                window = tiling_scheme.TileRange(min(rows), max(rows), min(cols), max(cols))
                return scheme.range_extent(lod.level, window)
        return None

    def _bundle(self, level: int, brow: int, bcol: int) -> Optional[_Bundle]:
        """The bundle's reader from a small LRU (None if it does not exist); holds `_lock`."""
        key = (level, brow, bcol)
        if key in self._bundles:
            self._bundles.move_to_end(key)
            return self._bundles[key]
        reader = self.source.layout.open_bundle(level, brow, bcol)
        bundle = _Bundle(reader) if reader is not None else None
        self._bundles[key] = bundle
        if len(self._bundles) > OPEN_READERS:
            _, old = self._bundles.popitem(last=False)
            if old is not None:
                old.reader.close()
        return bundle

    def _bundle_at(self, level: int, row: int, col: int) -> Optional[_Bundle]:
        if level not in self._levels:
            return None
        return self._bundle(level, row - row % PACKET, col - col % PACKET)

    def tile(self, level: int, row: int, col: int) -> Optional[bytes]:
        with self._lock:
            bundle = self._bundle_at(level, row, col)
            if bundle is None or (row, col) not in bundle.present:
                return None
            return bundle.reader.read(row, col)

    def has_tile(self, level: int, row: int, col: int) -> bool:
        with self._lock:
            bundle = self._bundle_at(level, row, col)
        return bundle is not None and (row, col) in bundle.present

    def grid(self, level: int) -> Optional[tiling_scheme.TileRange]:
        """The tiles the level can hold: the world's grid, else the full extent's tiles."""
        scheme = self.source.scheme
        world = scheme.world_grid(level)
        if world is not None or self.full_extent is None:
            return world
        return scheme.tile_range(level, self.full_extent)

    def tilemap(self, numbers: tuple[int, ...], options: ServerOptions) -> Optional[dict]:
        """Spec §7.3, clipped as `options.tilemap_clip` says; None for an HTTP 422."""
        level, row, col, width, height = numbers
        window = tiling_scheme.TileRange(row, row + height - 1, col, col + width - 1)
        clip = options.tilemap_clip
        if clip in ("bundle", "block"):
            size = PACKET if clip == "bundle" else options.tilemap_block
            top, left = row - row % size, col - col % size
            answered = window.intersection(
                tiling_scheme.TileRange(top, top + size - 1, left, left + size - 1))
        elif clip == "grid":
            grid = self.grid(level)
            answered = window.intersection(grid) if grid is not None else window
        else:
            answered = window
        if answered is None:  # wholly beyond the grid or block: 422, or an empty location
            if options.tilemap_422 != "never":
                return None
            return {"adjusted": True, "location": {"left": col, "top": row, "width": 0,
                                                   "height": 0}, "valid": True, "data": []}
        data = [1 if self.has_tile(level, r, c) else 0
                for r in range(answered.row_min, answered.row_max + 1)
                for c in range(answered.col_min, answered.col_max + 1)]
        if not any(data) and (options.tilemap_422 == "answered" or (
                options.tilemap_422 == "window" and not any(
                    self.has_tile(level, r, c) for r, c in _tiles(window)))):
            return None
        location = {"left": answered.col_min, "top": answered.row_min,
                    "width": answered.col_max - answered.col_min + 1,
                    "height": answered.row_max - answered.row_min + 1}
        return {"adjusted": answered != window, "location": location, "valid": True,
                "data": data}

    def recorded(self, kind: str) -> Optional[tuple[int, bytes, str]]:
        """(status, body, content type) to answer requests of `kind` with instead; None here."""
        return None

    def description(self, options: ServerOptions) -> dict:
        """The service JSON (esri-formats §7.1) before `json_overrides`."""
        scheme = self.source.scheme
        sr = scheme.spatial_reference.to_json()
        capabilities = "Map,Query,Data,TilesOnly" if self.kind == "MapServer" else (
            "Image,Metadata,TilesOnly"
        )
        data: dict = {
            "currentVersion": CURRENT_VERSION,
            "serviceDescription": f"Cache {self.source.name} served by arcgis_rest_server.py",
        }
        if self.kind == "MapServer":
            data["mapName"] = "Layers"
        else:
            data["name"] = self.name
        data.update(
            capabilities=capabilities + (",Tilemap" if options.tilemap else ""),
            singleFusedMapCache=True,
            spatialReference=sr,
            tileInfo={
                **package_metadata.tile_info(scheme),
                "spatialReference": sr,
                "storageFormat": scheme.storage_format.value,
            },
        )
        if self.full_extent is not None:
            data["initialExtent"] = {**self.initial_extent.as_dict(), "spatialReference": sr}
            data["fullExtent"] = {**self.full_extent.as_dict(), "spatialReference": sr}
        data.update(
            minScale=scheme.lods[0].scale,
            maxScale=scheme.lods[-1].scale,
            minLOD=scheme.lods[0].level,
            maxLOD=scheme.lods[-1].level,
            units="esriDecimalDegrees" if scheme.spatial_reference.is_geographic else "esriMeters",
            supportedImageFormatTypes=scheme.tile_format,
            exportTilesAllowed=options.export_tiles_allowed,
            maxExportTilesCount=options.max_export_tiles_count,
            exportTileCacheCompactV2Allowed=True,  # its jobs make .tpkx as well as .tpk
        )
        if self.kind == "ImageServer":
            data.update(serviceDataType="esriImageServiceDataTypeRGB", bandCount=3)
            if "fullExtent" in data:
                data["extent"] = data["fullExtent"]
        return data


class _RateWindow:
    """Requests served in the last second, over all URLs (rejected ones are not counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: deque[float] = deque()

    def admit(self, rate: float) -> bool:
        if rate <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            while self._times and self._times[0] <= now - 1.0:
                self._times.popleft()
            if len(self._times) >= rate:
                return False
            self._times.append(now)
            return True


class _FaultCounter:
    """Requests seen per faulty URL, so a fault can stop after `fault_attempts`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple, int] = {}

    def take(self, key: tuple, attempts: int) -> bool:
        with self._lock:
            seen = self._counts.get(key, 0)
            self._counts[key] = seen + 1
            return seen < attempts

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


class ArcGISRestServer:
    """Serves caches as ArcGIS REST tile services on a loopback port, in a background thread.

    `services` maps "Name", "Folder/Name" or "Name/ImageServer" to a cache path (dataset folder,
    conf.xml, .tpk or .tpkx), or to a `_Service` of another kind (tests/replay_service.py); a
    name without a type is a MapServer.
    """

    def __init__(
        self,
        services: dict[str, str],
        options: Optional[ServerOptions] = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.options = options or ServerOptions()
        if self.options.fault == "gzip_bomb":
            _gzip_bomb()  # seconds of compression, done before any client waits for it
        self.log = RequestLog()
        self.host, self.port = host, port
        self._by_key: dict[str, _Service] = {}
        self._services: dict[tuple[str, str], _Service] = {}
        for key, path in services.items():
            parts = key.strip("/").split("/")
            kind = parts.pop() if parts[-1] in SERVICE_TYPES else "MapServer"
            name = "/".join(parts)
            if not name or len(parts) > 2 or not all(parts) or (name, kind) in self._services:
                raise ValueError(
                    f"bad or duplicate service name {key!r}: use Name, Folder/Name, optionally "
                    "followed by /MapServer or /ImageServer"
                )
            if isinstance(path, _Service):  # made elsewhere: it takes the name it is served as
                path.name, path.kind = name, kind
            service = self._services[(name, kind)] = (
                path if isinstance(path, _Service) else _Service(name, kind, str(path)))
            self._by_key[key] = self._by_key[f"{name}/{kind}"] = service
            if kind == "MapServer" or name not in self._by_key:
                self._by_key[name] = service  # a bare name means its MapServer if it has one
        self._folders = sorted({name.split("/")[0] for name, _ in self._services if "/" in name})
        self._rate = _RateWindow()
        self._faults = _FaultCounter()
        self._stopping = threading.Event()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.jobs = export_tiles_jobs.ExportJobs(_core_module, lambda: self.options, self._pause)

    def start(self) -> ArcGISRestServer:
        """Open the caches and listen; returns self so `server = ArcGISRestServer(...).start()`."""
        if self._httpd is not None:
            return self
        opened = []
        try:
            for service in self._services.values():
                service.open()
                opened.append(service)
            self._stopping.clear()
            self._httpd = _HTTPServer((self.host, self.port), self)
        except BaseException:
            for service in opened:
                service.close()
            raise
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"arcgis-rest-server:{self._httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, cut open connections, end latency/hang sleeps, close the caches."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.drop_connections()
        self._thread.join()
        self.log.wait_idle(5.0)
        self.jobs.close()
        for service in self._services.values():
            service.close()
        self._httpd = self._thread = None

    def __enter__(self) -> ArcGISRestServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{SERVICES_PATH}"

    def service_url(self, name: str) -> str:
        service = self._by_key[name]
        return f"{self.base_url}/{service.name}/{service.kind}"

    def reset_faults(self) -> None:
        """Forget how often each faulty URL was requested, so faults start over."""
        self._faults.clear()

    # Request handling (called from the handler threads).

    def _route(self, path: str) -> _Route:
        if path.startswith(DIRECTORIES_PATH + "/"):
            return _Route("download", args=tuple(
                unquote(p) for p in path[len(DIRECTORIES_PATH) + 1:].split("/") if p))
        if path != SERVICES_PATH and not path.startswith(SERVICES_PATH + "/"):
            return _Route("other")
        parts = [unquote(p) for p in path[len(SERVICES_PATH):].split("/") if p]
        for i, part in enumerate(parts):
            if part in SERVICE_TYPES:
                service = self._services.get(("/".join(parts[:i]), part))
                rest = parts[i + 1:]
                if service is None:
                    return _Route("other")
                if not rest:
                    return _Route("service", service)
                if rest[0] in ("tile", "tilemap"):
                    return _Route(rest[0], service, tuple(rest[1:]))
                if rest[0] in ("exportTiles", "estimateExportTilesSize", "jobs"):
                    return _Route("job", service, tuple(rest))
                return _Route("other", service)
        folder = "/".join(parts)
        return _Route("other", folder=folder if folder in ("", *self._folders) else None)

    def _answer(
        self, route: _Route, query: dict[str, str], headers: HTTPMessage
    ) -> Optional[_Reply]:
        """The reply to one request; None when the server stopped while the request waited."""
        options = self.options
        admitted = self._rate.admit(options.rate_limit)
        if not self._pause(options.latency):
            return None
        if not admitted:
            return _error(429, "Too Many Requests", _retry_after(options.retry_after or 1))
        denied = _check_auth(options, query, headers)
        if denied is not None:
            return denied
        recorded = route.service.recorded(route.kind) if route.service is not None else None
        if recorded is not None:  # what a real server answered (tests/replay_service.py)
            return _Reply(*recorded)
        pretty = query.get("f") == "pjson"
        if route.kind == "service":
            data = route.service.description(options)
            for key, value in options.json_overrides.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            return _json(data, pretty)
        if route.kind in ("tile", "tilemap"):
            return self._tile_answer(route, query, options, pretty)
        if route.kind == "job":
            return self._job_answer(route, query, headers, pretty)
        if route.kind == "download":
            return self._download(route.args, query, headers)
        if route.folder is not None:
            return _json(self._catalog(route.folder), pretty)
        return _error(404, "Not Found")

    def _catalog(self, folder: str) -> dict:
        services = [
            {"name": name, "type": kind}
            for name, kind in sorted(self._services)
            if (name.split("/")[0] if "/" in name else "") == folder
        ]
        folders = self._folders if not folder else []
        return {"currentVersion": CURRENT_VERSION, "folders": folders, "services": services}

    def _tile_answer(
        self, route: _Route, query: dict[str, str], options: ServerOptions, pretty: bool
    ) -> Optional[_Reply]:
        is_tile = route.kind == "tile"
        if not is_tile and not options.tilemap:
            return _error(400, "Tilemap not supported")
        numbers = _numbers(route.args, 3 if is_tile else 5)
        if numbers is None:
            return _error(400, "Invalid URL")
        level, row, col = numbers[:3]
        fault = None
        if (
            options.fault is not None
            and (is_tile or options.fault_tilemap)
            and options.selects(level, row, col)
            and self._faults.take((route.service.name, route.kind, *numbers),
                                  options.fault_attempts)
        ):
            fault = options.fault
            if fault in ("500", "503", "429", "json200", "html"):
                return _fault_reply(fault, options)
            if fault == "hang" and not self._pause(options.hang_seconds):
                return None
        try:
            reply = self._tile(route.service, numbers, query, options, pretty)
        except errors.CacheError as exc:
            return _error(500, str(exc))
        if reply.status == 200 and fault in ("notimage", "truncated", "short"):
            reply = _damaged(reply, fault)
        if reply.status == 200 and fault in HOSTILE:
            reply = _Reply(200, reply.body, reply.content_type, reply.headers, hostile=fault)
        return reply

    def _tile(
        self, service: _Service, numbers: tuple[int, ...], query: dict[str, str],
        options: ServerOptions, pretty: bool,
    ) -> _Reply:
        if len(numbers) == 5:
            tilemap = service.tilemap(numbers, options)
            if tilemap is None:
                return _error(422, "Tiles not present")
            return _json(tilemap, pretty)
        data = service.tile(*numbers)
        if data is not None:
            return _Reply(200, data, _image_type(data))
        blank_allowed = query.get("blankTile", "").lower() != "false"
        if options.blank_tiles and (blank_allowed or options.ignore_blank_tile_param):
            return _Reply(200, service.blank, "image/png", {"blank-tile": "true"})
        return _missing_tile(options.missing_tile_body)

    def _job_answer(self, route: _Route, query: dict[str, str], headers: HTTPMessage,
                    pretty: bool) -> _Reply:
        """exportTiles, estimateExportTilesSize and jobs/<id>[/cancel|/results/<name>]."""
        jobs, args = self.jobs, route.args
        if args[0] == "exportTiles":
            status, data = jobs.submit(route.service, query)
            return _json(data, pretty) if status == 200 else _Reply(
                200, _dumps(data), JSON_TYPE)  # ArcGIS answers errors with HTTP 200
        if args[0] == "estimateExportTilesSize":
            status, data = jobs.estimate(route.service, query)
            return _json(data, pretty)
        job = jobs.job(args[1]) if len(args) > 1 else None
        if job is None or job.service is not route.service:
            return _json({"error": {"code": 400, "message": "Invalid or missing input "
                                    "parameters.", "details": ["Job not found."]}})
        folder_url = f"http://{headers.get('Host')}{DIRECTORIES_PATH}/{job.id}"
        if args[2:] == ("cancel",):
            return _json(jobs.cancel(job), pretty)
        if args[2:] == ("results", "out_service_url") and job.status == "esriJobSucceeded":
            return _json({"paramName": "out_service_url", "dataType": "GPString",
                          "value": folder_url}, pretty)
        if len(args) == 2:
            data = job.json()
            if self.options.job_hosted and job.status == "esriJobSucceeded":
                data.pop("results", None)
                name = job.file.name if job.file is not None else ""
                data["output"] = {"outputUrl": [f"{folder_url}/{name}"]}
            return _json(data, pretty)
        return _error(404, "Not Found")

    def _download(self, args: tuple[str, ...], query: dict[str, str], headers: HTTPMessage
                  ) -> _Reply:
        """The job's output folder (f=json: its listing) and its files, with HTTP Range; a
        download is cut halfway while `drop_downloads` says so."""
        job = self.jobs.job(args[0]) if args else None
        if job is None or job.folder is None:
            return _error(404, "Not Found")
        wanted = self.options.download_token
        if wanted is not None:
            header = (headers.get("X-Esri-Authorization") or "").split(None, 1)
            given = {query.get("token", ""), header[1].strip() if len(header) == 2 else ""}
            if wanted not in given:
                return _json({"error": {"code": 499, "message": "Token Required",
                                        "details": []}})
        if len(args) == 1:
            return _json(self.jobs.listing(job))
        path = self.jobs.file(job, list(args[1:]))
        if path is None:
            return _error(404, "Not Found")
        data = path.read_bytes()
        start, status, extra = 0, 200, {"Accept-Ranges": "bytes"}
        asked = (headers.get("Range") or "").strip()
        end = len(data) - 1
        first, _, last = asked[6:].partition("-")
        if asked.startswith("bytes=") and first.isdigit():
            start = int(first)
            if start >= len(data):
                return _error(416, "Range Not Satisfiable")
            end = min(end, int(last)) if last.isdigit() else end
            status = 206
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        if self.jobs.take_drop():  # the connection drops after half of the body
            return _Reply(status, body[:len(body) // 2], "application/octet-stream", extra,
                          declared_length=len(body))
        return _Reply(status, body, "application/octet-stream", extra)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless the server stops meanwhile; False if it did."""
        return seconds <= 0 or not self._stopping.wait(seconds)


class _HTTPServer(ThreadingHTTPServer):
    """Keeps the open connections so stop() can cut idle keep-alive ones."""

    daemon_threads = True
    request_queue_size = 128  # bursts of parallel clients must not overflow the listen backlog

    def __init__(self, address: tuple[str, int], owner: ArcGISRestServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every reply has a Content-Length
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server_version = "arcgis-rest-server"
    timeout = 60  # idle keep-alive connections end eventually
    server: _HTTPServer

    def do_POST(self) -> None:
        """A form-encoded POST (clients post a long exportTiles areaOfInterest) is answered
        like a GET with the form's fields in the query."""
        length = int(self.headers.get("Content-Length") or 0)
        self.do_GET(self.rfile.read(length).decode("utf-8") if length else "")

    def do_GET(self, form: str = "") -> None:
        owner = self.server.owner
        started = time.monotonic()
        owner.log._begin()
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        query.update(parse_qsl(form, keep_blank_values=True))
        route = owner._route(url.path)
        reply, status = None, 500
        try:
            reply = owner._answer(route, query, self.headers)
            status = reply.status if reply is not None else 0
        finally:
            # Logged before the reply is written: a client that got its answer finds it logged.
            numbers = [int(a) if a.isascii() and a.isdigit() else None for a in route.args[:3]]
            numbers += [None] * (3 - len(numbers))
            owner.log._end(
                RequestRecord(
                    started=started,
                    finished=time.monotonic(),
                    method=self.command,
                    path=url.path,
                    query=query,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    status=status,
                    kind=route.kind,
                    level=numbers[0],
                    row=numbers[1],
                    col=numbers[2],
                )
            )
        if reply is None:  # the server stopped while the request waited
            self.close_connection = True
            return
        try:
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, reply: _Reply) -> None:
        if reply.hostile is not None:
            self._send_hostile(reply)
            return
        length = len(reply.body) if reply.declared_length is None else reply.declared_length
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(length))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
        if reply.declared_length is not None:
            self.close_connection = True

    def _send_hostile(self, reply: _Reply) -> None:
        """A tile's headers, then a body meant to exhaust the client (memory, time): sent until
        the client hangs up or the server stops."""
        owner, kind = self.server.owner, reply.hostile
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", reply.content_type)
        if kind == "gzip_bomb":
            body = _gzip_bomb()
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
        elif kind == "oversized":
            body = reply.body + bytes(OVERSIZED_BYTES - len(reply.body))
            self.send_header("Content-Length", str(len(body)))
        elif kind == "huge_length":
            body = reply.body
            self.send_header("Content-Length", str(HUGE_LENGTH))
        elif kind == "trickle":
            body = reply.body
            self.send_header("Content-Length", str(len(body)))
        else:  # endless: no length, the connection's end would end the body
            body = b""
        self.end_headers()
        self.wfile.flush()
        if kind == "trickle":
            for byte in body:
                if owner._stopping.wait(1.0):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return
        self.wfile.write(body)
        if kind == "endless":
            chunk = reply.body + bytes(1 << 16)
            while not owner._stopping.is_set():
                self.wfile.write(chunk)
        elif kind == "huge_length":
            self.wfile.flush()
            owner._stopping.wait(owner.options.hang_seconds)

    def log_message(self, format: str, *args) -> None:
        """Quiet: the RequestLog records requests; stderr would drown test and bench output."""


def _numbers(args: tuple[str, ...], count: int) -> Optional[tuple[int, ...]]:
    """Decimal level/row/col[/width/height]; None if malformed (widths must be > 0)."""
    if len(args) != count or not all(a.isascii() and a.isdigit() for a in args):
        return None
    numbers = tuple(int(a) for a in args)
    return numbers if count == 3 or min(numbers[3:]) > 0 else None


def _check_auth(
    options: ServerOptions, query: dict[str, str], headers: HTTPMessage
) -> Optional[_Reply]:
    """The rejection for a request without the required credentials, else None."""
    if options.basic_auth is not None:
        scheme, _, encoded = (headers.get("Authorization") or "").partition(" ")
        try:
            given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            given = None
        if scheme.lower() != "basic" or given != ":".join(options.basic_auth):
            return _error(401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="arcgis"'})
    if options.token is not None:
        tokens = []
        header = (headers.get("X-Esri-Authorization") or "").split(None, 1)
        if len(header) == 2 and header[0].lower() == "bearer":
            tokens.append(header[1].strip())
        if query.get("token"):
            tokens.append(query["token"].strip())
        if not tokens:
            return _json({"error": {"code": 499, "message": "Token Required", "details": []}})
        if options.token not in tokens:
            return _json({"error": {"code": 498, "message": "Invalid Token", "details": []}})
    return None


def _fault_reply(fault: str, options: ServerOptions) -> _Reply:
    if fault == "500":
        return _error(500, "Internal Server Error")
    if fault == "503":
        headers = _retry_after(options.retry_after) if options.retry_after is not None else {}
        return _error(503, "Service Unavailable", headers)
    if fault == "429":
        return _error(429, "Too Many Requests", _retry_after(options.retry_after or 1))
    if fault == "json200":
        body = {"error": {"code": 500, "message": "Error exporting tile", "details": []}}
        return _Reply(200, _dumps(body), "text/plain;charset=utf-8")
    return _Reply(200, FAULT_HTML, "text/html; charset=utf-8")


@functools.lru_cache(maxsize=1)
def _gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(BOMB_BYTES >> 20)]
    return b"".join(parts) + compressor.flush()


def _missing_tile(body: str) -> _Reply:
    """ArcGIS answers a missing tile with 404 and a JSON error; other servers differ."""
    if body == "json":
        return _error(404, "Tile not found")
    if body == "plain":
        return _error(404, "Tile not found", content_type="text/plain")
    if body == "html":
        return _Reply(404, b"<html><body><h1>404 Not Found</h1></body></html>",
                      "text/html; charset=utf-8")
    return _Reply(404, b"", "text/plain")


def _tiles(window) -> list[tuple[int, int]]:
    return [(r, c) for r in range(window.row_min, window.row_max + 1)
            for c in range(window.col_min, window.col_max + 1)]


def _damaged(reply: _Reply, fault: str) -> _Reply:
    if fault == "notimage":
        return _Reply(200, reply.body, "application/octet-stream", reply.headers)
    half = reply.body[: len(reply.body) // 2]
    if fault == "truncated":
        return _Reply(200, half, reply.content_type, reply.headers)
    return _Reply(200, half, reply.content_type, reply.headers, declared_length=len(reply.body))


def _json(data: dict, pretty: bool = False) -> _Reply:
    return _Reply(200, _dumps(data, pretty), JSON_TYPE)


def _dumps(data: dict, pretty: bool = False) -> bytes:
    """Compact like ArcGIS (`{"a":1}`), indented for f=pjson."""
    if pretty:
        return json.dumps(data, indent=2).encode()
    return json.dumps(data, separators=(",", ":")).encode()


def _error(
    code: int, message: str, headers: Optional[dict[str, str]] = None,
    content_type: str = JSON_TYPE,
) -> _Reply:
    body = _dumps({"error": {"code": code, "message": message, "details": []}})
    return _Reply(code, body, content_type, headers or {})


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": "%d" % seconds if float(seconds).is_integer() else "%g" % seconds}


def _image_type(data: bytes) -> str:
    for magic, content_type in IMAGE_TYPES:
        if data.startswith(magic):
            return content_type
    return "application/octet-stream"


def blank_png(width: int, height: int) -> bytes:
    """A fully transparent RGBA PNG, what servers send for missing tiles in blank-tile mode."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = (b"\x00" + b"\x00" * 4 * width) * height
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", metavar="CACHE",
                        help="cache dataset folder, conf.xml, .tpk or .tpkx")
    parser.add_argument("--name", help="service name (one CACHE only; default: the cache's name)")
    parser.add_argument("--port", type=int, default=0, help="default 0: any free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--no-tilemap", action="store_true", help="no Tilemap capability")
    parser.add_argument("--tilemap-clip", choices=TILEMAP_CLIPS, default="bundle",
                        help="how tilemap windows are clipped (default: bundle, the spec's)")
    parser.add_argument("--tilemap-block", type=int, default=8,
                        help="block size for --tilemap-clip block")
    parser.add_argument("--tilemap-422", choices=TILEMAP_422S, default="window",
                        help="when a tilemap answers 422 (answered: Esri BUG-000158087)")
    parser.add_argument("--missing-tile-body", choices=MISSING_TILE_BODIES, default="json",
                        help="body of the 404 for a missing tile (default: ArcGIS's JSON)")
    parser.add_argument("--blank-tiles", action="store_true", help="blank PNG for missing tiles")
    parser.add_argument("--rate-limit", type=float, default=0.0, help="requests per second")
    parser.add_argument("--retry-after", type=float, help="Retry-After seconds on 429/503")
    parser.add_argument("--fault", choices=FAULTS, help="what faulty tile requests get")
    parser.add_argument("--fault-fraction", type=float, default=1.0,
                        help="fraction of tiles that get --fault (default 1: all)")
    parser.add_argument("--fault-attempts", type=int, default=1,
                        help="requests per faulty tile that fail before it is served")
    parser.add_argument("--ready-file", help="write the first service URL here when listening")
    parser.add_argument("--export-tiles", action="store_true",
                        help="exportTilesAllowed: run exportTiles jobs (export_tiles_jobs.py)")
    parser.add_argument("--max-export-tiles", type=int, default=100000,
                        help="maxExportTilesCount: the most tiles one job may export")
    parser.add_argument("--job-latency", type=float, default=0.0,
                        help="seconds a job waits before it builds its package")
    parser.add_argument("--request-log", help="on exit, write every request answered here "
                        "(JSON lines: started, finished, kind, status, path, query)")
    args = parser.parse_args(argv)
    if args.name and len(args.caches) > 1:
        parser.error("--name needs exactly one CACHE")

    services: dict[str, str] = {}
    for path in args.caches:
        try:
            name = args.name or _cache_name(path)
        except errors.CacheError as exc:
            parser.error(str(exc))
        if name in services:
            parser.error(f"two caches are named {name!r}: serve them one at a time with --name")
        services[name] = path
    options = ServerOptions(
        latency=args.latency,
        tilemap=not args.no_tilemap,
        tilemap_clip=args.tilemap_clip,
        tilemap_block=args.tilemap_block,
        tilemap_422=args.tilemap_422,
        missing_tile_body=args.missing_tile_body,
        blank_tiles=args.blank_tiles,
        rate_limit=args.rate_limit,
        retry_after=args.retry_after,
        fault=args.fault,
        fault_fraction=args.fault_fraction if args.fault else 0.0,
        fault_attempts=args.fault_attempts,
        export_tiles_allowed=args.export_tiles,
        max_export_tiles_count=args.max_export_tiles,
        job_latency=args.job_latency,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with ArcGISRestServer(services, options, port=args.port) as server:
        urls = [server.service_url(name) for name in services]
        if args.ready_file:  # written whole (rename), before stdout, so waiters can rely on it
            temp = f"{args.ready_file}.{os.getpid()}.tmp"
            Path(temp).write_text(urls[0] + "\n", encoding="utf-8")
            os.replace(temp, args.ready_file)
        for url in urls:
            print(f"SERVICE {url}")
        sys.stdout.flush()
        stop.wait()
    if args.request_log:
        with open(args.request_log, "w", encoding="utf-8") as log:
            for entry in server.log.entries():
                log.write(json.dumps({"started": entry.started, "finished": entry.finished,
                                      "kind": entry.kind, "status": entry.status,
                                      "path": entry.path, "query": entry.query}) + "\n")
    return 0


def _cache_name(path: str) -> str:
    source = local_cache.open_cache(path)
    source.close()
    return source.name


if __name__ == "__main__":
    sys.exit(main())
