"""What kind of image a tile's bytes are, from their first bytes: the one place that knows the
PNG and JPEG signatures (exploded file names, MIXED tiles, the checks of downloaded tiles)."""
from __future__ import annotations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk and its CRC: a complete PNG ends so
JPEG_SIGNATURE = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"  # the EOI marker


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_SIGNATURE


def is_png(data: bytes) -> bool:
    return data[:8] == PNG_SIGNATURE


def tile_extension(data: bytes) -> str:
    """The file extension of an exploded cache's tile: jpg for a JPEG, else png."""
    return "jpg" if is_jpeg(data) else "png"
