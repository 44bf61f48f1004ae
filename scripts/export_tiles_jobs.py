"""The server side of the REST `exportTiles` operation for scripts/arcgis_rest_server.py: jobs
that build a tile package (or a cache dataset) of the served cache with the plugin's engine, in
the states ArcGIS reports (esriJobSubmitted -> esriJobExecuting -> esriJobSucceeded /
esriJobFailed, or esriJobCancelling -> esriJobCancelled), their results and the downloads.

Switches (on ServerOptions): `export_tiles_allowed`, `max_export_tiles_count` (the limit),
`job_latency` (seconds a job stays submitted, then executing), `job_failure` (a job fails with
this message), `job_hosted` (results as ArcGIS Online gives them: `output.outputUrl`),
`download_token` (the download wants this token too), `drop_downloads` (how many downloads are
cut halfway before one is served whole).
"""
from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Job:
    id: str
    service: object
    query: dict[str, str]
    status: str = "esriJobSubmitted"
    messages: list[dict] = field(default_factory=list)
    folder: Optional[Path] = None
    file: Optional[Path] = None
    cancel: threading.Event = field(default_factory=threading.Event)
    tiles: int = 0

    def message(self, text: str, kind: str = "esriJobMessageTypeInformative") -> None:
        self.messages.append({"type": kind, "description": text})

    def json(self) -> dict:
        data = {"jobId": self.id, "jobStatus": self.status, "messages": list(self.messages)}
        if self.status == "esriJobSucceeded":
            data["results"] = {"out_service_url": {"paramUrl": "results/out_service_url"}}
        return data


@dataclass
class JobRequest:
    """What an exportTiles (or estimateExportTilesSize) request asks for, read as a server."""

    levels: list[int]
    extent: object  # core.grid.extent.Extent or None
    polygon_wkb: Optional[bytes]
    package: bool
    storage: object  # StorageFormat


class ExportJobs:
    """The jobs of one server; `answer` replies to every job-related request."""

    def __init__(self, core: Callable[[str], object], options: Callable[[], object],
                 pause: Callable[[float], bool]):
        self._core, self._options, self._pause = core, options, pause
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._drops = 0
        self.root = Path(tempfile.mkdtemp(prefix="arcgis-jobs-"))
        self.cancels: list[str] = []  # job ids the server was asked to cancel (tests)
        self.submitted: list[dict] = []  # the parameters of every exportTiles job

    def close(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel.set()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- requests ---------------------------------------------------------------------------

    def submit(self, service, query: dict[str, str]) -> tuple[int, dict]:
        options = self._options()
        if not options.export_tiles_allowed:
            return 400, _error(400, "Unable to complete operation.",
                               ["exportTiles is not allowed for this service."])
        job = Job(f"j{next(self._ids):04d}{id(self) % 9973:04d}", service, dict(query))
        with self._lock:
            self._jobs[job.id] = job
            self.submitted.append(dict(query))
        threading.Thread(target=self._run, args=(job,), daemon=True,
                         name=f"exportTiles-{job.id}").start()
        return 200, {"jobId": job.id, "jobStatus": job.status}

    def estimate(self, service, query: dict[str, str]) -> tuple[int, dict]:
        """estimateExportTilesSize answers at once here (a real server runs it as a job too;
        `f=json` with `sync` is how this server's clients ask)."""
        try:
            request = self._read(service, query)
            tiles, size = self._count(service, request)
        except ValueError as exc:
            return 400, _error(400, "Unable to complete operation.", [str(exc)])
        return 200, {"totalTilesToExport": tiles, "totalSize": size}

    def all(self) -> list[Job]:
        """Every job, in the order they were submitted (tests)."""
        with self._lock:
            return list(self._jobs.values())

    def finished(self) -> list[Job]:
        return [job for job in self.all() if job.status == "esriJobSucceeded"]

    def job(self, job_id: str) -> Optional[Job]:
        return self._jobs.get(job_id)

    def cancel(self, job: Job) -> dict:
        self.cancels.append(job.id)
        if job.status == "esriJobExecuting":
            job.status = "esriJobCancelling"
            job.cancel.set()
        return {"jobId": job.id, "jobStatus": job.status}

    def listing(self, job: Job) -> dict:
        folder = job.folder
        files = [{"name": p.name, "size": p.stat().st_size} for p in sorted(folder.iterdir())
                 if p.is_file()]
        folders = [p.name for p in sorted(folder.iterdir()) if p.is_dir()]
        return {"folders": folders, "files": files}

    def file(self, job: Job, parts: list[str]) -> Optional[Path]:
        path = job.folder.joinpath(*parts)
        if job.folder not in path.resolve().parents or not path.is_file():
            return None
        return path

    def take_drop(self) -> bool:
        """Whether this download is to be cut halfway (`drop_downloads` counts them down)."""
        with self._lock:
            if self._drops < self._options().drop_downloads:
                self._drops += 1
                return True
        return False

    # -- the job ----------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        options = self._options()
        if not self._pause(options.job_latency / 2):
            return
        if job.status == "esriJobSubmitted":
            job.status = "esriJobExecuting"
            job.message("Executing...")
        if not self._pause(options.job_latency / 2) or job.cancel.is_set():
            job.status = "esriJobCancelled"
            return
        try:
            if options.job_failure:
                raise ValueError(options.job_failure)
            request = self._read(job.service, job.query)
            tiles, _ = self._count(job.service, request)
            if tiles > options.max_export_tiles_count:
                raise ValueError(
                    f"ERROR 001564: Requested tile count({tiles}) exceeds the maximum allowed "
                    f"number of tiles({options.max_export_tiles_count}) to be exported for "
                    "service " + job.service.name + ":" + job.service.kind + ".")
            job.folder = self.root / job.id
            job.folder.mkdir()
            job.tiles = self._build(job, request)
            if job.cancel.is_set():
                job.status = "esriJobCancelled"
                return
            job.message(f"Finished exporting {job.tiles} tiles.")
            job.status = "esriJobSucceeded"
        except ValueError as exc:
            job.message(str(exc), "esriJobMessageTypeError")
            job.message("Failed to execute (Export Tile Cache).", "esriJobMessageTypeError")
            job.status = "esriJobFailed"
        except Exception as exc:  # an engine error: the job fails as a server's would
            if job.cancel.is_set():
                job.status = "esriJobCancelled"
                return
            job.message(f"ERROR 999999: {exc}", "esriJobMessageTypeError")
            job.status = "esriJobFailed"

    def _read(self, service, query: dict[str, str]) -> JobRequest:
        levels_mod = self._core("selection.levels")
        extent_mod = self._core("grid.extent")
        scheme_mod = self._core("grid.tiling_scheme")
        scheme = service.source.scheme
        export_by = query.get("exportBy", "LevelID")
        values = [v for v in query.get("levels", "").replace(";", ",").split(",") if v.strip()]
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise ValueError(f"Invalid levels: {query.get('levels')!r}") from None
        levels: set[int] = set()
        for value in numbers:
            for lod in scheme.lods:
                have = {"LevelID": lod.level, "Scale": lod.scale,
                        "Resolution": lod.resolution}.get(export_by)
                if have is None:
                    raise ValueError(f"Invalid exportBy: {export_by!r}")
                if math.isclose(have, value, rel_tol=levels_mod.SCALE_RTOL):
                    levels.add(lod.level)
        if not levels:
            raise ValueError("No valid levels requested.")
        extent = None
        if query.get("exportExtent") and query["exportExtent"] != "DEFAULT":
            box = json.loads(query["exportExtent"])
            extent = extent_mod.Extent(box["xmin"], box["ymin"], box["xmax"], box["ymax"])
        polygon = None
        if query.get("areaOfInterest"):
            from shapely.geometry import Polygon
            from shapely.ops import unary_union
            features = json.loads(query["areaOfInterest"]).get("features", [])
            shapes = [Polygon(ring) for f in features for ring in f["geometry"]["rings"]]
            polygon = unary_union(shapes).wkb if shapes else None
        package = query.get("tilePackage", "false").lower() == "true"
        storage = (scheme_mod.StorageFormat.COMPACT_V2
                   if query.get("storageFormatType", "").endswith("CompactV2")
                   else scheme_mod.StorageFormat.COMPACT)
        return JobRequest(sorted(levels), extent, polygon, package, storage)

    def _selection(self, source, request: JobRequest):
        selection_mod = self._core("selection.tile_selection")
        if request.polygon_wkb is not None:  # a server exports whole tiles: no pixel clipping
            return selection_mod.PolygonSelection(source.scheme, request.polygon_wkb, clip=False)
        extent = request.extent or source.data_extent or source.scheme.full_extent
        return selection_mod.ExtentSelection(source.scheme, extent)

    def _count(self, service, request: JobRequest) -> tuple[int, int]:
        estimate_mod = self._core("export.estimate")
        source = service.source
        estimates = estimate_mod.estimate(source, request.levels,
                                          self._selection(source, request))
        return sum(e.tiles for e in estimates), sum(e.bytes for e in estimates)

    def _build(self, job: Job, request: JobRequest) -> int:
        exporter_mod = self._core("exporter")
        source = self._core("sources.local_cache").open_cache(job.service.path)
        try:
            options = exporter_mod.ExportOptions(
                target_dir=job.folder, storage=request.storage, package=request.package,
                name="Layers")
            result = exporter_mod.Exporter(
                source, request.levels, self._selection(source, request), options,
                is_canceled=job.cancel.is_set).run()
        finally:
            source.close()
        if request.package:
            job.file = result.output_path
        return result.tile_count


def _error(code: int, message: str, details: list[str]) -> dict:
    return {"error": {"code": code, "message": message, "details": details}}
