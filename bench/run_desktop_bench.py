"""Benchmark: the same download through the QGIS desktop (a real QGIS under Xvfb, the dialog
opened from the plugin's Web menu, a project layer as input) and through qgis_process.

Why: downloads once ran ten times slower in the desktop than in qgis_process. The job is one
where most requests are answered 404 with ArcGIS's JSON error body: a world cache whose levels
0-7 hold one tile in 16 from level 4 on, served without a tilemap (21,845 tile requests, about
20,500 of them 404s). Each run gets a fresh scripts/arcgis_rest_server.py whose request log
gives the tile requests and their rate (from the first request's start to the last one's end),
the same way for every client.

    .venv/bin/python bench/run_desktop_bench.py [--repeat 2] [--levels 0-7]

Runs: qgis_process.bin; the desktop; the desktop with QGIS's Network Logger recording
(`[app] logNetworkRequests=true` in the profile, as when a user left it on). Needs xvfb-run
(Debian package xvfb). The figures go to the "desktop" section of bench/results.json.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run_bench as rb  # noqa: E402 - bench/ is not a package: reached through sys.path
import run_http_bench as rh  # noqa: E402

REPO = rb.REPO
SERVICE = "sparse"


def build_cache(work: Path, top_level: int) -> tuple[Path, int]:
    """Levels 0..top_level of a world cache, one tile in 16 from level 4 on (reused)."""
    rb._engine()  # the plugin importable as export_map_server_cache
    folder = work / f"sparse-{top_level}"
    marker = folder / "tiles.txt"
    if marker.exists():
        return folder, int(marker.read_text())
    from PIL import Image

    from export_map_server_cache.core.formats.conf_xml import write_conf_cdi, write_conf_xml
    from export_map_server_cache.core.formats.storage_formats import open_writer
    from export_map_server_cache.core.grid.extent import Extent
    from export_map_server_cache.core.grid.spatial_reference import SpatialReference
    from export_map_server_cache.core.grid.tiling_scheme import Lod, TileRange, TilingScheme

    lods = tuple(Lod(z, 156543.03392800014 / 2**z, 591657527.591555 / 2**z)
                 for z in range(top_level + 1))
    tiling = TilingScheme(
        spatial_reference=SpatialReference(wkid=102100, latest_wkid=3857).with_defaults(),
        origin_x=-20037508.342787, origin_y=20037508.342787, tile_cols=256, tile_rows=256,
        dpi=96, lods=lods, tile_format="PNG")
    alllayers, count = folder / "Layers" / "_alllayers", 0
    for level in range(top_level + 1):
        side = 2**level
        for brow, bcol in TileRange(0, side - 1, 0, side - 1).bundles():
            writer = open_writer(tiling.storage_format, alllayers, level, brow, bcol, "bench")
            for row in range(brow, min(brow + 128, side)):
                for col in range(bcol, min(bcol + 128, side)):
                    if level >= 4 and (row * 3 + col) % 16:
                        continue
                    out = io.BytesIO()
                    Image.new("RGB", (256, 256), (level * 30, row % 256, col % 256)).save(
                        out, "PNG")
                    writer.add(row, col, out.getvalue())
                    count += 1
            writer.commit()
    world = Extent(-20037508.342787, -20037508.342787, 20037508.342787, 20037508.342787)
    (folder / "Layers" / "conf.xml").write_bytes(write_conf_xml(tiling))
    (folder / "Layers" / "conf.cdi").write_bytes(write_conf_cdi(world, tiling.spatial_reference))
    marker.write_text(str(count))
    return folder, count


def served(cache: Path, log: Path):
    """A fresh loopback server without a tilemap; returns (process, service URL)."""
    cmd = [sys.executable, str(REPO / "scripts" / "arcgis_rest_server.py"), str(cache),
           "--name", SERVICE, "--no-tilemap", "--request-log", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("SERVICE "):
        proc.kill()
        raise SystemExit(f"the REST server did not start: {line!r}")
    return proc, line.split(None, 1)[1]


def stop(proc: subprocess.Popen, log: Path) -> dict:
    proc.terminate()
    proc.wait(timeout=30)
    proc.stdout.close()
    tiles = [json.loads(line) for line in log.read_text().splitlines()]
    # the export's own (the desktop's map canvas draws the project layer too)
    tiles = [e for e in tiles if e["kind"] == "tile" and "blankTile" in e["query"]]
    span = max(e["finished"] for e in tiles) - min(e["started"] for e in tiles)
    return {"tile_requests": len(tiles), "not_found": sum(e["status"] == 404 for e in tiles),
            "span_s": round(span, 2), "requests_per_s": round(len(tiles) / span)}


def environment(tmp: Path, network_logger: bool) -> dict:
    env = rb.qgis_env(tmp)
    if network_logger:
        ini = tmp / "qgis" / "profiles" / "default" / "QGIS" / "QGIS3.ini"
        ini.write_text(ini.read_text() + "\n[app]\nlogNetworkRequests=true\n")
    return env


def run_once(mode: str, cache: Path, levels: str, work: Path) -> dict:
    with tempfile.TemporaryDirectory(dir=work) as tmp_name:
        tmp = Path(tmp_name)
        env = environment(tmp, network_logger=mode == "desktop + network logger")
        log = tmp / "requests.jsonl"
        proc, url = served(cache, log)
        target = tmp / "out"
        started, run_s = time.monotonic(), None
        try:
            if mode == "qgis_process":
                done = subprocess.run(
                    ["qgis_process.bin", "run", rb.ALGORITHM, "--", f"INPUT_SERVICE={url}",
                     f"TARGET_CACHE_PATH={target}", f"LEVELS={levels}", "MAX_TILE_COUNT=0"],
                    env=env, capture_output=True, text=True, timeout=3600)
                ok = done.returncode == 0
                run_s = time.monotonic() - started
            else:
                env.pop("QT_QPA_PLATFORM", None)  # a real window on the virtual display
                env.update(BENCH_SERVICE=url, BENCH_LEVELS=levels, BENCH_TARGET=str(target),
                           BENCH_OUT=str(tmp / "desktop.json"))
                subprocess.run(["xvfb-run", "-a", "qgis", "--nologo", "--code",
                                str(BENCH / "desktop_dialog.py")], env=env,
                               capture_output=True, timeout=3600)
                result = json.loads((tmp / "desktop.json").read_text())
                ok = result["ok"]
                run_s = result["seconds"]
        finally:
            wall = time.monotonic() - started
            figures = stop(proc, log)
        # run_s: from Run to the dialog's end (desktop), the whole process (qgis_process)
        figures.update(ok=ok, run_s=round(run_s, 1) if run_s else None, wall_s=round(wall, 1))
        return figures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="0-7", help="levels of the job (default 0-7)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", type=Path, default=BENCH / "work" / "desktop")
    parser.add_argument("--results", type=Path, default=BENCH / "results.json")
    args = parser.parse_args(argv)
    if shutil.which("xvfb-run") is None:  # else the desktop runs fail after the first one
        raise SystemExit("xvfb-run is missing: install it first (apt-get install xvfb).")
    args.work.mkdir(parents=True, exist_ok=True)
    top = int(args.levels.split("-")[-1])
    cache, tiles = build_cache(args.work, top)
    print(f"cache: {tiles} tiles at levels 0-{top} in {cache}", flush=True)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):
        for mode in ("qgis_process", "desktop", "desktop + network logger"):
            run = run_once(mode, cache, args.levels, args.work)
            runs.setdefault(mode, []).append(run)
            print(f"{mode:28s} {run}", flush=True)
    best = {mode: max(r["requests_per_s"] for r in found if r["ok"])
            for mode, found in runs.items()}
    fastest = {mode: min(r["run_s"] for r in found if r["ok"]) for mode, found in runs.items()}
    print("\n| run | tile requests | of them 404 | best requests/s | x qgis_process | "
          "best run time |")
    print("|---|---|---|---|---|---|")
    for mode, found in runs.items():
        print(f"| {mode} | {found[0]['tile_requests']:,} | {found[0]['not_found']:,} | "
              f"{best[mode]:,} | {best['qgis_process'] / best[mode]:.2f} | "
              f"{fastest[mode]:.1f} s |")
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results["desktop"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                          "git": rh.git_state(),
                          "levels": args.levels, "tiles": tiles, "runs": runs, "best": best}
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
