"""Units of work let through one point in their planned order, whatever order the workers
reach it in: a package's members are reserved so, and the same export gives the same bytes
with any number of workers (issue 13: deterministic output)."""
from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable

from ..errors import ExportCanceled

WAIT_SLICE = 0.05  # seconds between checks of the export's stop while waiting for a turn


class Turnstile:
    """`wait(unit)` returns once every unit planned before it has `passed`; a unit passes once
    (passing again, or waiting after it passed, does nothing). A stopped export stops the
    waiting."""

    def __init__(self, units: Iterable[Hashable], stop: threading.Event):
        self._order = {unit: number for number, unit in enumerate(units)}
        self._stop = stop
        self._next = 0  # the first unit that has not passed
        self._passed: set[int] = set()  # those past it that have
        self._cond = threading.Condition()

    def wait(self, unit: Hashable) -> None:
        number = self._order[unit]
        with self._cond:
            while self._next < number:
                if self._stop.is_set():
                    raise ExportCanceled("The export was stopped.")
                self._cond.wait(WAIT_SLICE)

    def passed(self, unit: Hashable) -> None:
        number = self._order[unit]
        with self._cond:
            if number < self._next:
                return
            self._passed.add(number)
            while self._next in self._passed:
                self._passed.discard(self._next)
                self._next += 1
            self._cond.notify_all()
