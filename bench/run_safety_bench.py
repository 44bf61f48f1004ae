"""Benchmark: what crash safety costs, and what resuming saves (issue 13).

Why: the issue asks that the lock, the tile checks, fsync, the journal and the verification
cost the 80,000-tile export no more than 10 % of its time before them, and that a download
killed half way and run again take no more than 60 % of a full run.

    .venv/bin/python bench/run_safety_bench.py [--repeat 3] [--before 6998b0c]

Steps:
1. run_bench's synthetic cache (80,000 JPEG tiles, levels 12-13, 16 bundles; built once).
2. The engine before the safety work (--before, checked out in a git worktree under
   bench/work/) and this checkout, run alternately by `qgis_process.bin` on the same jobs: the
   cache to a new Compact V2 dataset, to a new .tpkx, and merged into a full copy of itself
   (an update: staged, journaled and applied now; written in place before). Best of --repeat.
3. Resume: scripts/arcgis_rest_server.py serves the cache; a full download of both levels into
   a dataset is timed; then the same export is killed (-9) half way through that time and run
   again, and the rerun is timed (--resume-only: this step alone; --cost-only: without it).
4. A table is printed; the figures go to the "safety" section of bench/results.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
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


def engine_at(work: Path, commit: str) -> Path:
    """A worktree of `commit` with the build/plugins link qgis_process loads the plugin from."""
    tree = work / f"engine-{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree),
                        commit], check=True, capture_output=True)
    plugins = tree / "build" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / rb.PLUGIN_NAME
    if not link.exists():
        link.symlink_to(tree)
    return plugins


def env_for(plugins: Path, tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    env = rb.qgis_env(tmp)
    env["QGIS_PLUGINPATH"] = str(plugins)
    return env


def export(cache: dict, out: Path, env: dict, package: bool, fresh: bool = True) -> float:
    """Seconds of one export of the whole cache (an update when `out` holds it and not fresh)."""
    if fresh and out.exists():
        shutil.rmtree(out)
    args = [f"INPUT_SERVICE={cache['path']}", f"TARGET_CACHE_PATH={out}",
            f"EXPORT_CACHE_TYPE={1 if package else 0}", "STORAGE_FORMAT_TYPE=1",
            "LOAD_RESULT=false"]
    rb.warm(Path(cache["path"]))
    return rb.timed(["qgis_process.bin", "run", rb.ALGORITHM, "--", *args], env=env)["seconds"]


def update(cache: dict, out: Path, base: Path, env: dict) -> float:
    """Merge the cache into a copy of a full export of it."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    return export(cache, out, env, package=False, fresh=False)


def checkpoint_lines(target: Path) -> int:
    found = list(target.glob(".*.partial-*/checkpoint.jsonl"))
    return len(found[0].read_text().splitlines()) - 1 if found else 0


def download(url: str, out: Path, env: dict, kill_after: Optional[float] = None) -> float:
    """Seconds of a download of both levels into a dataset; with `kill_after`, killed (-9)
    after that many seconds (then the seconds until the kill)."""
    cmd = ["qgis_process.bin", "run", rb.ALGORITHM, "--", f"INPUT_SERVICE={url}",
           f"TARGET_CACHE_PATH={out}", "STORAGE_FORMAT_TYPE=1", "LOAD_RESULT=false",
           "NUM_OF_CACHING_SERVICE_INSTANCES=8", "LEVELS=12-13", "MAX_TILE_COUNT=0"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if kill_after is None:
        output = proc.communicate()[0]
        if proc.returncode:
            raise SystemExit(f"the download failed:\n{output[-3000:]}")
        return time.perf_counter() - started
    while time.perf_counter() - started < kill_after and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    if proc.returncode != -signal.SIGKILL:
        raise SystemExit("the download ended before it could be killed half way")
    return time.perf_counter() - started


def resume(cache: dict, out: Path, env: dict) -> dict:
    """Step 3: a full download, then the same killed half way and run again."""
    with rh.rest_server(cache["path"], 0.0, out / "server.log") as server:
        full = download(server.url, out / "full", env)
        print(f"  download, full        {full:6.2f} s", flush=True)
        target = out / "resumed"
        if target.exists():
            shutil.rmtree(target)
        killed = download(server.url, target, env, kill_after=full / 2)
        kept = checkpoint_lines(target)
        rerun = download(server.url, target, env)
        print(f"  download, killed after {killed:.2f} s with {kept} bundles done; rerun "
              f"{rerun:.2f} s ({rerun / full:.0%} of a full run)", flush=True)
    return {"full_s": full, "killed_after_s": killed, "rerun_s": rerun,
            "bundles_done_at_kill": kept}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=80_000)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", default="6998b0c",
                        help="the engine before the safety work (issue 13)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--resume-only", action="store_true", help="step 3 alone")
    parser.add_argument("--cost-only", action="store_true", help="step 2 alone")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    rb.SCRATCH = work / "tmp"
    rb.SCRATCH.mkdir(parents=True, exist_ok=True)
    rb._engine()
    cache = rb.build_cache(work, args.tiles)
    out = work / "safety"
    out.mkdir(exist_ok=True)
    engines = {"before": engine_at(work, args.before), "now": REPO / "build" / "plugins"}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    safety = results.setdefault("safety", {})
    with tempfile.TemporaryDirectory(dir=rb.SCRATCH) as tmp:
        envs = {name: env_for(plugins, Path(tmp) / name) for name, plugins in engines.items()}
        if not args.resume_only:
            base = out / "base"
            export(cache, base, envs["now"], package=False)  # the target of the updates
            for _ in range(args.repeat):
                for name, env in envs.items():  # alternately: the machine's drift hits both
                    for job, seconds in (("dataset", export(cache, out / "d", env, False)),
                                         ("tpkx", export(cache, out / "p", env, True)),
                                         ("update", update(cache, out / "u", base, env))):
                        times[name].setdefault(job, []).append(seconds)
                        print(f"  {name:<6} {job:<8} {seconds:6.2f} s", flush=True)
        if not args.cost_only:
            safety["download"] = resume(cache, out, envs["now"])
    if not args.resume_only:
        best = {name: {job: min(runs) for job, runs in jobs.items()}
                for name, jobs in times.items()}
        safety.update({"before": args.before, "repeat": args.repeat, "best_seconds": best,
                       "all_seconds": times})
        print(f"{'job':<10}{'before':>10}{'now':>10}{'change':>10}")
        for job in best["now"]:
            before, now = best["before"][job], best["now"][job]
            print(f"{job:<10}{before:>9.2f}s{now:>9.2f}s{(now / before - 1):>+10.0%}")
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
