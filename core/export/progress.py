"""Progress of an export per level: tiles done of the level's total, tiles per second, time left.

Fed by the exporter's own thread as bundles complete (and, for downloads, with the tiles fetched
for bundles still under way), read for the progress bar and for a log line every few seconds.
A level's total is the estimate where there is one (downloads), else extrapolated from the
bundles done so far.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, Optional

REPORT_EVERY = 2.0  # seconds between log lines of a level in progress


@dataclass
class _Level:
    bundles: int
    expected: Optional[int]
    bundles_done: int = 0
    tiles_done: int = 0
    finished: Optional[float] = None
    reported: bool = False

    def total(self) -> Optional[int]:
        if self.expected is not None:
            return max(self.expected, self.tiles_done)
        if self.bundles_done:
            return round(self.tiles_done / self.bundles_done * self.bundles)
        return None


class ExportProgress:
    def __init__(self, bundles: Iterable[tuple[int, int, int]],
                 expected: Optional[dict[int, int]] = None,
                 clock: Callable[[], float] = time.monotonic):
        counts: dict[int, int] = {}
        for level, _, _ in sorted(bundles):
            counts[level] = counts.get(level, 0) + 1
        expected = expected or {}
        self._levels = {level: _Level(n, expected.get(level)) for level, n in counts.items()}
        self._clock = clock
        self._started = self._last_finish = clock()
        self._last_report = self._started
        # tiles fetched per level for bundles not done yet (downloads)
        self._in_flight: dict[int, int] = {}

    def bundle_done(self, level: int, tiles: int) -> Optional[str]:
        """Count a finished bundle; returns the closing lines of the levels it completes, in
        level order (bundles of the next level may finish before the last of this one)."""
        state = self._levels[level]
        state.bundles_done += 1
        state.tiles_done += tiles
        if state.bundles_done == state.bundles:
            state.finished = self._clock()
        lines = []
        for number, state in self._levels.items():
            if state.reported:
                continue
            if state.finished is None:
                break
            state.reported = True
            seconds = max(state.finished - self._last_finish, 0.0)
            self._last_finish = max(self._last_finish, state.finished)
            rate = f" ({state.tiles_done / seconds:,.0f} tiles/s)" if seconds >= 0.1 else ""
            lines.append(f"Level {number} done: {state.tiles_done:,} tiles in {seconds:.1f} s"
                         f"{rate}")
        return "\n".join(lines) or None

    def set_in_flight(self, tiles: dict[int, int]) -> None:
        self._in_flight = {level: count for level, count in tiles.items() if count > 0}

    def _done(self, level: int, state: _Level) -> int:
        """Tiles of a level done, with those fetched for its bundles under way."""
        return state.tiles_done + self._in_flight.get(level, 0)

    def _total(self, level: int, state: _Level) -> Optional[int]:
        total = state.total()
        return None if total is None else max(total, self._done(level, state))

    def fraction(self) -> float:
        done = total = 0.0
        for level, state in self._levels.items():
            level_total = self._total(level, state)
            if level_total:
                done += self._done(level, state)
                total += level_total
            else:  # nothing known yet: a bundle counts as one share of the level
                total += 1
        return min(1.0, done / total) if total else 0.0

    def report(self) -> Optional[str]:
        """A line for the level under way, at most every REPORT_EVERY seconds; the time left
        is what is left of the known totals at the rate so far."""
        now = self._clock()
        if now - self._last_report < REPORT_EVERY:
            return None
        self._last_report = now
        current = next((item for item in self._levels.items() if item[1].finished is None),
                       None)
        if current is None:
            return None
        level, state = current
        tiles, total = self._done(level, state), self._total(level, state)
        done = sum(self._done(number, s) for number, s in self._levels.items())
        rate = done / max(now - self._started, 1e-6)
        of = f" of {'' if state.expected is not None else 'about '}{total:,}" if total else ""
        left = ""
        if total and rate > 0:
            rest = sum(max((self._total(number, s) or 0) - self._done(number, s), 0)
                       for number, s in self._levels.items())
            left = (f", about {_duration((total - tiles) / rate)} left for this level, "
                    f"{_duration(rest / rate)} in all")
        return (f"Level {level}: {tiles:,}{of} tiles ({state.bundles_done}/{state.bundles} "
                f"bundles), {rate:,.0f} tiles/s{left}; {self.fraction():.0%} of the export")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
