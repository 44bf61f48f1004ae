"""Tile images as pixels: sniffing, decoding to RGBA and encoding in a cache's tile format.

Only tiles whose pixels change (clipped, merged, converted) come here; every other tile is
copied as bytes. Pixels are numpy (height, width, 4) uint8 arrays with straight alpha.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import CorruptCacheError
from ..formats.image_kind import is_jpeg, is_png

PNG_COMPRESS_LEVEL = 6  # PIL's default: smaller tiles matter more than encoding time here
DEFAULT_JPEG_QUALITY = 75  # ArcGIS's default compression quality
# PNG colour types (IHDR byte 9): 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA
PNG_ALPHA_TYPES = (4, 6)


def png_color_type(data: bytes) -> int:
    """The PNG's colour type from its IHDR chunk, -1 when the bytes are not a PNG."""
    if not is_png(data) or len(data) < 26 or data[12:16] != b"IHDR":
        return -1
    return data[25]


def png_has_trns(data: bytes) -> bool:
    """Whether a tRNS chunk (transparency of palette entries or of one colour) precedes IDAT."""
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind == b"tRNS":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        offset += 12 + length
    return False


def may_be_transparent(data: bytes) -> bool:
    """False when the encoding cannot hold transparency (JPEG, PNG without alpha or tRNS)."""
    if is_jpeg(data):
        return False
    color = png_color_type(data)
    if color in PNG_ALPHA_TYPES:
        return True
    return color < 0 or png_has_trns(data)


def decode(data: bytes, where: str = "tile") -> np.ndarray:
    """RGBA pixels of a PNG or JPEG tile."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode != "RGBA":
                image = image.convert("RGBA")
            return np.asarray(image).copy()
    except (OSError, ValueError, zlib.error) as exc:
        raise CorruptCacheError(f"{where} cannot be decoded as an image ({exc}).") from exc


def is_opaque(pixels: np.ndarray) -> bool:
    return bool(pixels[..., 3].min() == 255)


def is_empty(pixels: np.ndarray) -> bool:
    return bool(pixels[..., 3].max() == 0)


def composite_over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Porter-Duff "over" with straight alpha: `top` drawn on `bottom`."""
    top_alpha = top[..., 3:4].astype(np.float32) / 255.0
    bottom_alpha = bottom[..., 3:4].astype(np.float32) / 255.0
    alpha = top_alpha + bottom_alpha * (1.0 - top_alpha)
    weighted = top[..., :3] * top_alpha + bottom[..., :3] * (bottom_alpha * (1.0 - top_alpha))
    rgb = np.divide(weighted, alpha, out=np.zeros_like(weighted), where=alpha > 0)
    out = np.empty_like(top)
    out[..., :3] = np.clip(np.rint(rgb), 0, 255)
    out[..., 3] = np.clip(np.rint(alpha[..., 0] * 255.0), 0, 255)
    return out


def flatten(pixels: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """RGB pixels of `pixels` drawn over an opaque background colour."""
    alpha = pixels[..., 3]
    if not ((alpha != 0) & (alpha != 255)).any():  # clipped tiles: no blending needed
        rgb = pixels[..., :3].copy()
        rgb[alpha == 0] = background
        return rgb
    alpha = pixels[..., 3:4].astype(np.float32) / 255.0
    rgb = pixels[..., :3] * alpha + np.asarray(background, np.float32) * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class TileEncoding:
    """How new tiles are encoded: the cache's tile format (PNG, PNG8, PNG24, PNG32, JPEG or
    MIXED), JPEG quality, and the colour that stands in for transparency where a format has
    none."""

    tile_format: str
    quality: int = DEFAULT_JPEG_QUALITY
    background: tuple[int, int, int] = (255, 255, 255)

    def encode(self, pixels: np.ndarray) -> bytes:
        fmt = self.tile_format
        opaque = is_opaque(pixels)
        if fmt == "JPEG" or (fmt == "MIXED" and opaque):
            return self.encode_jpeg(pixels)
        if fmt == "PNG8":
            return _png(_paletted(pixels))
        if fmt == "PNG32":
            return _png(Image.fromarray(pixels, "RGBA"))
        if fmt == "PNG24" and not opaque:
            return _png(_keyed(pixels))
        # PNG and the transparent tiles of MIXED: RGB where nothing is transparent
        if opaque:
            return _png(Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB"))
        return _png(Image.fromarray(pixels, "RGBA"))

    def clip_jpeg(self, data: bytes, mask: np.ndarray) -> bytes:
        """A JPEG tile with the pixels outside `mask` painted in the background colour (the
        common case of clipping a JPEG cache, kept free of alpha for speed)."""
        try:
            tile = Image.open(io.BytesIO(data))  # in memory: nothing to close
            tile.load()
        except (OSError, ValueError) as exc:
            raise CorruptCacheError(f"tile cannot be decoded as an image ({exc}).") from exc
        if tile.mode != "RGB":
            tile = tile.convert("RGB")
        # painted in place through a 1-bit mask: plain stores, no blending per pixel
        outside = np.packbits(~mask, axis=1).tobytes()
        tile.paste(self.background, mask=Image.frombytes("1", tile.size, outside))
        return self._save_jpeg(tile)

    def encode_jpeg(self, pixels: np.ndarray) -> bytes:
        return self._save_jpeg(Image.fromarray(flatten(pixels, self.background), "RGB"))

    def _save_jpeg(self, image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=self.quality)
        return out.getvalue()

    def fits(self, data: bytes) -> bool:
        """Whether a tile's bytes are already in this format (so they can be copied); MIXED
        tiles that are PNG must be decoded to know (see `encode`)."""
        fmt = self.tile_format
        if fmt == "JPEG":
            return is_jpeg(data)
        if fmt == "MIXED":
            return is_jpeg(data) or (is_png(data) and may_be_transparent(data))
        color = png_color_type(data)
        if fmt == "PNG":
            return color >= 0
        if fmt == "PNG8":
            return color == 3
        if fmt == "PNG24":
            return color == 2  # with or without a tRNS colour
        return color == 6  # PNG32


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _keyed(pixels: np.ndarray) -> Image.Image:
    """24-bit RGB whose transparency is one colour (tRNS), as PNG24 tiles have it: pixels less
    than half opaque take a colour the tile does not use otherwise."""
    clear = pixels[..., 3] < 128
    rgb = np.ascontiguousarray(pixels[..., :3]).copy()
    codes = (rgb[~clear].astype(np.uint32) * (1 << 16, 1 << 8, 1)).sum(axis=1)
    used = set(np.unique(codes).tolist())
    key = next(code for code in range(1 << 24) if code not in used)
    rgb[clear] = (key >> 16, (key >> 8) & 255, key & 255)
    image = Image.fromarray(rgb, "RGB")
    image.info["transparency"] = (key >> 16, (key >> 8) & 255, key & 255)
    return image


def _paletted(pixels: np.ndarray) -> Image.Image:
    """At most 256 colours, exact where the tile has that few, with transparency kept."""
    flat = np.ascontiguousarray(pixels).view(np.uint32).reshape(-1)
    colours, indexes = np.unique(flat, return_inverse=True)
    if len(colours) <= 256:
        rgba = colours.view(np.uint8).reshape(-1, 4)
        image = Image.fromarray(indexes.reshape(pixels.shape[:2]).astype(np.uint8), "P")
        image.putpalette(rgba[:, :3].tobytes())
        if (rgba[:, 3] < 255).any():
            image.info["transparency"] = rgba[:, 3].tobytes()
        return image
    return Image.fromarray(pixels, "RGBA").quantize(256, method=Image.Quantize.FASTOCTREE)
