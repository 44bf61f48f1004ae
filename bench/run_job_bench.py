"""Benchmark: the same export by the service's own exportTiles job and by tile requests.

Why: issue 14 asks how the job path (one job, a few polls, one package download) compares with
one request per tile on the same export when every request costs a server latency.

    .venv/bin/python bench/run_job_bench.py [--tiles 3000] [--latency 0.02]

Steps:
1. The synthetic cache of run_bench.build_cache (bench/work/job): a Compact V2 Web Mercator
   cache whose level-12 window holds about --tiles JPEG tiles (and level 13 four times as many,
   left out); the level-12 window is exported.
2. scripts/arcgis_rest_server.py serves it in a subprocess on a loopback port with
   exportTilesAllowed, answering every request after --latency seconds (jobs build their
   package with the engine, so the job's own time is real work, not a sleep).
3. Timed, each as its own `qgis_process.bin run`: level 12 to a Compact V2 cache dataset with
   EXPORT_METHOD=1 (the job) and EXPORT_METHOD=2 (tile requests, 8 concurrent); requests are
   counted from the server's request log.
4. Both outputs hold the same tiles (count and sampled bytes compared with the source).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run_bench as rb  # noqa: E402 - bench/ is not a package: reached through sys.path

REPO = rb.REPO
SERVICE = "bench_job"
LEVEL = 12
METHODS = {1: "exportTiles job", 2: "tile requests"}


def serve(layers: str, latency: float, work: Path) -> tuple[subprocess.Popen, str, Path]:
    ready, log = work / "ready.txt", work / "requests.json"
    for path in (ready, log):
        path.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, str(REPO / "scripts" / "arcgis_rest_server.py"),
                               layers, "--name", SERVICE, "--latency", str(latency),
                               "--export-tiles", "--ready-file", str(ready),
                               "--request-log", str(log)])
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text().strip():
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.1)
    return server, ready.read_text().strip(), log


def requests_of(server: subprocess.Popen, log: Path) -> list[dict]:
    server.terminate()
    server.wait(30)
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args(argv)
    rb._engine()
    work = BENCH / "work" / "job"
    work.mkdir(parents=True, exist_ok=True)
    rb.SCRATCH = work
    cache = rb.build_cache(work, args.tiles * 5)
    env = rb.qgis_env(work)
    rows = []
    outputs = {}
    for method, label in METHODS.items():
        server, url, log = serve(cache["path"], args.latency, work)
        try:
            out = work / f"out-{method}"
            run = rb.run_ours({**cache, "path": url}, out, env, package=False, one=False,
                              extra=(f"LEVELS={LEVEL}", f"EXPORT_METHOD={method}"))
        finally:
            entries = requests_of(server, log)
        outputs[method] = run
        rows.append((label, run["tiles"], run["seconds"], len(entries)))
    assert outputs[1]["tiles_counted"] == outputs[2]["tiles_counted"] == outputs[1]["tiles"]
    only_level = {**cache, "windows": {str(LEVEL): cache["windows"][str(LEVEL)]}}
    for run in outputs.values():
        assert rb.same_bytes(only_level, Path(run["output"]) / "_alllayers")
    print(f"level {LEVEL}, {args.latency * 1000:.0f} ms per request")
    print(f"{'method':<18}{'tiles':>8}{'seconds':>10}{'requests':>10}")
    for label, tiles, seconds, requests in rows:
        print(f"{label:<18}{tiles:>8}{seconds:>10.1f}{requests:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
