"""What goes into one target bundle, tile by tile: exported bytes, existing bytes, or new pixels.

Bytes are copied wherever no pixel changes: tiles inside the area of interest, in the output
format already, and either alone or opaque over an existing tile. Only the rest is decoded:
boundary tiles are clipped at pixel centres, exported tiles with transparency are composited over
(MERGE) or cut into (OVERWRITE) the existing tile, and tiles in another format are re-encoded.
"""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..formats.image_kind import damage
from ..grid.tiling_scheme import PACKET_SIZE
from ..selection.tile_selection import BundleClipper, TileState
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
    """The export's pixel-level choices: overwrite or merge, the tile encoding, optimizing."""

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


class Action(enum.IntEnum):
    NOTHING = -1  # the slot stays empty
    COPY_EXPORTED = 0
    COPY_EXISTING = 1
    REMOVE = 2  # the existing tile goes; nothing replaces it
    COMPUTE = 3  # decided when written (see BundleComposer.compute)


CHECK_EVERY = 32  # computed tiles between checks for cancel


class BundleComposer:
    """Plans and computes the tiles of one bundle written from `source` over `existing`."""

    def __init__(self, options: PixelOptions, source, existing,
                 clipper: Optional[BundleClipper], wanted: Callable[[int, int], bool],
                 damaged: dict):
        self.options, self.source, self.existing = options, source, existing
        self.damaged = damaged  # (row, col) -> what is wrong, of source tiles left out
        self.clipper, self.wanted = clipper, wanted
        self._origin = (0, 0)
        self._exported = self._existing = _grid([], self._origin)

    @staticmethod
    def needed(options: PixelOptions, clipper: Optional[BundleClipper], has_existing: bool
               ) -> bool:
        """False when whole tiles are copied as they are (the exporter's plain path)."""
        # over an existing tile, a tile that may be transparent is drawn (MERGE) or, when
        # wholly transparent, removes it (OVERWRITE)
        layered = has_existing and not options.source_opaque
        return clipper is not None or options.converts or layered

    def plan(self, origin: tuple[int, int], exported: list, existing: list) -> np.ndarray:
        """(128, 128) Action codes, one per tile of the bundle whose first tile is `origin`,
        decided for all tiles at once from the tiles present and before any pixel work."""
        self._origin = origin
        wanted = _grid([key for key in exported + existing if self.wanted(*key)], origin)
        self._exported = exported_ = _grid(exported, origin) & wanted
        self._existing = existing_ = _grid(existing, origin)
        state = (self.clipper.states if self.clipper is not None
                 else np.full(wanted.shape, TileState.INSIDE, np.int8))
        overwrite = self.options.overwrite
        actions = np.where(existing_, Action.COPY_EXISTING, Action.NOTHING).astype(np.int8)
        boundary = wanted & (state == TileState.BOUNDARY)
        actions[boundary & (exported_ | (existing_ & overwrite))] = Action.COMPUTE
        inside = wanted & (state == TileState.INSIDE)
        if overwrite:
            actions[inside & ~exported_ & existing_] = Action.REMOVE
        inside &= exported_
        if self.options.converts:
            actions[inside] = Action.COMPUTE
        else:
            # MERGE draws a tile that may be transparent over the existing one; OVERWRITE
            # removes that tile if the new one is empty
            copied = inside & (~existing_ | self.options.source_opaque)
            actions[copied] = Action.COPY_EXPORTED
            actions[inside & ~copied] = Action.COMPUTE
        return actions

    def precompute(self, keys: list[tuple[int, int]], budget: int,
                   check: Callable[[], None]) -> dict:
        """`compute` for `keys` (in row-major order) while the bytes held stay within `budget`;
        the rest are left to be computed when written. Boundary masks are made a row at a
        time."""
        done, held = {}, 0
        for row, group in itertools.groupby(keys, key=lambda key: key[0]):
            cols = [col for _, col in group]
            masks = self._row_masks(row, cols)
            for col in cols:
                if held > budget:
                    return done
                if len(done) % CHECK_EVERY == 0:
                    check()
                done[row, col] = self.compute(row, col, masks.get(col))
                held += len(done[row, col][0] or b"")
        return done

    def _row_masks(self, row: int, cols: list[int]) -> dict[int, np.ndarray]:
        if self.clipper is None:
            return {}
        cols = [col for col in cols if self.clipper.state(row, col) is TileState.BOUNDARY]
        return dict(zip(cols, self.clipper.masks(row, cols))) if cols else {}

    def compute(self, row: int, col: int, mask: Optional[np.ndarray] = None
                ) -> tuple[Optional[bytes], bool]:
        """(bytes of the tile, or None when it ends up empty; whether they hold exported
        pixels) for a COMPUTE tile; `mask`: its clipping mask when made already."""
        slot = (row - self._origin[0], col - self._origin[1])
        has_exported, has_existing = self._exported[slot], self._existing[slot]
        if self.clipper is None or self.clipper.state(row, col) is not TileState.BOUNDARY:
            mask = None
        elif mask is None:
            mask = self.clipper.mask(row, col)
        if mask is not None:
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
        wrong = damage(data)
        if wrong:  # left out: as if the input had no such tile
            self.damaged[row, col] = wrong
            return (self.existing.read(row, col) if has_existing else None), False
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
            if not overwrite and is_empty(pixels):
                # nothing is drawn over the existing tile: it stays as it is, even wholly
                # transparent (a tile the target has is kept)
                return self.existing.read(row, col), False
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


def _grid(keys: list[tuple[int, int]], origin: tuple[int, int]) -> np.ndarray:
    """(128, 128) bools: the bundle's tiles among `keys`."""
    grid = np.zeros((PACKET_SIZE, PACKET_SIZE), bool)
    if keys:
        rows, cols = np.array(keys, np.int64).T
        grid[rows - origin[0], cols - origin[1]] = True
    return grid
