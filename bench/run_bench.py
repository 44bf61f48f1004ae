"""Benchmark: our export (qgis_process, the real product path) against `mapproxy-util export`.

Why: the issue sets a target of >= 10x MapProxy's marginal tiles/s on the same job and a peak
memory no more than 200 MB above a one-tile run. Everything is measured in one run on the same
synthetic cache, with a `cp -r` of the same bundles as the physical reference.

    .venv/bin/python bench/run_bench.py [--tiles 80000] [--work bench/work] [--repeat 1]

Steps:
1. Build (once; reused while bench/work/source/cache.json matches) a Web Mercator Compact V2
   cache dataset of --tiles real JPEG tiles (10-30 KB each, a pool of 512 distinct images made
   from the bundled sample cache plus noise) at levels 12 and 13, written with the engine's own
   bundle writers.
2. Time, after reading the input once so it sits in the page cache and after a `sync` (dropping
   the page cache needs root; every tool therefore reads from a warm cache and writes into the
   page cache, with no earlier run's dirty pages pending):
   - our export run by `qgis_process.bin run mapservercache:exportmapservercache` to a Compact V2
     cache dataset and to a .tpkx, the full job and a one-tile job (same command, an extent
     inside one level-12 tile), plus the full dataset job with one worker;
   - `mapproxy-util export --type compact-v2 -c 1` of the same tiles, full and one-tile;
   - `cp -r` of the cache's _alllayers folder.
   Marginal tiles/s = (N_full - N_one) / (t_full - t_one): each tool's fixed start-up removed.
   Peak memory = max RSS of the qgis_process.bin process (os.wait4), full minus one-tile.
3. Print a table and write bench/results.json.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "export_map_server_cache"
ALGORITHM = "mapservercache:exportmapservercache"
VENV_BIN = Path(sys.executable).parent
CACHE_NAME = "bench_cache"
POOL_SIZE = 512
CACHE_VERSION = 1  # bump when the synthetic cache recipe changes
SCRATCH: Optional[Path] = None  # work/tmp: scratch files stay inside the work folder
LEVEL12_ORIGIN = (1400, 2100)  # (row, col) of the level-12 window; level 13 doubles it


def _engine():
    plugins = REPO / "build" / "plugins"
    link = plugins / PLUGIN_NAME
    if not link.exists():
        plugins.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO, target_is_directory=True)
    if str(plugins) not in sys.path:
        sys.path.insert(0, str(plugins))
    import export_map_server_cache.core as core

    return core


def _render_sample_module():
    """scripts/render_sample.py for its exact Esri LOD table (no qgis import at module level)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "render_sample", REPO / "scripts" / "render_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- synthetic cache ---------------------------------------------------------------------------

def tile_pool(sample_layers: Path) -> list[bytes]:
    """POOL_SIZE distinct JPEG tiles of 10-30 KB: sample map crops, enlarged, with noise."""
    import numpy as np
    from PIL import Image

    from export_map_server_cache.core.sources.local_cache import open_cache

    source = open_cache(str(sample_layers))
    reader = source.layout.open_bundle(5, 0, 0)
    bases = [Image.open(io.BytesIO(reader.read(r, c))).convert("RGB")
             for r, c in reader.present()]
    reader.close()
    source.close()
    rng = np.random.default_rng(20240601)
    pool = []
    for i in range(POOL_SIZE):
        base = bases[int(rng.integers(len(bases)))]
        x, y = (int(v) for v in rng.integers(0, 256 - 64, 2))
        image = np.asarray(base.crop((x, y, x + 64, y + 64)).resize((256, 256), Image.BICUBIC),
                           dtype=np.float32)
        coarse = rng.normal(0, 40, (64, 64, 3)).clip(-128, 127) + 128
        coarse = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
            (256, 256), Image.BICUBIC), dtype=np.float32) - 128
        sigma = 4 + 22 * (i % 23) / 22  # detail varies tile to tile -> 12-22 KB
        image = (image + 0.5 * coarse + rng.normal(0, sigma, image.shape)).clip(0, 255)
        out = io.BytesIO()
        Image.fromarray(image.astype(np.uint8)).save(out, "JPEG", quality=80)
        pool.append(out.getvalue())
    return pool


def level_windows(n_tiles: int) -> dict:
    """Level 12 and level 13 windows over the same ground (not bundle aligned): w x h tiles at
    level 12 and 2w x 2h at level 13, so 5wh >= n_tiles tiles and one bbox describes both."""
    from export_map_server_cache.core.grid.tiling_scheme import TileRange

    quarter = math.ceil(n_tiles / 5)
    width = math.ceil(math.sqrt(quarter * 1.6))
    height = math.ceil(quarter / width)
    row0, col0 = LEVEL12_ORIGIN
    return {
        12: TileRange(row0, row0 + height - 1, col0, col0 + width - 1),
        13: TileRange(2 * row0, 2 * (row0 + height) - 1, 2 * col0, 2 * (col0 + width) - 1),
    }


def build_cache(work: Path, n_tiles: int) -> dict:
    """Write the synthetic cache once; return its description (tiles, bytes, levels, path)."""
    from export_map_server_cache.core.formats.conf_xml import write_conf_cdi, write_conf_xml
    from export_map_server_cache.core.formats.storage_formats import open_writer
    from export_map_server_cache.core.grid import spatial_reference, tiling_scheme
    from export_map_server_cache.core.grid.tiling_scheme import PACKET_SIZE, StorageFormat

    layers = work / "source" / CACHE_NAME / "Layers"
    marker = work / "source" / "cache.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("requested_tiles") == n_tiles and info.get("version") == CACHE_VERSION:
            return info
    if (work / "source").exists():
        shutil.rmtree(work / "source")
    started = time.monotonic()
    scheme = replace(_render_sample_module().build_scheme(tiling_scheme, spatial_reference),
                     tile_format="JPEG", compression_quality=80,
                     storage_format=StorageFormat.COMPACT_V2)
    pool = tile_pool(REPO / "sample" / "world_map" / "Layers")
    alllayers = layers / "_alllayers"
    total = size = 0
    windows = level_windows(n_tiles)
    for level, window in windows.items():
        for brow, bcol in window.bundles():
            writer = open_writer(StorageFormat.COMPACT_V2, alllayers, level, brow, bcol, "spec")
            rows = range(max(brow, window.row_min), min(brow + PACKET_SIZE, window.row_max + 1))
            for row in rows:
                for col in range(max(bcol, window.col_min),
                                 min(bcol + PACKET_SIZE, window.col_max + 1)):
                    data = pool[(row * 7919 + col * 104729 + level * 31) % POOL_SIZE]
                    writer.add(row, col, data)
                    total += 1
                    size += len(data)
            writer.commit()
    extent = scheme.range_extent(12, windows[12])
    layers.mkdir(parents=True, exist_ok=True)
    (layers / "conf.xml").write_bytes(write_conf_xml(scheme, scheme.gdal_readable_lods()))
    (layers / "conf.cdi").write_bytes(write_conf_cdi(extent, scheme.spatial_reference))
    level, row, col = 12, windows[12].row_min + 5, windows[12].col_min + 5
    tile_box = scheme.tile_extent(level, row, col)
    info = {
        "version": CACHE_VERSION, "requested_tiles": n_tiles, "tiles": total, "bytes": size,
        "path": str(layers), "levels": sorted(windows),
        "windows": {lv: [w.row_min, w.row_max, w.col_min, w.col_max] for lv, w in windows.items()},
        "extent_3857": [extent.xmin, extent.ymin, extent.xmax, extent.ymax],
        "pool_tiles": POOL_SIZE, "mean_tile_bytes": round(size / total), "tile_format": "JPEG",
        "one_tile": {"level": level, "row": row, "col": col,
                     "extent_3857": [tile_box.xmin, tile_box.ymin, tile_box.xmax, tile_box.ymax]},
        "build_seconds": round(time.monotonic() - started, 1),
        "resolutions": [lod.resolution for lod in scheme.lods],
    }
    marker.write_text(json.dumps(info, indent=1))
    return info


# -- helpers -----------------------------------------------------------------------------------

def warm(path: Path) -> None:
    """Read every file once so the timed runs all start from a warm page cache, then flush
    dirty pages: the gigabytes the previous run wrote must not be written back during the
    next timed run."""
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                while handle.read(1 << 22):
                    pass
    os.sync()


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def count_v2_tiles(path: Path) -> int:
    """Tiles in every Compact V2 .bundle under path (index entries with a size), or in a .tpkx."""
    import zipfile

    def count(index: bytes) -> int:
        return sum(1 for (entry,) in struct.iter_unpack("<Q", index) if entry >> 40)

    if path.is_file():
        with zipfile.ZipFile(path) as archive:
            return sum(count(archive.open(m).read(64 + 8 * 16384)[64:])
                       for m in archive.namelist() if m.endswith(".bundle"))
    total = 0
    for bundle in path.rglob("*.bundle"):
        with open(bundle, "rb") as handle:
            handle.seek(64)
            total += count(handle.read(8 * 16384))
    return total


def read_v2_tile(alllayers: Path, level: int, row: int, col: int) -> Optional[bytes]:
    """One tile straight from a V2 bundle (independent of the engine and of MapProxy)."""
    brow, bcol = row - row % 128, col - col % 128
    bundle = alllayers / f"L{level:02d}" / f"R{brow:04x}C{bcol:04x}.bundle"
    if not bundle.exists():
        return None
    with open(bundle, "rb") as handle:
        handle.seek(64 + 8 * ((row - brow) * 128 + col - bcol))
        (entry,) = struct.unpack("<Q", handle.read(8))
        size, offset = entry >> 40, entry & ((1 << 40) - 1)
        if not size:
            return None
        handle.seek(offset)
        return handle.read(size)


def timed(cmd: list[str], env: Optional[dict] = None) -> dict:
    """Run cmd; wall seconds and peak RSS from GNU time (%M: largest max RSS of the process
    tree). Not os.wait4: a child forked from this (big) Python process starts with our RSS as
    its high-water mark, which would hide the export's own figure."""
    fd, rss = tempfile.mkstemp(suffix=".rss", dir=SCRATCH)
    os.close(fd)
    try:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss, *cmd], env=env,
                              capture_output=True, check=False)
        seconds = time.perf_counter() - started
        peak_kib = int(Path(rss).read_text().strip().splitlines()[-1])
    finally:
        os.unlink(rss)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                         f"{proc.stderr.decode(errors='replace')[-3000:]}")
    return {"seconds": seconds, "maxrss_mb": peak_kib / 1024,
            "stdout": proc.stdout.decode(errors="replace"),
            "stderr": proc.stderr.decode(errors="replace")}


def qgis_env(tmp: Path) -> dict:
    (tmp / "xdg").mkdir(mode=0o700, exist_ok=True)
    ini = tmp / "qgis" / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(f"[PythonPlugins]\n{PLUGIN_NAME}=true\n")
    env = dict(os.environ)
    env.update(QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp / "xdg"),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp / "qgis"),
               QGIS_PLUGINPATH=str(REPO / "build" / "plugins"))
    return env


# -- the measured runs -------------------------------------------------------------------------

def run_ours(cache: dict, out: Path, env: dict, package: bool, one: bool,
             workers: int = -1, extra: tuple[str, ...] = ()) -> dict:
    """`extra`: more NAME=value parameters (run_aoi_bench.py's extent, AOI and tile format)."""
    if out.exists():
        shutil.rmtree(out)
    args = [f"INPUT_SERVICE={cache['path']}", f"TARGET_CACHE_PATH={out}",
            f"EXPORT_CACHE_TYPE={1 if package else 0}", "STORAGE_FORMAT_TYPE=1",
            f"NUM_OF_CACHING_SERVICE_INSTANCES={workers}", *extra]
    if one:
        tile = cache["one_tile"]
        xmin, ymin, xmax, ymax = tile["extent_3857"]
        dx, dy = (xmax - xmin) / 4, (ymax - ymin) / 4
        args += [f"LEVELS={tile['level']}",
                 f"EXPORT_EXTENT={xmin + dx},{xmax - dx},{ymin + dy},{ymax - dy} [EPSG:3857]"]
    warm(Path(cache["path"]))
    run = timed(["qgis_process.bin", "--json", "run", ALGORITHM, "--", *args], env=env)
    doc = json.loads(run["stdout"])
    output = Path(doc["results"]["OUTPUT_CACHE_PATH"])
    done = [line for line in doc["log"]["info"] if line.startswith("Exported ")]
    return {"tiles": int(doc["results"]["TILE_COUNT"]), "seconds": run["seconds"],
            "maxrss_mb": run["maxrss_mb"], "output": str(output), "bytes_on_disk": du(output),
            "tiles_counted": count_v2_tiles(output), "engine_log": done[-1] if done else ""}


def mapproxy_yaml(work: Path, cache: dict) -> Path:
    alllayers = Path(cache["path"]) / "_alllayers"
    origin = 20037508.342787
    conf = {
        "services": {"demo": None},
        "layers": [{"name": "bench", "title": "bench", "sources": ["bench_src"]}],
        "caches": {"bench_src": {
            "grids": ["esri_webmercator"], "sources": [], "format": "image/jpeg",
            "cache": {"type": "compact", "version": 2, "directory": str(alllayers)},
        }},
        "grids": {"esri_webmercator": {
            "srs": "EPSG:3857", "bbox": [-origin, -origin, origin, origin],
            "bbox_srs": "EPSG:3857", "origin": "nw", "tile_size": [256, 256],
            "res": cache["resolutions"],
        }},
    }
    path = work / "mapproxy.yaml"
    path.write_text(json.dumps(conf, indent=1))  # JSON is YAML
    return path


def run_mapproxy(cache: dict, conf: Path, out: Path, one: bool) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(VENV_BIN / "mapproxy-util"), "export", "-f", str(conf), "--source", "bench_src",
           "--grid", "esri_webmercator", "--type", "compact-v2", "--dest", str(out), "-c", "1",
           "-q"]
    if one:
        tile = cache["one_tile"]
        xmin, ymin, xmax, ymax = tile["extent_3857"]
        dx, dy = (xmax - xmin) / 4, (ymax - ymin) / 4
        cmd += ["--levels", str(tile["level"]), "--srs", "EPSG:3857",
                "--coverage", f"{xmin + dx},{ymin + dy},{xmax - dx},{ymax - dy}"]
    else:
        # The data's bbox, shrunk by a hair so no neighbouring (absent) tiles are visited;
        # without a coverage MapProxy walks all 83 million tiles of levels 12-13.
        xmin, ymin, xmax, ymax = cache["extent_3857"]
        eps = cache["resolutions"][13]
        cmd += ["--levels", ",".join(map(str, cache["levels"])), "--srs", "EPSG:3857",
                "--coverage", f"{xmin + eps},{ymin + eps},{xmax - eps},{ymax - eps}"]
    warm(Path(cache["path"]))
    env = dict(os.environ, PROJ_DATA="/usr/share/proj")
    run = timed(cmd, env=env)
    counted = count_v2_tiles(out) if out.exists() else 0
    return {"tiles": counted, "seconds": run["seconds"], "maxrss_mb": run["maxrss_mb"],
            "output": str(out), "bytes_on_disk": du(out) if out.exists() else 0,
            "tiles_counted": counted}


def run_cp(cache: dict, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    source = Path(cache["path"]) / "_alllayers"
    warm(source)
    run = timed(["cp", "-r", str(source), str(out)])
    return {"tiles": cache["tiles"], "seconds": run["seconds"], "bytes_on_disk": du(out)}


def same_bytes(cache: dict, alllayers: Path, samples: int = 200) -> bool:
    """Do `samples` tiles spread over the cache come out byte-identical under alllayers?"""
    source = Path(cache["path"]) / "_alllayers"
    for level, (row_min, row_max, col_min, col_max) in cache["windows"].items():
        level = int(level)
        for i in range(samples // 2):
            row = row_min + (i * 37) % (row_max - row_min + 1)
            col = col_min + (i * 53) % (col_max - col_min + 1)
            if read_v2_tile(source, level, row, col) != read_v2_tile(alllayers, level, row, col):
                return False
    return True


def rates(full: dict, one: dict) -> dict:
    marginal_tiles = full["tiles"] - one["tiles"]
    marginal_seconds = full["seconds"] - one["seconds"]
    return {"whole_run_tiles_per_s": full["tiles"] / full["seconds"],
            "marginal_tiles_per_s": marginal_tiles / marginal_seconds if marginal_seconds > 0
            else float("inf")}


def best(runs: list[dict]) -> dict:
    """The fastest of repeated runs (least disturbed by other activity)."""
    return min(runs, key=lambda r: r["seconds"])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=80_000)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repeat every full run N times and keep the fastest (one-tile "
                        "runs: best of max(3, N))")
    parser.add_argument("--skip-mapproxy", action="store_true")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    global SCRATCH
    SCRATCH = work / "tmp"
    SCRATCH.mkdir(parents=True, exist_ok=True)
    _engine()

    print(f"synthetic cache: building/reusing {args.tiles} tiles in {work / 'source'}", flush=True)
    cache = build_cache(work, args.tiles)
    print(f"  {cache['tiles']} tiles, {cache['bytes'] / 1e6:.0f} MB of tiles "
          f"(mean {cache['mean_tile_bytes'] / 1024:.1f} KiB, {cache['pool_tiles']} distinct "
          f"JPEGs), levels {cache['levels']}", flush=True)
    out = work / "out"
    out.mkdir(exist_ok=True)
    results: dict = {"cache": {k: v for k, v in cache.items() if k != "resolutions"}, "runs": {}}
    runs = results["runs"]

    def measure(name: str, fn, *fn_args, **fn_kwargs) -> dict:
        repeat = max(3, args.repeat) if name.endswith("_one") else args.repeat
        attempts = [fn(*fn_args, **fn_kwargs) for _ in range(repeat)]
        runs[name] = best(attempts)
        runs[name]["all_seconds"] = [round(a["seconds"], 3) for a in attempts]
        r = runs[name]
        print(f"  {name:<24} {r['tiles']:7d} tiles {r['seconds']:8.2f} s"
              + (f"  max RSS {r['maxrss_mb']:.0f} MB" if "maxrss_mb" in r else ""), flush=True)
        return r

    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        env = qgis_env(Path(tmp))
        # Untimed warm-up: the first qgis_process start after a while is slower (cold libs).
        run_ours(cache, out / "warm_up", env, False, True)
        shutil.rmtree(out / "warm_up")
        print("timed runs (input read once before each run: warm page cache):", flush=True)
        for package, label in ((False, "dataset"), (True, "tpkx")):
            measure(f"ours_{label}_one", run_ours, cache, out / f"ours_{label}_one", env,
                    package, True)
            measure(f"ours_{label}_full", run_ours, cache, out / f"ours_{label}_full", env,
                    package, False)
            shutil.rmtree(out / f"ours_{label}_full") if label == "tpkx" else None
        measure("ours_dataset_full_w1", run_ours, cache, out / "ours_dataset_full_w1", env,
                False, False, workers=1)
        shutil.rmtree(out / "ours_dataset_full_w1")
    results["ours_dataset_identical"] = same_bytes(
        cache, Path(runs["ours_dataset_full"]["output"]) / "_alllayers")
    shutil.rmtree(out / "ours_dataset_full")
    if not args.skip_mapproxy:
        conf = mapproxy_yaml(work, cache)
        run_mapproxy(cache, conf, out / "warm_up", True)  # untimed warm-up, as for ours
        shutil.rmtree(out / "warm_up")
        measure("mapproxy_one", run_mapproxy, cache, conf, out / "mapproxy_one", True)
        measure("mapproxy_full", run_mapproxy, cache, conf, out / "mapproxy_full", False)
        results["mapproxy_identical"] = same_bytes(cache, out / "mapproxy_full")
        shutil.rmtree(out / "mapproxy_full")
    measure("cp_r", run_cp, cache, out / "cp_r")
    shutil.rmtree(out / "cp_r")

    summary = {}
    for name in ("dataset", "tpkx"):
        summary[f"ours_{name}"] = rates(runs[f"ours_{name}_full"], runs[f"ours_{name}_one"])
        summary[f"ours_{name}"]["peak_rss_extra_mb"] = (
            runs[f"ours_{name}_full"]["maxrss_mb"] - runs[f"ours_{name}_one"]["maxrss_mb"])
    summary["ours_dataset_w1"] = rates(runs["ours_dataset_full_w1"], runs["ours_dataset_one"])
    if "mapproxy_full" in runs:
        summary["mapproxy"] = rates(runs["mapproxy_full"], runs["mapproxy_one"])
        for name in ("ours_dataset", "ours_tpkx", "ours_dataset_w1"):
            summary[name]["marginal_ratio_vs_mapproxy"] = (
                summary[name]["marginal_tiles_per_s"]
                / summary["mapproxy"]["marginal_tiles_per_s"])
            summary[name]["whole_run_ratio_vs_mapproxy"] = (
                summary[name]["whole_run_tiles_per_s"]
                / summary["mapproxy"]["whole_run_tiles_per_s"])
    summary["cp_r"] = {"whole_run_tiles_per_s": cache["tiles"] / runs["cp_r"]["seconds"]}
    results["summary"] = summary
    results["machine"] = {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "cpu": next((line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), ""),
        "python": platform.python_version(),
    }
    try:
        from importlib.metadata import version

        results["machine"]["mapproxy"] = version("MapProxy")
    except Exception:  # noqa: BLE001 - informational only
        pass
    results["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    results["repeat"] = args.repeat

    print()
    print(f"{'job':<18} {'whole-run tiles/s':>18} {'marginal tiles/s':>17} "
          f"{'x MapProxy (marg.)':>19} {'peak RSS +MB':>13}")
    for name, row in summary.items():
        ratio = row.get("marginal_ratio_vs_mapproxy")
        extra = row.get("peak_rss_extra_mb")
        marginal = row.get("marginal_tiles_per_s")
        print(f"{name:<18} {row['whole_run_tiles_per_s']:18.0f} "
              f"{'' if marginal is None else f'{marginal:.0f}':>17} "
              f"{'' if ratio is None else f'{ratio:.1f}':>19} "
              f"{'' if extra is None else f'{extra:.0f}':>13}")
    if "mapproxy" in summary:
        ok_speed = all(summary[n]["marginal_ratio_vs_mapproxy"] >= 10
                       for n in ("ours_dataset", "ours_tpkx"))
        ok_mem = all(summary[n]["peak_rss_extra_mb"] <= 200 for n in ("ours_dataset", "ours_tpkx"))
        results["targets"] = {"marginal_ge_10x_mapproxy": ok_speed,
                              "peak_rss_extra_le_200mb": ok_mem}
        print(f"\ntargets: >=10x MapProxy marginal: {'met' if ok_speed else 'NOT met'}; "
              f"peak memory <= one-tile run + 200 MB: {'met' if ok_mem else 'NOT met'}")
    print(f"byte-identical tiles: ours {results['ours_dataset_identical']}"
          + (f", MapProxy {results['mapproxy_identical']}" if "mapproxy_identical" in results
             else ""))
    if args.results.exists():  # run_http_bench.py's and run_aoi_bench.py's sections stay
        previous = json.loads(args.results.read_text())
        for section in ("http", "aoi"):
            if section in previous:
                results[section] = previous[section]
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
