"""The engine's log records (module loggers under `core`) shown in the Processing log while an
algorithm runs: warnings as warnings, the rest as information."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from .. import core


class _FeedbackHandler(logging.Handler):
    def __init__(self, feedback):
        super().__init__(logging.INFO)
        self._feedback = feedback

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.WARNING:
            self._feedback.pushWarning(text)
        else:
            self._feedback.pushInfo(text)


@contextmanager
def engine_log_to(feedback) -> Iterator[None]:
    """Forward the engine's log records to `feedback` for the duration of the block."""
    logger = logging.getLogger(core.__name__)
    handler = _FeedbackHandler(feedback)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
