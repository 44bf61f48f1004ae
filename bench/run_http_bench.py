"""Benchmark: our export downloading from an ArcGIS REST MapServer over HTTP, against MapProxy.

Why: the issue sets two targets for downloads: at 8 concurrent requests, >= 80 % of the latency
bound (workers / latency: 400 tiles/s at 8 workers and 20 ms per request) and >= 5x MapProxy's
tiles/s on the same job (MapProxy fetches one tile at a time per process).

    .venv/bin/python bench/run_http_bench.py [--tiles 3000] [--latency 0.02] [--repeat 2]

Steps:
1. A source cache made by run_bench.build_cache in its own work folder (bench/work/http):
   a Compact V2 Web Mercator cache whose level-12 window holds about --tiles real JPEG tiles
   (build_cache also writes level 13, four times as many tiles, which the job leaves out).
2. scripts/arcgis_rest_server.py serves it in a subprocess (its own GIL) on a loopback port,
   answering every request after --latency seconds.
3. Timed, each as a separate process (`qgis_process.bin run mapservercache:exportmapservercache`
   and `mapproxy-util export`): the whole level-12 window and a one-tile job (an extent inside
   one tile) to a Compact V2 cache dataset, with NUM_OF_CACHING_SERVICE_INSTANCES = 1, 4, 8 for
   ours and MapProxy's --concurrency 1 (and 8, for information) with a `tile` source on the same
   service. Marginal tiles/s = (N_full - N_one) / (t_full - t_one). Each full job runs --repeat
   times, each one-tile job max(3, --repeat) times; the fastest run counts.
4. The same jobs again against a second server at latency 0, to measure what a request costs
   besides the server's latency (the per-request overhead of each client); and, as the floor
   this server and machine allow, a plain keep-alive http.client fetching the job's tiles on 1
   and 8 connections against each server.
5. Every output is checked: its tile count equals the source's tiles in the job and sample
   tiles are byte-identical to the source's.
6. A table is printed; the figures go to the "http" section of bench/results.json.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run_bench as rb  # noqa: E402 - bench/ is not a package: reached through sys.path

REPO = rb.REPO
SERVICE_NAME = "bench_http"
LEVEL = 12
OUR_WORKERS = (1, 4, 8)
MAPPROXY_CONCURRENCY = (1, 8)
ZERO_LATENCY_WORKERS = (1, 8)  # our runs repeated against the latency-0 server
REFERENCE_REQUESTS = {1: 250, 8: 1000}  # connections: requests of the plain reference client
SAMPLES = 200  # tiles compared byte for byte per full output
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the job -----------------------------------------------------------------------------------

def make_job(cache: dict) -> dict:
    """The level-12 window of the source cache (the full job) and the one-tile job."""
    windows = {int(level): window for level, window in cache["windows"].items()}  # JSON: str
    row_min, row_max, col_min, col_max = windows[LEVEL]
    xmin, ymin, xmax, ymax = cache["extent_3857"]
    eps = cache["resolutions"][LEVEL + 1]  # half a level-12 pixel: no neighbouring tile touched
    tile = cache["one_tile"]
    txmin, tymin, txmax, tymax = tile["extent_3857"]
    dx, dy = (txmax - txmin) / 4, (tymax - tymin) / 4
    return {
        "level": LEVEL,
        "window": [row_min, row_max, col_min, col_max],
        "tiles": (row_max - row_min + 1) * (col_max - col_min + 1),
        "extent_3857": [xmin + eps, ymin + eps, xmax - eps, ymax - eps],
        "one_tile": {"row": tile["row"], "col": tile["col"],
                     "extent_3857": [txmin + dx, tymin + dy, txmax - dx, tymax - dy]},
    }


def verify(cache: dict, job: dict, alllayers: Path, one: bool) -> dict:
    """Tile count of a Compact V2 output and byte equality of sample tiles with the source."""
    counted = rb.count_v2_tiles(alllayers) if alllayers.exists() else 0
    expected = 1 if one else job["tiles"]
    if one:
        tile = job["one_tile"]
        source = Path(cache["path"]) / "_alllayers"
        wanted = rb.read_v2_tile(source, LEVEL, tile["row"], tile["col"])
        got = rb.read_v2_tile(alllayers, LEVEL, tile["row"], tile["col"])
        identical = wanted is not None and got == wanted
    else:
        # same_bytes samples `samples // 2` tiles per level of the windows it is given
        level_only = {"path": cache["path"], "windows": {str(LEVEL): job["window"]}}
        identical = rb.same_bytes(level_only, alllayers, samples=2 * SAMPLES)
    return {"tiles_counted": counted, "count_ok": counted == expected, "identical": identical}


# -- the server --------------------------------------------------------------------------------

class Server:
    def __init__(self, proc: subprocess.Popen, url: str, layers: str):
        self.proc, self.url, self.layers = proc, url, Path(layers)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextlib.contextmanager
def rest_server(layers: str, latency: float, log: Path):
    """scripts/arcgis_rest_server.py on the cache, as a subprocess; stopped with SIGTERM."""
    cmd = [sys.executable, str(REPO / "scripts" / "arcgis_rest_server.py"), layers,
           "--name", SERVICE_NAME, "--latency", str(latency)]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = proc.stdout.readline().strip()
        if not line.startswith("SERVICE "):
            proc.wait(timeout=10)
            raise SystemExit(f"the REST server did not start ({proc.returncode}):\n"
                             f"{log.read_text(errors='replace')[-3000:]}")
        yield Server(proc, line.split(None, 1)[1], layers)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def children_cpu() -> float:
    """CPU seconds of every child process waited for so far (GNU time and what it ran)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(server: Server, cmd: list[str], env: dict) -> dict:
    """rb.timed plus the CPU the client and the server spent during the run."""
    rb.warm(server.layers)  # the served cache in the page cache, dirty pages out
    client0, server0 = children_cpu(), server.cpu_seconds()
    run = rb.timed(cmd, env=env)
    run["client_cpu_s"] = children_cpu() - client0
    run["server_cpu_s"] = server.cpu_seconds() - server0
    return run


# -- the measured runs -------------------------------------------------------------------------

def run_ours(server: Server, cache: dict, job: dict, out: Path, env: dict, workers: int,
             one: bool) -> dict:
    if out.exists():
        shutil.rmtree(out)
    box = job["one_tile"]["extent_3857"] if one else job["extent_3857"]
    args = [f"INPUT_SERVICE={server.url}", f"TARGET_CACHE_PATH={out}", "EXPORT_CACHE_TYPE=0",
            "STORAGE_FORMAT_TYPE=1", f"LEVELS={LEVEL}", "MAX_TILE_COUNT=0",
            f"NUM_OF_CACHING_SERVICE_INSTANCES={workers}",
            f"EXPORT_EXTENT={box[0]},{box[2]},{box[1]},{box[3]} [EPSG:3857]"]
    run = measured(server, ["qgis_process.bin", "--json", "run", rb.ALGORITHM, "--", *args], env)
    doc = json.loads(run["stdout"])
    output = Path(doc["results"]["OUTPUT_CACHE_PATH"])
    info = doc["log"]["info"]
    return {"tiles": int(doc["results"]["TILE_COUNT"]), "seconds": run["seconds"],
            "maxrss_mb": run["maxrss_mb"], "client_cpu_s": run["client_cpu_s"],
            "server_cpu_s": run["server_cpu_s"], "output": str(output),
            "engine_log": [line for line in info
                           if line.startswith(("Exported ", "Requests: ", "Concurrent"))],
            **verify(cache, job, output / "_alllayers", one)}


def mapproxy_conf(work: Path, cache: dict, server: Server, name: str) -> Path:
    """A `tile` source on the service, on run_bench's grid (Esri LODs, origin nw: MapProxy's
    y is then the ArcGIS row, counted from the top, so %(y)s fills the {row} of /tile/)."""
    grids = json.loads(rb.mapproxy_yaml(work, cache).read_text())["grids"]
    conf = {
        "services": {"demo": None},
        "layers": [{"name": "bench", "title": "bench", "sources": ["arcgis"]}],
        "sources": {"arcgis": {
            "type": "tile", "grid": "esri_webmercator",
            "url": server.url + "/tile/%(z)s/%(y)s/%(x)s",
        }},
        "grids": grids,
    }
    path = work / name
    path.write_text(json.dumps(conf, indent=1))  # JSON is YAML
    return path


def run_mapproxy(server: Server, cache: dict, job: dict, conf: Path, out: Path,
                 concurrency: int, one: bool) -> dict:
    if out.exists():
        shutil.rmtree(out)
    box = job["one_tile"]["extent_3857"] if one else job["extent_3857"]
    # --fetch-missing-tiles: without it, export marks every source seed_only, and a seed_only
    # source is a DummySource outside mapproxy-seed (nothing would be downloaded).
    cmd = [str(rb.VENV_BIN / "mapproxy-util"), "export", "-f", str(conf), "--source", "arcgis",
           "--grid", "esri_webmercator", "--type", "compact-v2", "--dest", str(out),
           "--fetch-missing-tiles", "-c", str(concurrency), "-q", "--levels", str(LEVEL),
           "--srs", "EPSG:3857", "--coverage", ",".join(map(str, box))]
    env = dict(os.environ, PROJ_DATA="/usr/share/proj")
    run = measured(server, cmd, env)
    checked = verify(cache, job, out, one)
    return {"tiles": checked["tiles_counted"], "seconds": run["seconds"],
            "maxrss_mb": run["maxrss_mb"], "client_cpu_s": run["client_cpu_s"],
            "server_cpu_s": run["server_cpu_s"], "output": str(out), **checked}


def reference_client(url: str, job: dict, connections: int, requests: int) -> dict:
    """The floor this server and machine allow: Python's http.client in this process, one
    keep-alive connection per thread, each thread fetching its share of the job's first
    `requests` tiles one after the other (no checks, no writing, no start-up)."""
    parts = urlsplit(url)
    row_min, _, col_min, col_max = job["window"]
    width = col_max - col_min + 1
    tiles = [(row_min + i // width, col_min + i % width)
             for i in range(min(requests, job["tiles"]))]
    failed: list[tuple[int, int]] = []

    def fetch(share: list[tuple[int, int]]) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            for row, col in share:
                connection.request("GET", f"{parts.path}/tile/{LEVEL}/{row}/{col}")
                reply = connection.getresponse()
                if reply.status != 200 or not reply.read():
                    failed.append((row, col))
        finally:
            connection.close()

    threads = [threading.Thread(target=fetch, args=(tiles[i::connections],))
               for i in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"connections": connections, "requests": len(tiles), "seconds": seconds,
            "tiles_per_s": len(tiles) / seconds, "failed": len(failed),
            "ms_per_request_per_connection": 1000 * seconds * connections / len(tiles)}


def rates(full: dict, one: dict) -> dict:
    row = rb.rates(full, one)
    tiles = full["tiles"] - one["tiles"]
    row["client_cpu_ms_per_tile"] = 1000 * (full["client_cpu_s"] - one["client_cpu_s"]) / tiles
    row["server_cpu_ms_per_tile"] = 1000 * (full["server_cpu_s"] - one["server_cpu_s"]) / tiles
    return row


# -- bookkeeping -------------------------------------------------------------------------------

def git_state() -> dict:
    """HEAD, whether the tree differs from it, and a hash of the engine's files as they are
    (core/, processing_provider/, the server): another engineer may edit them during a run."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False).stdout.rstrip()

    digest = hashlib.sha256()
    files = [*sorted((REPO / "core").rglob("*.py")),
             *sorted((REPO / "processing_provider").glob("*.py")),
             REPO / "scripts" / "arcgis_rest_server.py"]
    for path in files:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    # the bench's own files (this script, results.json) do not make the measured code dirty
    changed = [line[3:] for line in git("status", "--porcelain", "--", ".", ":!bench")
               .splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(changed),
            "dirty_paths": changed, "engine_sha256": digest.hexdigest()[:16]}


def machine() -> dict:
    info = {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "cpu": next((line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), ""),
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["mapproxy"] = version("MapProxy")
    with contextlib.suppress(Exception):
        from qgis.core import Qgis

        info["qgis"] = Qgis.QGIS_VERSION
    return info


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=3000, help="tiles of the level-12 job")
    parser.add_argument("--latency", type=float, default=0.02, help="server seconds per request")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of every full job (one-tile jobs: max(3, N)); fastest counts")
    parser.add_argument("--work", type=Path, default=BENCH / "work" / "http")
    parser.add_argument("--skip-zero-latency", action="store_true",
                        help="leave out the runs against the latency-0 server")
    parser.add_argument("--results", type=Path, default=BENCH / "results.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    git_before = git_state()
    work = args.work.resolve()
    rb.SCRATCH = work / "tmp"
    rb.SCRATCH.mkdir(parents=True, exist_ok=True)
    rb._engine()

    # build_cache puts a fifth of its tiles on level 12: 5 x --tiles gives the level-12 job
    print(f"source cache: building/reusing in {work / 'source'}", flush=True)
    cache = rb.build_cache(work, 5 * args.tiles)
    job = make_job(cache)
    print(f"  level {LEVEL}: {job['tiles']} tiles (window rows/cols {job['window']}), mean "
          f"{cache['mean_tile_bytes'] / 1024:.1f} KiB JPEG; levels {cache['levels']} served",
          flush=True)
    out = work / "out"
    out.mkdir(exist_ok=True)
    runs: dict = {}
    errors: dict = {}
    configs: list[tuple[str, int, float]] = []  # (name, workers or processes, latency)
    reference: dict = {}  # the plain http.client floor, per latency and connections

    def measure(name: str, fn: Callable, *fn_args, one: bool = False) -> Optional[dict]:
        repeat = max(3, args.repeat) if one else args.repeat
        try:
            attempts = [fn(*fn_args) for _ in range(repeat)]
        except SystemExit as exc:  # rb.timed: the command failed; its stderr is the message
            errors[name] = str(exc)
            print(f"  {name:<22} FAILED:\n{exc}", flush=True)
            return None
        run = dict(min(attempts, key=lambda r: r["seconds"]))
        run["all_seconds"] = [round(a["seconds"], 3) for a in attempts]
        run["all_tiles_counted"] = [a["tiles_counted"] for a in attempts]
        run["all_verified"] = all(a["count_ok"] and a["identical"] for a in attempts)
        runs[name] = run
        print(f"  {name:<22} {run['tiles']:6d} tiles {run['seconds']:7.2f} s  "
              f"(runs {', '.join(f'{s:.2f}' for s in run['all_seconds'])})  "
              f"CPU client {run['client_cpu_s']:.1f} s server {run['server_cpu_s']:.1f} s  "
              f"verified {run['all_verified']}", flush=True)
        return run

    def jobs(server: Server, env: dict, latency: float, workers: tuple[int, ...],
             mapproxy: tuple[int, ...]) -> None:
        label = "" if latency == args.latency else f"_lat{latency * 1000:g}"
        conf = mapproxy_conf(work, cache, server, f"mapproxy_http{label}.yaml")
        for tool, counts in (("ours_w", workers), ("mapproxy_c", mapproxy)):
            for n in counts:
                name = f"{tool}{n}{label}"
                configs.append((name, n, latency))
                for one in (True, False):
                    folder = out / f"{name}_{'one' if one else 'full'}"
                    if tool == "ours_w":
                        measure(folder.name, run_ours, server, cache, job, folder, env, n, one,
                                one=one)
                    else:
                        measure(folder.name, run_mapproxy, server, cache, job, conf, folder, n,
                                one, one=one)
                    shutil.rmtree(folder, ignore_errors=True)
        for n, requests in REFERENCE_REQUESTS.items():
            name = f"http_client_c{n}{label}"
            row = reference[name] = reference_client(server.url, job, n, requests)
            if latency > 0:
                row["pct_of_latency_bound"] = 100 * row["tiles_per_s"] * latency / n
            print(f"  {name:<22} {row['requests']:6d} tiles {row['seconds']:7.2f} s  "
                  f"{row['tiles_per_s']:.1f} tiles/s, failed {row['failed']}", flush=True)

    with tempfile.TemporaryDirectory(dir=rb.SCRATCH) as tmp:
        env = rb.qgis_env(Path(tmp))
        with rest_server(cache["path"], args.latency, work / "server.log") as server:
            print(f"server {server.url} (latency {args.latency * 1000:g} ms, pid "
                  f"{server.proc.pid})", flush=True)
            # untimed warm-ups: the first start of each tool after a while is slower
            run_ours(server, cache, job, out / "warm_up", env, 8, True)
            conf = mapproxy_conf(work, cache, server, "mapproxy_http.yaml")
            run_mapproxy(server, cache, job, conf, out / "warm_up_mp", 1, True)
            shutil.rmtree(out / "warm_up", ignore_errors=True)
            shutil.rmtree(out / "warm_up_mp", ignore_errors=True)
            print("timed runs:", flush=True)
            jobs(server, env, args.latency, OUR_WORKERS, MAPPROXY_CONCURRENCY)
        if not args.skip_zero_latency and args.latency > 0:  # else: the runs above
            with rest_server(cache["path"], 0.0, work / "server0.log") as server:
                print(f"server {server.url} (latency 0: per-request overhead)", flush=True)
                jobs(server, env, 0.0, ZERO_LATENCY_WORKERS, (1,))

    summary: dict = {}
    for name, n, latency in configs:
        full, one = runs.get(f"{name}_full"), runs.get(f"{name}_one")
        if full is None or one is None:
            continue
        row = rates(full, one)
        if latency > 0:
            row["latency_bound_tiles_per_s"] = n / latency
            row["pct_of_latency_bound"] = 100 * row["marginal_tiles_per_s"] * latency / n
        # what one request takes its worker, and how much of that is not the server's latency
        row["ms_per_request_per_worker"] = 1000 * n / row["marginal_tiles_per_s"]
        row["overhead_ms_per_request"] = row["ms_per_request_per_worker"] - 1000 * latency
        summary[name] = row
    mapproxy_c1 = summary.get("mapproxy_c1")
    for name, row in summary.items():
        if mapproxy_c1 is not None and "_lat" not in name:
            row["marginal_ratio_vs_mapproxy_c1"] = (
                row["marginal_tiles_per_s"] / mapproxy_c1["marginal_tiles_per_s"])
    targets = {}
    if "ours_w8" in summary:
        targets["w8_ge_80pct_of_latency_bound"] = summary["ours_w8"]["pct_of_latency_bound"] >= 80
        if mapproxy_c1 is not None:
            targets["w8_ge_5x_mapproxy_c1"] = (
                summary["ours_w8"]["marginal_ratio_vs_mapproxy_c1"] >= 5)
    verified = {tool: all(r["all_verified"] for name, r in runs.items() if name.startswith(tool))
                for tool in ("ours", "mapproxy")}

    print()
    print(f"{'job':<16} {'whole-run t/s':>13} {'marginal t/s':>13} {'bound':>6} {'% bound':>8} "
          f"{'x MP c1':>8} {'ms/req':>7} {'CPU ms/tile cl+srv':>19}")
    for name, row in summary.items():
        bound = row.get("latency_bound_tiles_per_s")
        pct = row.get("pct_of_latency_bound")
        ratio = row.get("marginal_ratio_vs_mapproxy_c1")
        print(f"{name:<16} {row['whole_run_tiles_per_s']:13.1f} "
              f"{row['marginal_tiles_per_s']:13.1f} {'' if bound is None else f'{bound:.0f}':>6} "
              f"{'' if pct is None else f'{pct:.1f}':>8} "
              f"{'' if ratio is None else f'{ratio:.2f}':>8} "
              f"{row['ms_per_request_per_worker']:7.2f} "
              f"{row['client_cpu_ms_per_tile']:9.2f}+{row['server_cpu_ms_per_tile']:.2f}")
    for name, row in reference.items():
        pct = row.get("pct_of_latency_bound")
        print(f"{name:<16} {'':>13} {row['tiles_per_s']:13.1f} {'':>6} "
              f"{'' if pct is None else f'{pct:.1f}':>8} {'':>8} "
              f"{row['ms_per_request_per_connection']:7.2f}   (whole run, no start-up)")
    for key, ok in targets.items():
        print(f"target {key}: {'met' if ok else 'NOT met'}")
    print(f"outputs verified (tile count, {SAMPLES} sample tiles byte-identical): ours "
          f"{verified['ours']}, MapProxy {verified['mapproxy']}")
    for name, run in runs.items():
        if not run["all_verified"]:
            print(f"  NOT verified: {name} (tiles written per run: {run['all_tiles_counted']}, "
                  f"job {1 if name.endswith('_one') else job['tiles']})")
    for name, text in errors.items():
        print(f"FAILED {name}: {text.splitlines()[0] if text else ''}")
    git_after = git_state()
    if git_after != git_before:
        print(f"WARNING: the code changed during the run ({git_before} -> {git_after}): the "
              "runs may not all have used the same engine")

    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results["http"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine(),
        "git": git_before,
        "git_at_end": git_after,
        "code_changed_during_run": git_after != git_before,
        "args": {"tiles": args.tiles, "latency": args.latency, "repeat": args.repeat},
        "job": {**job, "mean_tile_bytes": cache["mean_tile_bytes"],
                "source_path": cache["path"]},
        "runs": runs,
        "summary": summary,
        "reference_http_client": reference,
        "targets": targets,
        "outputs_verified": verified,  # per tool: every run's count and samples right
        "errors": errors,
        "bench_seconds": round(time.monotonic() - started, 1),
    }
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {args.results} (\"http\"); bench took "
          f"{time.monotonic() - started:.0f} s")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
