"""Named moments at which crash tests (tests/test_crash_safety.py) make an export kill itself
(-9): set EXPORT_MAP_SERVER_CACHE_KILL_AT to the moment's name. Unset, nothing happens."""
from __future__ import annotations

import os
import signal

KILL_AT = "EXPORT_MAP_SERVER_CACHE_KILL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
