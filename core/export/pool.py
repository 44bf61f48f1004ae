"""Running units of work on a pool of threads, results handed back in the calling thread.

The pool knows nothing of tiles, formats or networks: what a unit is, what to do with its
result and what to do while waiting (a service source lets the event loop run) are given.
Submission is bounded (two units per worker), so only the plan, never its work, is held.
"""
from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar

WAIT_SLICE = 0.05  # seconds between checks for cancel (and event-loop turns) while waiting

Unit = TypeVar("Unit")
Result = TypeVar("Result")


def run_pool(
    work: Callable[[Unit], Result],
    units: Iterable[Unit],
    workers: int,
    on_result: Callable[[Result], None],
    idle: Callable[[], None],
    tick: Callable[[], None],
    on_failure: Callable[[], None],
) -> None:
    """Run `work` on every unit with `workers` threads. In the calling thread: `idle()` after
    every wait, `on_result` for each finished unit, then `tick()` (which may raise to stop);
    on any error `on_failure()` runs, units not started are dropped, and the error is raised
    once the running units are over."""
    pending: set[Future] = set()
    queue = iter(units)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="export") as pool:
        try:
            while True:
                while len(pending) < workers * 2:
                    unit = next(queue, None)
                    if unit is None:
                        break
                    pending.add(pool.submit(work, unit))
                if not pending:
                    break
                done, pending = wait(pending, timeout=WAIT_SLICE, return_when=FIRST_COMPLETED)
                idle()
                for future in done:
                    on_result(future.result())
                tick()
        except BaseException:
            on_failure()
            for future in pending:
                future.cancel()
            raise
