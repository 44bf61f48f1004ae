"""An ArcGIS REST MapServer/ImageServer tile service as a cache source.

The service's bundles are the ones its extent (or the export's window) touches; a bundle is
downloaded when the exporter opens it: the tilemap (where the service has one) says which of the
wanted tiles exist, the tiles are fetched in parallel on the transport's threads and spooled
(download_spool.py: in the export's stage when the target keeps them for a resume), so the
bundle then reads like a local compact bundle.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import CacheError, Concern, DownloadFailed, ExportCanceled, ServiceAuthError
from ..formats.layout import Layout, Wanted, level_folder
from ..formats.records import RecordFileReader
from ..grid.json_values import int_or
from ..grid.tiling_scheme import TileRange, TilingScheme, bundle_range
from .download_spool import SPOOL_SUFFIX, DownloadSpool, spool_name
from .http_client import FetchPolicy, ServiceClient, TileFailed, Transport
from .service_json import parse_extent, scheme_from_service_json
from .service_url import ServiceUrl, parse_service_url
from .source import CacheSource, safe_name

LOG = logging.getLogger(__name__)
# Tilemap windows are the 32x32 blocks the ArcGIS JS API asks for: aligned to 32, so they never
# cross a bundle (where servers clip, and where 422 can wrongly mean "none", esri-formats §7.3).
TILEMAP_BLOCK = 32
NOTHING = TileRange(0, -1, 0, -1)  # an empty range: intersects nothing


@dataclass(frozen=True)
class ServiceInfo:
    url: ServiceUrl
    tilemap: bool
    export_tiles_allowed: Optional[bool]
    max_export_tiles_count: Optional[int]
    min_level: int
    max_level: int
    tile_format: str
    compact_v2_allowed: Optional[bool] = None  # exportTileCacheCompactV2Allowed: .tpkx jobs

    def describe(self) -> str:
        allowed = {True: "allowed", False: "not allowed", None: "not stated"}[
            self.export_tiles_allowed]
        limit = self.max_export_tiles_count
        return (
            f"{self.url.kind} at {self.url}: levels {self.min_level}-{self.max_level}, "
            f"{self.tile_format}, tilemap {'yes' if self.tilemap else 'no'}; exportTiles "
            f"{allowed}" + (f", maxExportTilesCount {limit}" if limit is not None else "")
        )


@dataclass
class ServiceSource(CacheSource):
    """A REST tile service as a cache source, with what the service says of itself."""

    info: ServiceInfo

    @property
    def is_service(self) -> bool:
        return True


def open_service(text: str, transport: Transport, token: Optional[str] = None,
                 policy: Optional[FetchPolicy] = None) -> ServiceSource:
    """Read the service JSON and return the service as a cache source (esri-formats §7.1)."""
    url = parse_service_url(text)
    client = ServiceClient(url, transport, token or url.token, policy or FetchPolicy())
    try:
        service = client.json()
        scheme, info = _describe(service, url)
    except BaseException:
        client.cancel()
        raise
    layout = ServiceLayout(client, scheme, info)
    return ServiceSource(
        name=safe_name(url.name),
        scheme=scheme,
        layout=layout,
        data_extent=scheme.full_extent,
        location=url.base,
        is_package=False,
        info=info,
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
    min_level = int_or(service.get("minLOD"), levels[0])
    max_level = int_or(service.get("maxLOD"), levels[-1])
    capabilities = {c.strip().lower() for c in str(service.get("capabilities", "")).split(",")}
    allowed = service.get("exportTilesAllowed")
    info = ServiceInfo(
        url=url,
        tilemap="tilemap" in capabilities,
        export_tiles_allowed=allowed if isinstance(allowed, bool) else None,
        max_export_tiles_count=int_or(service.get("maxExportTilesCount"), None),
        min_level=min_level,
        max_level=max_level,
        tile_format=scheme.tile_format,
        compact_v2_allowed=(service.get("exportTileCacheCompactV2Allowed")
                            if isinstance(service.get("exportTileCacheCompactV2Allowed"), bool)
                            else None),
    )
    return scheme, info


class ServiceLayout(Layout):
    """The service's levels and bundles; `open_bundle` downloads a bundle's wanted tiles."""

    def __init__(self, client: ServiceClient, scheme: TilingScheme, info: ServiceInfo):
        self.store = client  # closed with the source
        self.prefix = ""
        self.client, self.scheme, self.info = client, scheme, info
        self._tilemap = info.tilemap
        # tilemap answers per 32x32 block, kept from the estimate for the export (compact: a
        # window and a bit mask, never a tile list)
        self._tilemaps: dict[tuple[int, int, int], _BlockMap] = {}
        # tiles fetched while estimating, kept so that the export does not ask for them again
        self._fetched: dict[tuple[int, int, int], Union[Optional[bytes], TileFailed]] = {}
        self._lock = threading.Lock()
        self._downloads: Optional[Path] = None

    def keep_downloads(self, folder: Optional[Path]) -> int:
        """Spool each bundle's tiles in `folder` (a file per bundle, see `drop_download`) so
        that a killed export run again need not download them again; returns how many bundles
        have tiles there already."""
        self._downloads = folder
        if folder is None or not folder.is_dir():
            return 0
        return sum(1 for path in folder.iterdir() if path.name.endswith(SPOOL_SUFFIX))

    def drop_download(self, level: int, brow: int, bcol: int) -> None:
        if self._downloads is not None:
            (self._downloads / spool_name(level, brow, bcol)).unlink(missing_ok=True)

    @property
    def tilemap_usable(self) -> bool:
        """The service has a tilemap and it has answered sensibly so far."""
        return self._tilemap

    def tiles_received(self) -> dict[int, int]:
        with self.client.count_lock:
            return dict(self.client.tiles)

    def levels(self) -> dict[int, str]:
        return {level: level_folder(level) for level in self.scheme.levels
                if self.info.min_level <= level <= self.info.max_level}

    def limit(self, level: int, whole_bundles: bool = False) -> Optional[TileRange]:
        """The tiles that can exist at a level (None: nothing says): the world's grid (a client
        asks for no tile beyond it), within the service's full extent, widened to whole bundles
        when a tilemap will tell what they hold (a cache may hold tiles a little beyond the
        extent its service states)."""
        extent = self.scheme.full_extent
        world = self.scheme.world_grid(level)
        if extent is None:
            return world
        full = self.scheme.tile_range(level, extent)
        if full is not None and world is not None:
            full = full.intersection(world)
        if full is None:
            return NOTHING
        if whole_bundles:
            full = full.whole_bundles()
        return full if world is None else full.intersection(world) or NOTHING

    def area(self, level: int, window: Optional[TileRange]) -> Optional[TileRange]:
        """The tiles worth asking for: the window within what can exist; None if nothing."""
        limit = self.limit(level)
        if limit is None:
            if window is None:
                raise CacheError(
                    f"The service {self.info.url} states no full extent, so the tiles of level "
                    f"{level} cannot be listed: give an export extent or an area of interest.",
                    Concern.AREA)
            return window
        return limit if window is None else window.intersection(limit)

    def bundle_keys(self, level: int, window: Optional[TileRange]) -> list[tuple[int, int]]:
        area = self.area(level, window)
        return list(area.bundles()) if area is not None else []

    def cancel(self) -> None:
        self.client.cancel()

    def idle(self) -> None:
        self.client.transport.idle()

    def present(self, level: int, keys: list[tuple[int, int]], keep: bool = False
                ) -> list[tuple[int, int]]:
        """Which of `keys` (tiles of one bundle) the service has, by tilemap where it can tell;
        without a usable tilemap every key inside the service's extent is a candidate (a 404
        will say it is absent). `keep`: the tilemaps asked are kept for the next call with the
        same keys (the estimate's for the export's)."""
        if not keys or not self._tilemap:
            return keys
        windows: dict[tuple[int, int], TileRange] = {}
        for row, col in keys:
            block = (_align(row), _align(col))
            seen = windows.get(block)
            windows[block] = TileRange(row, row, col, col).union(seen)
        maps = self._block_maps(level, windows)
        if maps is not None and keep:
            with self._lock:
                self._tilemaps.update({(level, *block): found for block, found in maps.items()})
        if maps is None:
            limit = self.limit(level)
            return keys if limit is None else [key for key in keys if limit.contains(*key)]
        return [key for key in keys if maps[(_align(key[0]), _align(key[1]))].has(*key)]

    def _block_maps(self, level: int, windows: dict[tuple[int, int], TileRange]
                    ) -> Optional[dict[tuple[int, int], _BlockMap]]:
        """The tilemap of each block's window (from the estimate where it asked the same), or
        None when the service's tilemap turns out unusable."""
        maps: dict[tuple[int, int], _BlockMap] = {}
        with self._lock:
            for block, window in windows.items():
                known = self._tilemaps.pop((level, *block), None)
                if known is not None and known.covers(window):
                    maps[block] = known
        asked = {block: window for block, window in windows.items() if block not in maps}
        answers = self._ask_tilemaps(level, list(asked.values()))
        if answers is None:
            return None
        for block, window in asked.items():
            maps[block] = _BlockMap.of(window, answers)
        return maps

    def _ask_tilemaps(self, level: int, windows: list[TileRange]
                      ) -> Optional[set[tuple[int, int]]]:
        """The present tiles of `windows`, asked in parallel. An answer that covers less than
        its window ("adjusted") is followed by tilemap requests for the rest; every answer
        covers at least one tile more, so this ends. None when the tilemap is unusable."""
        transport, found = self.client.transport, set()
        while windows:
            futures = [transport.submit(self.client.tilemap, level, w.row_min, w.col_min,
                                        w.row_max - w.row_min + 1, w.col_max - w.col_min + 1)
                       for w in windows]
            rest: list[TileRange] = []
            for window, future in zip(windows, futures):
                try:
                    answer = transport.result(future)
                except ServiceAuthError:
                    raise
                except (TileFailed, CacheError, ValueError) as exc:
                    return self._unusable(f"{exc}")
                if answer is None:  # HTTP 422: no tile in the window
                    continue
                parsed = _tilemap_tiles(answer, window)
                if parsed is None:
                    return self._unusable(f"its answer for level {level} window {window} is "
                                          "not a valid tilemap")
                tiles, covered = parsed
                found.update(tiles)
                rest.extend(_difference(window, covered))
            windows = rest
        return found

    def _unusable(self, why: str) -> None:
        if self._tilemap:
            LOG.warning("The service's tilemap is unusable (%s): every tile of the export area "
                        "inside the service's extent is asked for instead.", why)
        self._tilemap = False
        return None

    def wanted_tiles(self, level: int, brow: int, bcol: int, wanted: Optional[Wanted]
                     ) -> list[tuple[int, int]]:
        """The bundle's tiles in the export that can exist (see `limit`)."""
        block: Optional[TileRange] = bundle_range(brow, bcol)
        limit = self.limit(level, whole_bundles=self._tilemap)
        if limit is not None:
            block = block.intersection(limit)
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
        path = None if self._downloads is None else self._downloads / spool_name(level, brow,
                                                                                  bcol)
        spool = DownloadSpool(path, bundle_range(brow, bcol), self.client.policy.max_tile_bytes)
        bundle = DownloadedBundle(self.client, spool)
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


def _tilemap_tiles(answer: dict, window: TileRange
                   ) -> Optional[tuple[list[tuple[int, int]], TileRange]]:
    """The tiles of `window` a tilemap answer marks present and the part of the window it
    answered for (an "adjusted" answer covers less: clipped at a bundle, a block or the grid's
    edge; one clipped to an empty location says there is nothing, as ArcGIS clients read it);
    None when the answer is unusable or covers nothing of the window."""
    location = answer.get("location") or {}
    try:
        top = int(location.get("top", window.row_min))
        left = int(location.get("left", window.col_min))
        width = int(location.get("width", window.col_max - window.col_min + 1))
        height = int(location.get("height", window.row_max - window.row_min + 1))
        data = answer["data"]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if answer.get("valid") is False or not isinstance(data, list) or width < 0 or height < 0:
        return None
    if width == 0 or height == 0:  # clipped to nothing (beyond the server's grid): no tile
        return [], window
    if len(data) != width * height:
        return None
    covered = window.intersection(TileRange(top, top + height - 1, left, left + width - 1))
    if covered is None:
        return None
    found = [(row, col) for row in range(covered.row_min, covered.row_max + 1)
             for col in range(covered.col_min, covered.col_max + 1)
             if data[(row - top) * width + col - left]]
    return found, covered


def _difference(window: TileRange, covered: TileRange) -> list[TileRange]:
    """`window` less `covered` (a part of it) as up to four rectangles."""
    parts = [TileRange(window.row_min, covered.row_min - 1, window.col_min, window.col_max),
             TileRange(covered.row_max + 1, window.row_max, window.col_min, window.col_max),
             TileRange(covered.row_min, covered.row_max, window.col_min, covered.col_min - 1),
             TileRange(covered.row_min, covered.row_max, covered.col_max + 1, window.col_max)]
    return [p for p in parts if p.row_min <= p.row_max and p.col_min <= p.col_max]


@dataclass(frozen=True)
class _BlockMap:
    """The present tiles of one window inside a 32x32 block, as a bit mask."""

    window: TileRange
    mask: int

    @classmethod
    def of(cls, window: TileRange, present: set[tuple[int, int]]) -> _BlockMap:
        width, mask = window.col_max - window.col_min + 1, 0
        for row, col in present:
            if window.contains(row, col):
                mask |= 1 << ((row - window.row_min) * width + col - window.col_min)
        return cls(window, mask)

    def covers(self, window: TileRange) -> bool:
        return self.window.intersection(window) == window

    def has(self, row: int, col: int) -> bool:
        width = self.window.col_max - self.window.col_min + 1
        return self.window.contains(row, col) and bool(
            self.mask >> ((row - self.window.row_min) * width + col - self.window.col_min) & 1)


class DownloadedBundle(RecordFileReader):
    """A bundle's tiles fetched into a spool (download_spool.py), read like a local compact
    bundle (so record runs are copied the same way)."""

    def __init__(self, client: ServiceClient, spool: DownloadSpool):
        self._client = client
        self._data = spool

    def download(self, level: int, keys: list[tuple[int, int]], fetched: dict) -> None:
        """Fetch `keys` but those the spool has from an interrupted run (those in `fetched`
        came earlier: bytes, None or a failure)."""
        transport, client = self._client.transport, self._client
        in_flight: dict[Future, tuple[int, int]] = {}
        queue = (key for key in keys if key not in fetched and not self._data.has(key))
        limit = 2 * max(1, transport.concurrency)
        failure: Optional[BaseException] = None
        with client.count_lock:  # tiles of an interrupted run count as received (progress)
            client.tiles[level] += len(self._data.tiles)
        for key, data in fetched.items():
            if isinstance(data, TileFailed):
                client.tally.add(data)
                failure = failure or data
            elif not self._data.has(key):
                self._data.append(key, data)
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
                self._data.append(key, data)
            if client.stop.is_set():  # requests under way are left to finish on their own
                raise ExportCanceled("The export was stopped.")
        if isinstance(failure, TileFailed):
            raise DownloadFailed(client.tally.summary(client.policy.max_attempts),
                                 Concern.REQUEST_RATE)
        if failure is not None:
            raise failure

    def present(self) -> list[tuple[int, int]]:
        return sorted(self._data.tiles)

    def locate(self, row: int, col: int) -> tuple[int, int]:
        return self._data.tiles[(row, col)]
