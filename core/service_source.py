"""An ArcGIS REST MapServer/ImageServer tile service as a cache source.

The service's bundles are the ones its extent (or the export's window) touches; a bundle is
downloaded when the exporter opens it: the tilemap (where the service has one) says which of the
wanted tiles exist, the tiles are fetched in parallel on the transport's threads and spooled to a
temporary file as size-prefixed records, so the bundle then reads like a local compact bundle.
"""
from __future__ import annotations

import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Optional, Union

from .bundle_records import PREFIX, RecordFileReader
from .cache_source import CacheSource, safe_name
from .cache_storage import Layout, Wanted, level_folder
from .errors import CacheError, ExportCanceled
from .http_client import FetchPolicy, ServiceAuthError, ServiceClient, TileFailed, Transport
from .service_json import parse_extent, scheme_from_service_json
from .service_url import ServiceUrl, parse_service_url
from .tiling_scheme import TileRange, TilingScheme, bundle_range

TILEMAP_BLOCK = 32  # tilemap windows are aligned to this, so never cross a bundle (spec §7.3)


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


def open_service(text: str, transport: Transport, token: Optional[str] = None,
                 policy: Optional[FetchPolicy] = None) -> CacheSource:
    """Read the service JSON and return the service as a cache source (spec §7.1)."""
    url = parse_service_url(text)
    client = ServiceClient(url, transport, token or url.token, policy or FetchPolicy())
    try:
        service = client.json()
        scheme, info = _describe(service, url)
    except BaseException:
        client.cancel()
        raise
    layout = ServiceLayout(client, scheme, info)
    return CacheSource(
        name=safe_name(url.name),
        scheme=scheme,
        layout=layout,
        data_extent=scheme.full_extent,
        location=url.base,
        is_package=False,
        service=info,
    )


def _describe(service: dict, url: ServiceUrl) -> tuple[TilingScheme, ServiceInfo]:
    what = f"The service {url}"
    tile_info = service.get("tileInfo")
    tile_format = str(tile_info.get("format", "")) if isinstance(tile_info, dict) else ""
    if tile_format.upper().startswith("LERC"):  # elevation caches: rasters, not images
        raise CacheError(
            f"{what} serves elevation rasters ({tile_format} tiles), not an image cache: its "
            "tiles are not images, so they cannot be exported as a map cache.")
    if service.get("singleFusedMapCache") is False or "tileInfo" not in service:
        raise CacheError(
            f"{what} has no tile cache (singleFusedMapCache is false or tileInfo is missing): "
            "it draws maps on demand, so there are no tiles to export. Use a cached (tiled) "
            "map or image service."
        )
    tile_info = dict(service["tileInfo"]) if isinstance(service["tileInfo"], dict) else {}
    if str(tile_info.get("format", "")).upper() == "JPGPNG":
        tile_info["format"] = "MIXED"  # image services' name for MIXED
    extent = parse_extent(service.get("fullExtent")) or parse_extent(service.get("extent"))
    scheme = scheme_from_service_json(
        {**service, "tileInfo": tile_info, "fullExtent": extent and extent.as_dict()}, what)
    levels = scheme.levels
    min_level = _int(service.get("minLOD"), levels[0])
    max_level = _int(service.get("maxLOD"), levels[-1])
    capabilities = {c.strip().lower() for c in str(service.get("capabilities", "")).split(",")}
    allowed = service.get("exportTilesAllowed")
    info = ServiceInfo(
        url=url,
        tilemap="tilemap" in capabilities,
        export_tiles_allowed=allowed if isinstance(allowed, bool) else None,
        max_export_tiles_count=_int(service.get("maxExportTilesCount"), None),
        min_level=min_level,
        max_level=max_level,
        tile_format=scheme.tile_format,
    )
    return scheme, info


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class ServiceLayout(Layout):
    """The service's levels and bundles; `open_bundle` downloads a bundle's wanted tiles."""

    def __init__(self, client: ServiceClient, scheme: TilingScheme, info: ServiceInfo):
        self.store = client  # closed with the source
        self.prefix = ""
        self.client, self.scheme, self.info = client, scheme, info
        self._tilemap = info.tilemap
        self._tilemaps: dict[tuple[int, TileRange], tuple[frozenset, TileRange]] = {}
        # tiles fetched while estimating, kept so that the export does not ask for them again
        self._fetched: dict[tuple[int, int, int], Union[Optional[bytes], TileFailed]] = {}
        self._lock = threading.Lock()

    @property
    def tilemap_usable(self) -> bool:
        """The service has a tilemap and it has answered sensibly so far."""
        return self._tilemap

    def tiles_received(self) -> int:
        return self.client.tiles

    def levels(self) -> dict[int, str]:
        return {level: level_folder(level) for level in self.scheme.levels
                if self.info.min_level <= level <= self.info.max_level}

    def area(self, level: int, window: Optional[TileRange]) -> Optional[TileRange]:
        """The tiles worth asking for: the window within the service's extent."""
        extent = self.scheme.full_extent
        full = self.scheme.tile_range(level, extent) if extent is not None else None
        if full is None:
            return window
        return full if window is None else window.intersection(full)

    def bundle_keys(self, level: int, window: Optional[TileRange]) -> list[tuple[int, int]]:
        area = self.area(level, window)
        if area is None:
            raise CacheError(
                f"The service {self.info.url} states no full extent, so the tiles of level "
                f"{level} cannot be listed: give an EXPORT_EXTENT or an AREA_OF_INTEREST.")
        return list(area.bundles())

    def cancel(self) -> None:
        self.client.cancel()

    def idle(self) -> None:
        self.client.transport.idle()

    def present(self, level: int, keys: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Which of `keys` (tiles of one bundle) the service has, by tilemap where it can tell;
        without a tilemap every key is a candidate (a 404 will say it is absent)."""
        if not keys or not self._tilemap:
            return keys
        rows = [r for r, _ in keys]
        cols = [c for _, c in keys]
        top, left = _align(min(rows)), _align(min(cols))
        window = TileRange(top, _align(max(rows)) + TILEMAP_BLOCK - 1,
                           left, _align(max(cols)) + TILEMAP_BLOCK - 1)
        answer = self._tilemap_window(level, window)
        if answer is None:
            return keys
        found, covered = answer
        return [key for key in keys if key in found or not covered.contains(*key)]

    def _tilemap_window(self, level: int, window: TileRange
                        ) -> Optional[tuple[frozenset, TileRange]]:
        """Present tiles and the part of `window` the tilemap answered for (cached)."""
        key = (level, window)
        with self._lock:
            if key in self._tilemaps:
                return self._tilemaps[key]
        height = window.row_max - window.row_min + 1
        width = window.col_max - window.col_min + 1
        try:
            transport = self.client.transport
            answer = transport.result(transport.submit(
                self.client.tilemap, level, window.row_min, window.col_min, height, width))
        except ServiceAuthError:
            raise
        except (TileFailed, CacheError, ValueError):
            self._tilemap = False  # the service's tilemap is unusable: ask for every tile
            return None
        parsed = (frozenset(), window) if answer is None else _tilemap_tiles(answer, window)
        if parsed is None:
            self._tilemap = False
            return None
        with self._lock:
            self._tilemaps[key] = parsed
        return parsed

    def wanted_tiles(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted]
                     ) -> list[tuple[int, int]]:
        """The bundle's tiles in the export; with a tilemap the whole bundle is looked at,
        since a cache may hold tiles a little beyond the extent its service states."""
        block: Optional[TileRange] = bundle_range(brow, bcol)
        area = None if self._tilemap else self.area(level, None)
        if area is not None:
            block = block.intersection(area)
        if block is None:
            return []
        return [(row, col) for row in range(block.row_min, block.row_max + 1)
                for col in range(block.col_min, block.col_max + 1)
                if wanted is None or wanted(row, col)]

    def fetch_samples(self, level: int, keys: list[tuple[int, int]]) -> list[Optional[bytes]]:
        """Tiles fetched now and kept for the export (None: no such tile); a tile that keeps
        failing is skipped here and reported by the export."""
        transport = self.client.transport
        futures = [transport.submit(self.client.tile, level, *key) for key in keys]
        found = []
        for key, future in zip(keys, futures):
            try:
                data = transport.result(future)
            except TileFailed as exc:
                data = exc
            with self._lock:
                self._fetched[(level, *key)] = data
            if not isinstance(data, TileFailed):
                found.append(data)
        return found

    def _take_fetched(self, level: int, keys: list[tuple[int, int]]) -> dict:
        with self._lock:
            return {key: self._fetched.pop((level, *key)) for key in keys
                    if (level, *key) in self._fetched}

    def open_bundle(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted] = None
                    ) -> Optional[DownloadedBundle]:
        keys = self.present(level, self.wanted_tiles(level, brow, bcol, wanted))
        if not keys:
            return None
        bundle = DownloadedBundle(self.client)
        try:
            bundle.download(level, keys, self._take_fetched(level, keys))
        except BaseException:
            bundle.close()
            raise
        if bundle.present():
            return bundle
        bundle.close()
        return None

    def member_paths(self, level: int, brow: int, bcol: int) -> list[str]:
        return []


def _align(index: int) -> int:
    return index - index % TILEMAP_BLOCK


def _tilemap_tiles(answer: dict, window: TileRange) -> Optional[tuple[frozenset, TileRange]]:
    """The tiles a tilemap answer marks present and the window it answered for (an
    "adjusted" answer covers less); None when the answer is unusable."""
    location = answer.get("location") or {}
    try:
        top = int(location.get("top", window.row_min))
        left = int(location.get("left", window.col_min))
        width = int(location.get("width", window.col_max - window.col_min + 1))
        height = int(location.get("height", window.row_max - window.row_min + 1))
        data = answer["data"]
    except (KeyError, TypeError, ValueError):
        return None
    if (answer.get("valid") is False or not isinstance(data, list) or width < 1 or height < 1
            or len(data) != width * height or (top, left) != (window.row_min, window.col_min)):
        return None
    found = frozenset((top + i // width, left + i % width) for i, flag in enumerate(data) if flag)
    return found, TileRange(top, top + height - 1, left, left + width - 1)


class _Spool:
    """A temporary file of size-prefixed records: appended by one thread, then read."""

    name = "download spool"

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="mapservercache-")  # noqa: SIM115 - close()
        self.size = 0

    def append(self, data: bytes) -> int:
        """Write one record; return the offset of its bytes."""
        self._file.seek(self.size)
        self._file.write(PREFIX.pack(len(data)) + data)
        self.size += PREFIX.size + len(data)
        return self.size - len(data)

    def pread(self, offset: int, length: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(length)

    def close(self) -> None:
        self._file.close()


class DownloadedBundle(RecordFileReader):
    """A bundle's tiles fetched into a spool of size-prefixed records, read like a local
    compact bundle (so record runs are copied the same way)."""

    def __init__(self, client: ServiceClient):
        self._client = client
        self._data = _Spool()
        self._index: dict[tuple[int, int], tuple[int, int]] = {}

    def download(self, level: int, keys: list[tuple[int, int]], fetched: dict) -> None:
        """Fetch `keys` (those in `fetched` came earlier: bytes, None or a failure)."""
        transport, client = self._client.transport, self._client
        in_flight: dict[Future, tuple[int, int]] = {}
        queue = (key for key in keys if key not in fetched)
        limit = 2 * max(1, transport.concurrency)
        failure: Optional[BaseException] = None
        for key, data in fetched.items():
            if isinstance(data, TileFailed):
                client.tally.add(data)
                failure = failure or data
            elif data is not None:
                self._append(key, data)
        while True:
            while failure is None and len(in_flight) < limit:
                key = next(queue, None)
                if key is None:
                    break
                in_flight[transport.submit(client.tile, level, *key)] = key
            if not in_flight:
                break
            done, _ = wait(list(in_flight), timeout=0.05, return_when=FIRST_COMPLETED)
            transport.idle()
            for future in done:
                key = in_flight.pop(future)
                try:
                    data = future.result()
                except TileFailed as exc:
                    client.tally.add(exc)
                    failure = failure or exc
                    continue
                except BaseException as exc:  # canceled, refused credentials: these win
                    if failure is None or isinstance(failure, TileFailed):
                        failure = exc
                    continue
                if data is not None:
                    self._append(key, data)
            if client.stop.is_set():  # requests under way are left to finish on their own
                raise ExportCanceled("The export was stopped.")
        if isinstance(failure, TileFailed):
            raise DownloadFailed(client)
        if failure is not None:
            raise failure

    def _append(self, key: tuple[int, int], data: bytes) -> None:
        self._index[key] = (self._data.append(data), len(data))

    def present(self) -> list[tuple[int, int]]:
        return sorted(self._index)

    def locate(self, row: int, col: int) -> tuple[int, int]:
        return self._index[(row, col)]


class DownloadFailed(CacheError):
    """Tiles that never came; the message counts them (across the run) and says why."""

    def __init__(self, client: ServiceClient):
        super().__init__(client.tally.summary(client.policy.max_attempts))
