"""What goes into one target bundle, tile by tile: exported bytes, existing bytes, or new pixels.

Bytes are copied wherever no pixel changes: tiles inside the area of interest, in the output
format already, and either alone or opaque over an existing tile. Only the rest is decoded:
boundary tiles are clipped at pixel centres, exported tiles with transparency are composited over
(MERGE) or cut into (OVERWRITE) the existing tile, and tiles in another format are re-encoded.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .selection import BundleClipper, TileState
from .tile_image import (
    TileEncoding,
    composite_over,
    decode,
    is_empty,
    is_jpeg,
    is_opaque,
    is_png,
    may_be_transparent,
)

# tile formats whose every tile is valid in another format without being looked at
COPYABLE = {
    "PNG": {"PNG", "PNG8", "PNG24", "PNG32"},
    "MIXED": {"MIXED", "JPEG"},
}


@dataclass(frozen=True)
class PixelOptions:
    """The export's pixel-level choices (from OVERWRITE, TILE_FORMAT, OPTIMIZE_TILES_FOR_SIZE)."""

    encoding: TileEncoding
    source_format: str  # the input cache's declared tile format
    overwrite: bool = False
    optimize: bool = False  # re-encode JPEG tiles at encoding.quality when that makes them smaller

    @property
    def converts(self) -> bool:
        """Whether exported tiles must be looked at (format change or recompression)."""
        out = self.encoding.tile_format
        same = out == self.source_format or self.source_format in COPYABLE.get(out, ())
        return self.optimize or not same

    @property
    def source_opaque(self) -> bool:
        return self.source_format == "JPEG"


class Action(enum.Enum):
    COPY_EXPORTED = 0
    COPY_EXISTING = 1
    REMOVE = 2  # the existing tile goes; nothing replaces it
    COMPUTE = 3  # decided when written (see BundleComposer.compute)


Plan = list[tuple[int, int, Action]]


class BundleComposer:
    """Plans and computes the tiles of one bundle written from `source` over `existing`."""

    def __init__(self, options: PixelOptions, source, existing,
                 clipper: Optional[BundleClipper], wanted: Callable[[int, int], bool]):
        self.options, self.source, self.existing = options, source, existing
        self.clipper, self.wanted = clipper, wanted
        self._exported: set = set()
        self._existing: set = set()

    @staticmethod
    def needed(options: PixelOptions, clipper: Optional[BundleClipper], has_existing: bool
               ) -> bool:
        """False when whole tiles are copied as they are (the exporter's plain path)."""
        # over an existing tile, a tile that may be transparent is drawn (MERGE) or, when
        # wholly transparent, removes it (OVERWRITE)
        layered = has_existing and not options.source_opaque
        return clipper is not None or options.converts or layered

    def plan(self, exported: set, existing: set) -> Plan:
        """Every tile of the bundle in row-major order with what to do, before any pixel work."""
        self._exported, self._existing = exported, existing
        plan = []
        for row, col in sorted(exported | existing):
            action = self._action(row, col, (row, col) in exported, (row, col) in existing)
            if action is not None:
                plan.append((row, col, action))
        return plan

    def _action(self, row, col, exported: bool, existing: bool) -> Optional[Action]:
        keep = Action.COPY_EXISTING if existing else None
        if not self.wanted(row, col):
            return keep
        state = self.clipper.state(row, col) if self.clipper else TileState.INSIDE
        if state is TileState.OUTSIDE:
            return keep
        if state is TileState.BOUNDARY:
            return Action.COMPUTE if exported or (existing and self.options.overwrite) else keep
        if not exported:
            return Action.REMOVE if existing and self.options.overwrite else keep
        if self.options.converts:
            return Action.COMPUTE
        if not existing or self.options.source_opaque:
            return Action.COPY_EXPORTED
        # MERGE draws it over the existing tile; OVERWRITE removes that tile if it is empty
        return Action.COMPUTE

    def compute(self, row: int, col: int) -> tuple[Optional[bytes], bool]:
        """(bytes of the tile, or None when it ends up empty; whether they hold exported
        pixels) for a COMPUTE tile."""
        has_exported = (row, col) in self._exported
        has_existing = (row, col) in self._existing
        mask = None
        if self.clipper is not None and self.clipper.state(row, col) is TileState.BOUNDARY:
            mask = self.clipper.mask(row, col)
            if mask.all():
                mask = None
            elif not mask.any():
                return (self.existing.read(row, col) if has_existing else None), False
        overwrite = self.options.overwrite
        if not has_exported:  # OVERWRITE of a boundary tile the input does not have
            if mask is None:
                return None, False
            pixels = decode(self.existing.read(row, col))
            pixels[mask] = 0
            return self._encoded(pixels), False
        data = self.source.read(row, col)
        if mask is None and (not has_existing or not may_be_transparent(data)):
            return self._converted(data), True
        if mask is not None and not has_existing and self._jpeg_to_jpeg(data):
            return self.options.encoding.clip_jpeg(data, mask), True
        pixels = decode(data)
        if mask is None and overwrite:  # the existing tile is replaced, even by nothing
            return (None if is_empty(pixels) else self._converted(data)), True
        if mask is not None:
            pixels[~mask] = 0
        elif is_opaque(pixels):
            return self._converted(data), True
        if has_existing:
            below = decode(self.existing.read(row, col))
            if overwrite:
                pixels = np.where(mask[..., None], pixels, below)
            else:
                pixels = composite_over(pixels, below)
        return self._encoded(pixels), True

    def _jpeg_to_jpeg(self, data: bytes) -> bool:
        """A JPEG tile written as JPEG: clipped in RGB, without an alpha channel."""
        return (self.options.encoding.tile_format == "JPEG" and is_jpeg(data)
                and not self.options.optimize)

    def _encoded(self, pixels: np.ndarray) -> Optional[bytes]:
        return None if is_empty(pixels) else self.options.encoding.encode(pixels)

    def _converted(self, data: bytes) -> bytes:
        """An exported tile whose pixels stay as they are, in the output format."""
        options, encoding = self.options, self.options.encoding
        if options.optimize and is_jpeg(data) and encoding.tile_format in ("JPEG", "MIXED"):
            smaller = encoding.encode_jpeg(decode(data))
            return smaller if len(smaller) < len(data) else data
        if encoding.tile_format == "MIXED" and is_png(data):
            pixels = decode(data)
            return encoding.encode_jpeg(pixels) if is_opaque(pixels) else data
        if not options.converts or encoding.fits(data):
            return data
        return encoding.encode(decode(data))
