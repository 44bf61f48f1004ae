"""Values read out of Esri JSON (service descriptions, spatial references, root.json), where
numbers may come as strings, null or not at all."""
from __future__ import annotations

from typing import TypeVar

Default = TypeVar("Default")


def int_or(value, default: Default = None) -> int | Default:
    """`value` as an integer, `default` when it is missing or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: inf (1e400 in JSON)
        return default

