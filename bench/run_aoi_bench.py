"""Benchmark: an AOI export (clipped at the polygon) against the extent export of the same area.

Why: the issue allows the AOI export to cost at most 1.2x the export of its bounding box
(clipping cost must scale with the boundary tiles only). Both run in the same session, in
alternating order, as separate `qgis_process.bin` processes (the real product path).

    .venv/bin/python bench/run_aoi_bench.py [--repeat 3] [--jobs extent,aoi] [--profile]

Steps:
1. The source is run_bench.build_cache's cache in bench/work/source (reused while its
   cache.json matches): Web Mercator Compact V2, 80,000 JPEG tiles at levels 12 and 13.
2. The AOI: a smooth irregular "country" (a star-shaped polygon of AOI_VERTICES vertices made
   of a few random harmonics), inscribed in the cache's tile window, written as a GeoJSON in
   EPSG:3857 (bench/work/aoi/aoi.geojson). The extent job exports its bounding box.
3. Timed, in every round (--repeat rounds, the order reversed every other round), to a Compact
   V2 cache dataset and to a .tpkx: the one-tile job (run_bench's: fixed start-up cost), the
   extent job, the AOI job, the AOI job with DISABLE_CLIPPING=True (selection by polygon, tiles
   kept whole: selection cost without pixel work), and the extent and AOI jobs again with
   TILE_FORMAT=MIXED (boundary tiles become PNG with alpha instead of JPEG on white).
   Wall time and peak RSS of the process come from run_bench.timed (GNU time); best and median
   over the rounds, marginal seconds = t - t_one, and the engine's own "Exported ... in X s".
   Each job runs with NUM_OF_CACHING_SERVICE_INSTANCES = 1 and -1 (auto: 2 here) (--workers).
   Every process runs a copy of the plugin taken at the start (bench/work/engine/<hash>), so
   commits made meanwhile do not mix engines (--no-pin: the repository as it is).
4. Each job's output is checked once (first round) against the source with the spec-only
   Compact V2 parser of tests/independent_readers.py and shapely/GDAL (not the engine):
   tiles written, tiles that differ from the source bytes (boundary tiles), exactly the tiles
   with a pixel centre inside the AOI (shapely, and GDAL's rasterisation for the tiles on the
   outline) with or without clipping, every tile whose pixel centres all lie inside the AOI
   byte-identical, boundary tiles decodable, and for a sample of boundary tiles the pixels
   against a GDAL rasterisation of the polygon (pixel-centre rule).
5. A table is printed; the figures go to the "aoi" section of bench/results.json (other keys
   are kept).

--profile: instead, run the jobs in this process with the engine (core.exporter.Exporter with
core.selection.tile_selection.PolygonSelection, as processing_provider/export_algorithm.py builds
them), timed with 1 and 2 workers, and the AOI job once more under cProfile (every worker thread
profiled), printing where the time goes.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional
from xml.etree import ElementTree

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run_bench as rb  # noqa: E402 - bench/ is not a package: reached through sys.path
import run_http_bench as hb  # noqa: E402 - for git_state and machine

REPO = rb.REPO
sys.path.insert(0, str(REPO / "tests"))
from independent_readers import LEVEL_NAME, bundle_origin, parse_v2_bundle  # noqa: E402

AOI_VERTICES = 360
AOI_SEED = 20240607
AOI_FILL = 0.92  # the AOI's bounding box spans this fraction of the tile window, centred
TILE = 256
SAMPLED_BOUNDARY_TILES = 60  # per output: pixels compared with a GDAL rasterisation
# (pixel centres that lie exactly on an edge may be decided either way by GDAL and the engine)
MAX_MASK_MISMATCH_PIXELS = 4
BACKGROUND = (255, 255, 255)
KINDS = {"dataset": False, "tpkx": True}  # name -> package
# job -> (AOI instead of extent, DISABLE_CLIPPING, TILE_FORMAT)
JOBS = {
    "extent": (False, False, None),
    "aoi": (True, False, None),
    "aoi_noclip": (True, True, None),
    "extent_mixed": (False, False, 4),
    "aoi_mixed": (True, False, 4),
}


PLUGIN_FILES = ("__init__.py", "plugin.py", "metadata.txt", "icon.png", "LICENSE", "core",
                "processing_provider", "ui")


def pin_engine(work: Path, engine_hash: str) -> Path:
    """A copy of the plugin as it is now, in work/engine/<hash>/: other people commit to the
    repository while the bench runs, and every timed process must run the same engine.
    Returns the folder to give qgis_process as QGIS_PLUGINPATH."""
    plugins = work / "engine" / engine_hash
    target = plugins / rb.PLUGIN_NAME
    if not target.exists():
        staging = plugins / (rb.PLUGIN_NAME + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in PLUGIN_FILES:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, staging / name, ignore=ignore)
            elif source.exists():
                shutil.copy2(source, staging / name)
        staging.rename(target)
    return plugins


# -- the AOI -----------------------------------------------------------------------------------

def make_aoi(cache: dict, folder: Path) -> dict:
    """A smooth, irregular, star-shaped polygon inscribed in the cache's window (EPSG:3857),
    written as GeoJSON; returns its path, ring and bounding box."""
    import numpy as np

    rng = np.random.default_rng(AOI_SEED)
    theta = np.linspace(0.0, 2 * math.pi, AOI_VERTICES, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 24):  # decaying harmonics: a coastline-like outline, always r > 0
        radius += rng.uniform(0.3, 1.0) * 0.32 / k ** 1.15 * np.cos(
            k * theta + rng.uniform(0, 2 * math.pi))
    assert radius.min() > 0.2
    x, y = radius * np.cos(theta), radius * np.sin(theta)
    xmin, ymin, xmax, ymax = cache["extent_3857"]
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    half_w, half_h = AOI_FILL * (xmax - xmin) / 2, AOI_FILL * (ymax - ymin) / 2
    x = cx - half_w + (x - x.min()) / (x.max() - x.min()) * 2 * half_w
    y = cy - half_h + (y - y.min()) / (y.max() - y.min()) * 2 * half_h
    ring = [[float(a), float(b)] for a, b in zip(x, y)]
    ring.append(ring[0])
    doc = {"type": "FeatureCollection", "name": "aoi",
           "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
           "features": [{"type": "Feature", "properties": {"name": "bench AOI"},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}}]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "aoi.geojson"
    path.write_text(json.dumps(doc))
    ring = json.loads(path.read_text())["features"][0]["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return {"path": str(path), "ring": ring, "vertices": len(ring) - 1,
            "bbox_3857": [min(xs), min(ys), max(xs), max(ys)]}


def job_args(aoi: dict, job: str) -> tuple[str, ...]:
    use_aoi, noclip, tile_format = JOBS[job]
    if use_aoi:
        args = [f"AREA_OF_INTEREST={aoi['path']}"]
        if noclip:
            args.append("DISABLE_CLIPPING=true")
    else:
        xmin, ymin, xmax, ymax = aoi["bbox_3857"]
        # Processing's extent string: xmin,xmax,ymin,ymax [crs]
        args = [f"EXPORT_EXTENT={xmin!r},{xmax!r},{ymin!r},{ymax!r} [EPSG:3857]"]
    if tile_format is not None:
        args.append(f"TILE_FORMAT={tile_format}")
    return tuple(args)


# -- the expected selection, computed without the engine ---------------------------------------

def grid_from_conf(layers: Path) -> dict:
    """Tile origin, resolutions and tile format from the source's conf.xml (ElementTree)."""
    root = ElementTree.parse(layers / "conf.xml").getroot()

    def find(node, name):
        return next(e for e in node.iter() if e.tag.rsplit("}", 1)[-1] == name)

    origin = find(root, "TileOrigin")
    resolutions = {}
    for lod in (e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "LODInfo"):
        resolutions[int(find(lod, "LevelID").text)] = float(find(lod, "Resolution").text)
    return {"origin": (float(find(origin, "X").text), float(find(origin, "Y").text)),
            "resolutions": resolutions, "tile_format": find(root, "CacheTileFormat").text,
            "quality": int(find(root, "CompressionQuality").text)}


class Expected:
    """Per source tile: selected by the extent, whether its pixel centres are all inside / none
    inside the polygon (shapely, on the box the centres span), and for the tiles in between
    whether GDAL's rasterisation puts any centre inside (selected by the polygon)."""

    INSIDE, BOUNDARY, OUTSIDE = "inside", "boundary", "outside"

    def __init__(self, grid: dict, aoi: dict):
        from shapely.geometry import Polygon
        from shapely.prepared import prep

        self.grid = grid
        self.polygon = Polygon(aoi["ring"])
        assert self.polygon.is_valid
        self.prepared = prep(self.polygon)
        self.bbox = aoi["bbox_3857"]
        self._cache: dict = {}
        self._any_centre: dict = {}

    def tile_box(self, level: int, row: int, col: int, inset: float = 0.0):
        res = self.grid["resolutions"][level]
        ox, oy = self.grid["origin"]
        span = TILE * res
        return (ox + col * span + inset * res, oy - (row + 1) * span + inset * res,
                ox + (col + 1) * span - inset * res, oy - row * span - inset * res)

    def in_extent(self, level: int, row: int, col: int) -> bool:
        x0, y0, x1, y1 = self.tile_box(level, row, col, 0.1)
        bx0, by0, bx1, by1 = self.bbox
        return x0 < bx1 and x1 > bx0 and y0 < by1 and y1 > by0

    def classify(self, level: int, row: int, col: int) -> str:
        """The state of the tile's pixel centres: inside, boundary (maybe some) or outside."""
        key = (level, row, col)
        if key not in self._cache:
            from shapely.geometry import box

            centres = box(*self.tile_box(level, row, col, 0.5))
            if not self.in_extent(level, row, col) or not self.prepared.intersects(centres):
                self._cache[key] = self.OUTSIDE
            elif self.prepared.contains(centres):
                self._cache[key] = self.INSIDE
            else:
                self._cache[key] = self.BOUNDARY
        return self._cache[key]

    def selected(self, level: int, row: int, col: int) -> bool:
        """Whether some pixel centre of the tile lies inside the polygon (the engine's rule for
        AOI selections, clipped or not): GDAL decides the tiles shapely cannot."""
        key = (level, row, col)
        state = self.classify(level, row, col)
        if state != self.BOUNDARY:
            return state == self.INSIDE
        if key not in self._any_centre:
            self._any_centre[key] = bool(self.mask(level, row, col).any())
        return self._any_centre[key]

    def mask(self, level: int, row: int, col: int):
        """(256, 256) bools from GDAL's rasterisation of the polygon (pixel-centre rule)."""
        import numpy as np
        from osgeo import gdal, ogr, osr

        x0, _, _, y1 = self.tile_box(level, row, col)
        res = self.grid["resolutions"][level]
        raster = gdal.GetDriverByName("MEM").Create("", TILE, TILE, 1, gdal.GDT_Byte)
        raster.SetGeoTransform((x0, res, 0.0, y1, 0.0, -res))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(3857)
        raster.SetProjection(srs.ExportToWkt())
        vector = ogr.GetDriverByName("Memory").CreateDataSource("")
        layer = vector.CreateLayer("aoi", srs, ogr.wkbPolygon)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkb(self.polygon.wkb))
        layer.CreateFeature(feature)
        gdal.RasterizeLayer(raster, [1], layer, burn_values=[1])
        return np.asarray(raster.GetRasterBand(1).ReadAsArray()) == 1


# -- checking an output ------------------------------------------------------------------------

def source_bundles(cache: dict) -> dict:
    """(level, brow, bcol) -> path of every bundle of the source cache."""
    bundles = {}
    for level_dir in sorted((Path(cache["path"]) / "_alllayers").iterdir()):
        level = int(LEVEL_NAME.match(level_dir.name).group(1))
        for bundle in level_dir.glob("*.bundle"):
            bundles[(level, *bundle_origin(bundle.name))] = bundle
    return bundles


def output_bundles(output: Path):
    """(level, brow, bcol) -> a function returning the bundle's bytes, for a dataset's Layers
    folder or a .tpkx (bundle folder named by root.json's tileBundlesPath)."""
    loaders = {}
    if output.is_file():
        archive = zipfile.ZipFile(output)
        folder = json.loads(archive.read("root.json"))["tileBundlesPath"]
        folder = (folder[2:] if folder.startswith("./") else folder).strip("/")
        for member in archive.namelist():
            parts = member.split("/")
            if len(parts) == 3 and parts[0] == folder and parts[2].endswith(".bundle"):
                key = (int(LEVEL_NAME.match(parts[1]).group(1)), *bundle_origin(parts[2]))
                loaders[key] = lambda m=member: archive.read(m)
        return loaders, archive
    for level_dir in sorted((output / "_alllayers").iterdir()):
        level = int(LEVEL_NAME.match(level_dir.name).group(1))
        for bundle in level_dir.glob("*.bundle"):
            loaders[(level, *bundle_origin(bundle.name))] = bundle.read_bytes
    return loaders, None


def check_boundary_pixels(expected: Expected, key: tuple, source: bytes, data: bytes,
                          mixed: bool) -> dict:
    """One clipped tile against the GDAL mask. PNG with alpha (MIXED): alpha 0 and RGB 0
    exactly outside, the source's pixels exactly inside. JPEG: inside pixels close to the
    source's, outside pixels close to the background colour (lossy, so averages)."""
    import numpy as np
    from PIL import Image

    mask = expected.mask(*key)
    src = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"), dtype=np.int16)
    image = Image.open(io.BytesIO(data))
    row = {"format": image.format, "mode": image.mode, "inside_pixels": int(mask.sum())}
    if mixed:
        out = np.asarray(image.convert("RGBA"), dtype=np.int16)
        engine_inside = out[..., 3] == 255
        row["mask_mismatch_pixels"] = int((engine_inside != mask).sum())
        agree = engine_inside == mask
        row["ok"] = (image.format == "PNG" and row["mask_mismatch_pixels"]
                     <= MAX_MASK_MISMATCH_PIXELS
                     and bool(np.isin(out[..., 3], (0, 255)).all())
                     and bool((out[~engine_inside & agree][:, :3] == 0).all())
                     and bool((out[engine_inside & agree][:, :3]
                               == src[engine_inside & agree]).all()))
    else:
        out = np.asarray(image.convert("RGB"), dtype=np.int16)
        inside_diff = float(np.abs(out[mask] - src[mask]).mean()) if mask.any() else 0.0
        outside = out[~mask]
        outside_diff = float(np.abs(outside - np.asarray(BACKGROUND)).mean()) if len(
            outside) else 0.0
        row.update(inside_mean_abs_diff=round(inside_diff, 2),
                   outside_mean_abs_diff_from_background=round(outside_diff, 2))
        # measured on this cache: at most ~7 inside (re-encoded at q80, chroma bleeding at the
        # edge) and ~4 outside, over 60 sampled tiles; a wrong or missing mask gives tens
        row["ok"] = image.format == "JPEG" and inside_diff < 12 and outside_diff < 12
    return row


def verify(cache: dict, expected: Expected, job: str, output: Path) -> dict:
    """What the job's output holds against what it should hold (see the module docstring)."""
    from PIL import Image

    use_aoi, noclip, tile_format = JOBS[job]
    clip = use_aoi and not noclip
    mixed = tile_format == 4
    loaders, archive = output_bundles(output)
    counts = {"tiles_written": 0, "identical": 0, "boundary_tiles": 0,
              "expected_tiles": 0, "expected_boundary": 0,
              "boundary_png": 0, "boundary_jpeg": 0}
    problems: list[str] = []
    boundary_keys: list[tuple] = []
    try:
        extra = set(loaders) - set(source_bundles(cache))
        if extra:
            problems.append(f"bundles not in the source: {sorted(extra)[:5]}")
        for key, path in sorted(source_bundles(cache).items()):
            level, brow, bcol = key
            src = parse_v2_bundle(path.read_bytes(), brow, bcol)
            out = parse_v2_bundle(loaders[key](), brow, bcol) if key in loaders else {}
            counts["tiles_written"] += len(out)
            for (row, col) in set(out) - set(src):
                problems.append(f"tile {(level, row, col)} is not in the source")
            for (row, col), data in src.items():
                tile = (level, row, col)
                got = out.get((row, col))
                if not use_aoi:
                    wanted, state = expected.in_extent(*tile), Expected.INSIDE
                else:
                    state = expected.classify(*tile)
                    wanted = expected.selected(*tile)
                    if noclip:
                        state = Expected.INSIDE
                counts["expected_tiles"] += wanted
                counts["expected_boundary"] += wanted and state == Expected.BOUNDARY
                if got is None:
                    if wanted:
                        problems.append(f"tile {tile} is missing")
                    continue
                if not wanted:
                    problems.append(f"tile {tile} was written but is outside the selection")
                    continue
                if got == data:
                    counts["identical"] += 1
                    continue
                counts["boundary_tiles"] += 1
                if not clip or state != Expected.BOUNDARY:
                    problems.append(f"tile {tile} ({state}) differs from the source")
                    continue
                try:
                    with Image.open(io.BytesIO(got)) as image:
                        image.load()
                        fmt, mode = image.format, image.mode
                except OSError as exc:
                    problems.append(f"boundary tile {tile} cannot be decoded: {exc}")
                    continue
                counts["boundary_png" if fmt == "PNG" else "boundary_jpeg"] += 1
                # MIXED: a clipped tile has transparency, so PNG with alpha; JPEG: JPEG
                if (fmt, mode) != (("PNG", "RGBA") if mixed else ("JPEG", "RGB")):
                    problems.append(f"boundary tile {tile} is {fmt} {mode}")
                boundary_keys.append((tile, data, got))
            del src, out
        step = max(1, len(boundary_keys) // SAMPLED_BOUNDARY_TILES)
        pixels = [check_boundary_pixels(expected, tile, data, got, mixed)
                  for tile, data, got in boundary_keys[::step][:SAMPLED_BOUNDARY_TILES]]
    finally:
        if archive is not None:
            archive.close()
    for (tile, _, _), row in zip(boundary_keys[::step], pixels):
        if not row["ok"]:
            problems.append(f"boundary tile {tile} pixels: {row}")
    result = {**counts, "sampled_boundary_tiles": len(pixels), "problems": problems[:20],
              "problem_count": len(problems)}
    if pixels and not mixed:
        result["sample_inside_mean_abs_diff_max"] = max(
            r["inside_mean_abs_diff"] for r in pixels)
        result["sample_outside_mean_abs_diff_max"] = max(
            r["outside_mean_abs_diff_from_background"] for r in pixels)
    if pixels and mixed:
        result["sample_mask_mismatch_pixels_max"] = max(r["mask_mismatch_pixels"] for r in pixels)
    result["ok"] = counts["tiles_written"] > 0 and not problems
    return result


# -- the timed runs ----------------------------------------------------------------------------

def engine_seconds(run: dict) -> Optional[float]:
    """The engine's own time from its "Exported N tiles (B bytes) in X s ..." line."""
    text = run.get("engine_log", "")
    if " in " not in text:
        return None
    return float(text.split(" in ", 1)[1].split(" s", 1)[0])


def failure(exc: SystemExit) -> dict:
    """A run whose process failed (rb.timed's message: command, exit status, stderr tail)."""
    text = str(exc)
    status = text.split(" failed (", 1)[1].split(")", 1)[0] if " failed (" in text else "?"
    lines = text.splitlines()
    # faulthandler: "Current thread ... (most recent call first):" then that thread's frames
    current = next((i for i, line in enumerate(lines) if line.startswith("Current thread")),
                   len(lines))
    where = next((line.strip() for line in lines[current:]
                  if line.strip().startswith("File ")), "")
    fatal = next((line.strip() for line in lines if "Fatal Python error" in line), "")
    return {"failed": True, "exit_status": status, "fatal": fatal, "first_frame": where}


def worker_label(workers: int) -> str:
    return "auto" if workers <= 0 else f"w{workers}"


def stats(attempts: list[dict]) -> dict:
    done = [a for a in attempts if not a.get("failed")]
    failed = [a for a in attempts if a.get("failed")]
    row: dict = {"runs": len(attempts), "failures": len(failed)}
    if failed:
        row["failure_examples"] = [dict(t) for t in {tuple(f.items()) for f in failed}]
    if not done:
        return row
    seconds = [a["seconds"] for a in done]
    engine = [e for e in (engine_seconds(a) for a in done) if e is not None]
    row.update({
        "tiles": done[0]["tiles"], "best_seconds": min(seconds),
        "median_seconds": statistics.median(seconds),
        "all_seconds": [round(s, 3) for s in seconds],
        "engine_best_seconds": min(engine) if engine else None,
        "engine_median_seconds": statistics.median(engine) if engine else None,
        "maxrss_mb": max(a["maxrss_mb"] for a in done),
        "bytes_on_disk": done[0]["bytes_on_disk"], "tiles_counted": done[0]["tiles_counted"]})
    return row


def summarise(runs: dict, attempts: dict, group: str) -> dict:
    """Ratios AOI / extent for one output kind and worker setting, per tile format, and the
    derived costs; None where a run needed for a figure failed every time."""
    def get(job: str) -> Optional[dict]:
        row = runs.get(f"{group}_{job}")
        return row if row and "best_seconds" in row else None

    one, noclip = get("one"), get("aoi_noclip")
    rows: dict = {}
    for fmt, suffix in (("keep", ""), ("mixed", "_mixed")):
        ext, aoi = get(f"extent{suffix}"), get(f"aoi{suffix}")
        if not (one and ext and aoi):
            rows[fmt] = None
            continue
        paired = [a["seconds"] / e["seconds"] for a, e in
                  zip(attempts[f"{group}_aoi{suffix}"], attempts[f"{group}_extent{suffix}"])
                  if not a.get("failed") and not e.get("failed")]
        row = {
            "extent_best_s": ext["best_seconds"], "aoi_best_s": aoi["best_seconds"],
            "one_tile_best_s": one["best_seconds"],
            "extent_tiles": ext["tiles"], "aoi_tiles": aoi["tiles"],
            "wall_ratio_best": aoi["best_seconds"] / ext["best_seconds"],
            "wall_ratio_median": aoi["median_seconds"] / ext["median_seconds"],
            "wall_ratio_paired_median": statistics.median(paired) if paired else None,
            "marginal_extent_s": ext["best_seconds"] - one["best_seconds"],
            "marginal_aoi_s": aoi["best_seconds"] - one["best_seconds"],
        }
        row["marginal_ratio_best"] = row["marginal_aoi_s"] / row["marginal_extent_s"]
        row["marginal_ratio_median"] = (
            (aoi["median_seconds"] - one["median_seconds"])
            / (ext["median_seconds"] - one["median_seconds"]))
        if ext["engine_best_seconds"] and aoi["engine_best_seconds"]:
            row["engine_ratio_best"] = aoi["engine_best_seconds"] / ext["engine_best_seconds"]
        boundary = aoi.get("verify", {}).get("boundary_tiles")
        row["boundary_tiles"] = boundary
        if boundary and noclip:
            # clipping = the AOI job minus the same selection without pixel work
            row["clip_seconds_wall"] = aoi["best_seconds"] - noclip["best_seconds"]
            row["clip_ms_per_boundary_tile_wall"] = 1000 * row["clip_seconds_wall"] / boundary
            if aoi["engine_best_seconds"] and noclip["engine_best_seconds"]:
                row["clip_ms_per_boundary_tile_engine"] = 1000 * (
                    aoi["engine_best_seconds"] - noclip["engine_best_seconds"]) / boundary
        row["target_wall_le_1_2"] = row["wall_ratio_best"] <= 1.2
        row["target_marginal_le_1_2"] = row["marginal_ratio_best"] <= 1.2
        rows[fmt] = row
    ext = get("extent")
    if noclip and ext and one:
        per_tile = (ext["best_seconds"] - one["best_seconds"]) / (ext["tiles"] - one["tiles"])
        copy = per_tile * (noclip["tiles"] - one["tiles"])
        rows["selection"] = {
            "noclip_best_s": noclip["best_seconds"], "noclip_tiles": noclip["tiles"],
            "noclip_ratio_wall": noclip["best_seconds"] / ext["best_seconds"],
            "noclip_marginal_ratio": (noclip["best_seconds"] - one["best_seconds"])
            / (ext["best_seconds"] - one["best_seconds"]),
            # the noclip job's marginal time minus what copying its tiles costs at the extent
            # job's rate per tile: roughly the per-tile polygon tests
            "selection_overhead_s": noclip["best_seconds"] - one["best_seconds"] - copy,
        }
    return rows


def codec_floor(cache: dict, count: int = 300) -> dict:
    """Milliseconds per tile of the unavoidable pixel work of a clipped tile, on `count` source
    tiles: JPEG decode, JPEG encode (the cache's quality 80), PNG encode of RGBA (zlib level 6,
    the engine's, and level 1), and a binary mask applied with integer numpy."""
    import numpy as np
    from PIL import Image

    level, row, col = 13, *cache["windows"]["13"][::2]
    bundle = (Path(cache["path"]) / "_alllayers" / f"L{level:02d}"
              / f"R{row - row % 128:04x}C{col - col % 128:04x}.bundle")
    tiles = list(parse_v2_bundle(bundle.read_bytes(), row - row % 128, col - col % 128)
                 .values())[:count]
    mask = np.zeros((TILE, TILE), bool)
    mask[:, : TILE // 2] = True
    timings: dict = {}

    def timed(name, fn, items):
        started = time.perf_counter()
        results = [fn(item) for item in items]
        timings[name] = 1000 * (time.perf_counter() - started) / len(items)
        return results

    def save(image, fmt, **options):
        out = io.BytesIO()
        image.save(out, fmt, **options)
        return out.getvalue()

    rgba = timed("decode JPEG to RGBA", lambda d: np.asarray(
        Image.open(io.BytesIO(d)).convert("RGBA")).copy(), tiles)

    def apply_mask(pixels):
        pixels[~mask] = 0
        return pixels

    rgba = timed("apply mask", apply_mask, rgba)

    def to_white(pixels):
        rgb = np.ascontiguousarray(pixels[..., :3])
        rgb[~mask] = 255
        return rgb

    rgb = timed("outside to white (integer)", to_white, rgba)
    timed("encode JPEG q80", lambda p: save(Image.fromarray(p, "RGB"), "JPEG", quality=80),
          rgb)
    timed("encode PNG RGBA level 6", lambda p: save(Image.fromarray(p, "RGBA"), "PNG",
                                                   compress_level=6), rgba)
    timed("encode PNG RGBA level 1", lambda p: save(Image.fromarray(p, "RGBA"), "PNG",
                                                   compress_level=1), rgba)
    return {k: round(v, 3) for k, v in timings.items()}


def run_profile(cache: dict, aoi: dict, work: Path) -> dict:
    """The jobs in this process (no start-up), then the AOI job under cProfile."""
    import cProfile
    import pstats
    import threading

    from shapely.geometry import Polygon

    rb._engine()
    from export_map_server_cache.core import exporter as exporter_module
    from export_map_server_cache.core.export import bundle_job
    from export_map_server_cache.core.exporter import Exporter, ExportOptions
    from export_map_server_cache.core.grid.extent import Extent
    from export_map_server_cache.core.grid.tiling_scheme import StorageFormat
    from export_map_server_cache.core.selection.tile_selection import (
        ExtentSelection,
        PolygonSelection,
    )
    from export_map_server_cache.core.sources.local_cache import open_cache

    print(f"  engine: {Path(exporter_module.__file__).parent.parent}", flush=True)
    polygon_wkb = Polygon(aoi["ring"]).wkb
    out = work / "out" / "aoi_profile"

    def export(job: str, workers: int, package: bool = False):
        use_aoi, noclip, tile_format = JOBS[job]
        source = open_cache(cache["path"])
        try:
            scheme = source.scheme
            selection = (PolygonSelection(scheme, polygon_wkb, not noclip) if use_aoi
                         else ExtentSelection(scheme, Extent(*aoi["bbox_3857"])))
            if out.exists():
                shutil.rmtree(out)
            options = ExportOptions(target_dir=out, storage=StorageFormat.COMPACT_V2,
                                    package=package, workers=workers,
                                    tile_format=None if tile_format is None else "MIXED")
            rb.warm(Path(cache["path"]))
            started = time.perf_counter()
            result = Exporter(source, sorted(cache["levels"]), selection, options).run()
            return time.perf_counter() - started, result.tile_count
        finally:
            source.close()

    timings: dict = {}
    # (before a7efd49 two workers crashed here: shapely 1.8 prepared geometry shared by threads)
    for workers in (1, 2):
        for job in JOBS:
            best_s = min(export(job, workers)[0] for _ in range(2))
            timings[f"{job}_w{workers}"] = round(best_s, 3)
            print(f"  in-process {job:<13} workers {workers}: {best_s:6.2f} s", flush=True)

    floor = codec_floor(cache)
    print("  codec floor per tile (PIL, this cache's tiles): " + ", ".join(
        f"{k} {v:.2f} ms" for k, v in floor.items()), flush=True)

    profiles: list = []
    lock = threading.Lock()
    original = bundle_job.BundleJob.run

    def profiled(self, *args, **kwargs):
        profile = cProfile.Profile()
        profile.enable()
        try:
            return original(self, *args, **kwargs)
        finally:
            profile.disable()
            with lock:
                profiles.append(profile)

    reports = {}
    bundle_job.BundleJob.run = profiled
    try:
        for job in ("aoi", "aoi_mixed", "aoi_noclip"):
            profiles.clear()
            main_profile = cProfile.Profile()
            main_profile.enable()
            seconds, tiles = export(job, 1)
            main_profile.disable()
            merged = pstats.Stats(main_profile)
            for profile in profiles:
                merged.add(profile)
            text = io.StringIO()
            merged.stream = text
            merged.sort_stats("tottime").print_stats(22)
            merged.sort_stats("cumulative").print_stats(30)
            reports[job] = {"seconds_profiled": round(seconds, 2), "tiles": tiles,
                            "report": text.getvalue()}
            (work / f"aoi_profile_{job}.txt").write_text(text.getvalue())
            print(f"  profile of {job} (1 worker, {seconds:.1f} s under cProfile): "
                  f"{work / f'aoi_profile_{job}.txt'}", flush=True)
    finally:
        bundle_job.BundleJob.run = original
        shutil.rmtree(out, ignore_errors=True)
    return {"in_process_best_seconds": timings, "codec_floor_ms_per_tile": floor,
            "profiles": {k: {**v, "report": v["report"][:6000]} for k, v in reports.items()}}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=80_000, help="run_bench's source cache")
    parser.add_argument("--work", type=Path, default=BENCH / "work")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds; every job runs once per round (one-tile jobs at least "
                        "3 times in all); best and median count")
    parser.add_argument("--workers", default="1,-1",
                        help="NUM_OF_CACHING_SERVICE_INSTANCES settings, each a full set of "
                        "jobs (-1: the product's default, auto = 2 here)")
    parser.add_argument("--jobs", default=",".join(JOBS),
                        help="which of the jobs to run (the one-tile job always runs)")
    parser.add_argument("--profile", action="store_true",
                        help="only the in-process timings and cProfile of the engine")
    parser.add_argument("--no-pin", action="store_true",
                        help="run the repository's plugin as it is at each run, not a copy "
                        "taken at the start")
    parser.add_argument("--results", type=Path, default=BENCH / "results.json")
    args = parser.parse_args(argv)
    unknown = set(args.jobs.split(",")) - set(JOBS)
    if unknown:
        parser.error(f"unknown jobs {sorted(unknown)}; the jobs are {', '.join(JOBS)}")
    started = time.monotonic()
    git_before = hb.git_state()
    work = args.work.resolve()
    rb.SCRATCH = work / "tmp"
    rb.SCRATCH.mkdir(parents=True, exist_ok=True)
    pinned = None if args.no_pin else pin_engine(work, git_before["engine_sha256"])
    if pinned is not None:
        print(f"engine pinned: {pinned / rb.PLUGIN_NAME} (commit {git_before['commit']}"
              f"{', dirty' if git_before['dirty'] else ''})", flush=True)
        # this process (--profile, the cache builder) imports the same copy
        sys.path.insert(0, str(pinned))
        import export_map_server_cache.core  # noqa: F401
    rb._engine()
    settings = [int(w) for w in args.workers.split(",")]

    print(f"source cache: building/reusing {args.tiles} tiles in {work / 'source'}", flush=True)
    cache = rb.build_cache(work, args.tiles)
    grid = grid_from_conf(Path(cache["path"]))
    print(f"  {cache['tiles']} tiles, levels {cache['levels']}, conf.xml tile format "
          f"{grid['tile_format']} (quality {grid['quality']})", flush=True)
    aoi = make_aoi(cache, work / "aoi")
    expected = Expected(grid, aoi)
    bx0, by0, bx1, by1 = aoi["bbox_3857"]
    fill = expected.polygon.area / ((bx1 - bx0) * (by1 - by0))
    print(f"AOI: {aoi['vertices']} vertices, {fill:.1%} of its bounding box, "
          f"{aoi['path']}", flush=True)
    if args.profile:
        profile = run_profile(cache, aoi, work)
        for job, row in profile["profiles"].items():
            print(f"\n=== {job} ===\n{row['report']}")
        return 0

    out = work / "out"
    out.mkdir(exist_ok=True)
    sequence = [(kind, workers, job) for kind in KINDS for workers in settings
                for job in ("one", *args.jobs.split(","))]
    one_per_round = math.ceil(3 / args.repeat)
    attempts: dict[str, list[dict]] = {}
    verified: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=rb.SCRATCH) as tmp:
        env = rb.qgis_env(Path(tmp))
        if pinned is not None:
            env["QGIS_PLUGINPATH"] = str(pinned)
        env["PYTHONFAULTHANDLER"] = "1"  # a crash's Python stack goes to stderr
        # untimed warm-up: the first qgis_process start after a while is slower (cold libs)
        rb.run_ours(cache, out / "warm_up", env, False, True)
        shutil.rmtree(out / "warm_up")
        for round_number in range(args.repeat):
            order = sequence if round_number % 2 == 0 else sequence[::-1]
            print(f"round {round_number + 1}/{args.repeat}:", flush=True)
            for kind, workers, job in order:
                name = f"{kind}_{worker_label(workers)}_{job}"
                folder = out / name
                for _ in range(one_per_round if job == "one" else 1):
                    try:
                        run = rb.run_ours(cache, folder, env, KINDS[kind], job == "one",
                                          workers=workers,
                                          extra=() if job == "one" else job_args(aoi, job))
                    except SystemExit as exc:  # rb.timed: the process failed
                        run = failure(exc)
                        print(f"  {name:<26} FAILED (exit status {run['exit_status']}) "
                              f"{run['fatal']} {run['first_frame']}", flush=True)
                    else:
                        print(f"  {name:<26} {run['tiles']:6d} tiles {run['seconds']:6.2f} s "
                              f"(engine {engine_seconds(run) or 0:5.2f} s)  "
                              f"max RSS {run['maxrss_mb']:.0f} MB", flush=True)
                    attempts.setdefault(name, []).append(run)
                if job != "one" and name not in verified and not run.get("failed"):
                    verified[name] = verify(cache, expected, job, Path(run["output"]))
                    v = verified[name]
                    print(f"    verified {v['ok']}: {v['tiles_written']} tiles written, "
                          f"{v['boundary_tiles']} differ from the source, "
                          f"{v['problem_count']} problems", flush=True)
                shutil.rmtree(folder, ignore_errors=True)

    runs = {name: stats(runs_) for name, runs_ in attempts.items()}
    for name, check in verified.items():
        runs[name]["verify"] = check
    groups = [f"{kind}_{worker_label(w)}" for kind in KINDS for w in settings]
    summary = {group: summarise(runs, attempts, group) for group in groups}
    git_after = hb.git_state()

    print()
    print(f"{'job':<26} {'tiles':>6} {'boundary':>8} {'best s':>7} {'median s':>8} "
          f"{'marg. s':>7} {'engine s':>8} {'peak RSS':>9} {'failed':>7}")
    for name, row in runs.items():
        if "best_seconds" not in row:
            print(f"{name:<26} {'':>6} {'':>8} {'':>7} {'':>8} {'':>7} {'':>8} {'':>9} "
                  f"{row['failures']:>3}/{row['runs']}")
            continue
        group = name[:name.index("_", name.index("_") + 1)]
        one = runs.get(f"{group}_one", {})
        marginal = row["best_seconds"] - one["best_seconds"] if "best_seconds" in one else 0
        boundary = row.get("verify", {}).get("boundary_tiles", "")
        print(f"{name:<26} {row['tiles']:6d} {boundary:>8} {row['best_seconds']:7.2f} "
              f"{row['median_seconds']:8.2f} {marginal:7.2f} "
              f"{row['engine_best_seconds'] or 0:8.2f} {row['maxrss_mb']:6.0f} MB "
              f"{row['failures']:>3}/{row['runs']}")
    print()
    print(f"{'AOI / extent':<20} {'wall best':>9} {'wall med':>8} {'paired':>7} "
          f"{'marginal':>8} {'engine':>7} {'clip ms/boundary tile (wall, engine)':>37}")
    for group, rows in summary.items():
        for fmt in ("keep", "mixed"):
            row = rows[fmt]
            label = f"{group} {fmt}"
            if row is None:
                wanted = {"extent", "aoi"} if fmt == "keep" else {"extent_mixed", "aoi_mixed"}
                ran = wanted <= set(args.jobs.split(","))
                why = "a run needed for the ratio failed every time" if ran else "not run"
                print(f"{label:<20} ({why})")
                continue
            clip = row.get("clip_ms_per_boundary_tile_wall")
            clip_engine = row.get("clip_ms_per_boundary_tile_engine")
            paired = row["wall_ratio_paired_median"]
            print(f"{label:<20} {row['wall_ratio_best']:9.2f} "
                  f"{row['wall_ratio_median']:8.2f} "
                  f"{'' if paired is None else f'{paired:.2f}':>7} "
                  f"{row['marginal_ratio_best']:8.2f} {row.get('engine_ratio_best', 0):7.2f} "
                  f"{'' if clip is None else f'{clip:.2f}, {clip_engine or 0:.2f}':>37}")
        sel = rows.get("selection")
        if sel:
            print(f"{group + ' noclip':<20} {sel['noclip_ratio_wall']:9.2f} {'':>8} {'':>7} "
                  f"{sel['noclip_marginal_ratio']:8.2f}   (selection overhead "
                  f"{sel['selection_overhead_s']:.2f} s)")
    verdicts, targets = [], {}
    for fmt in ("keep", "mixed"):
        measured = [rows[fmt] for rows in summary.values() if rows[fmt] is not None]
        if measured:
            wall = all(r["target_wall_le_1_2"] for r in measured)
            marginal = all(r["target_marginal_le_1_2"] for r in measured)
            targets[fmt] = {"aoi_wall_le_1_2x_extent": wall,
                            "aoi_marginal_le_1_2x_extent": marginal, "rows": len(measured)}
            verdicts.append(f"{fmt}: wall {'met' if wall else 'NOT met'}, marginal "
                            f"{'met' if marginal else 'NOT met'} ({len(measured)} rows)")
    failures = {name: row["failures"] for name, row in runs.items() if row["failures"]}
    all_ok = all(v["ok"] for v in verified.values())
    print(f"\ntarget AOI <= 1.2x extent: {'; '.join(verdicts) or 'nothing measured'}; "
          f"outputs verified: {all_ok}")
    if failures:
        print(f"FAILED runs (job: failures): {failures}")
    for name, v in verified.items():
        for problem in v["problems"]:
            print(f"  {name}: {problem}")
    if git_after != git_before:
        print(f"{'note' if pinned else 'WARNING'}: the repository's code changed during the "
              f"run ({git_before['commit']} -> {git_after['commit']}); "
              + (f"every run used the copy taken at the start ({pinned})" if pinned
                 else "the runs may not all have used the same engine"))

    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results["aoi"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": hb.machine(),
        "git": git_before,
        "git_at_end": git_after,
        "code_changed_during_run": git_after != git_before,
        "engine_pinned": str(pinned) if pinned else None,  # the engine of every run: git
        "args": {"tiles": args.tiles, "repeat": args.repeat, "workers": settings},
        "source": {"path": cache["path"], "tiles": cache["tiles"], "levels": cache["levels"],
                   "tile_format": grid["tile_format"], "quality": grid["quality"],
                   "windows": cache["windows"], "extent_3857": cache["extent_3857"]},
        "aoi": {"path": aoi["path"], "vertices": aoi["vertices"], "seed": AOI_SEED,
                "bbox_3857": aoi["bbox_3857"], "area_fraction_of_bbox": fill},
        "runs": runs,
        "summary": summary,
        "targets": targets,  # per tile format: keep (the cache's own, JPEG) and MIXED
        "failed_runs": failures,
        "outputs_verified": all_ok,
        "bench_seconds": round(time.monotonic() - started, 1),
    }
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {args.results} (\"aoi\"); bench took {time.monotonic() - started:.0f} s")
    return 0 if all_ok and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
