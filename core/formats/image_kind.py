"""What kind of image a tile's bytes are, from their first bytes: the one place that knows the
PNG, JPEG and LERC signatures (exploded file names, MIXED tiles, the checks of copied and
downloaded tiles)."""
from __future__ import annotations

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk and its CRC: a complete PNG ends so
JPEG_SIGNATURE = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"  # the EOI marker
LERC_SIGNATURES = (b"CntZImage ", b"Lerc2 ")  # LERC 1 and LERC 2 blobs (elevation caches)
JPEG_PADDING = 64  # zero bytes some writers leave after a JPEG's EOI


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_SIGNATURE


def is_png(data: bytes) -> bool:
    return data[:8] == PNG_SIGNATURE


def tile_extension(data: bytes) -> str:
    """The file extension of an exploded cache's tile: jpg for a JPEG, else png."""
    return "jpg" if is_jpeg(data) else "png"


def damage(data) -> str:
    """What is wrong with a tile's bytes ("" when nothing), looking only at its first and last
    bytes: a PNG must end with its IEND chunk, a JPEG with EOI, anything else must be LERC.
    Cheap enough for every copied tile; it catches truncated, zeroed and foreign records, not
    damage inside an image (that would need decoding)."""
    head = bytes(data[:10])
    if head[:8] == PNG_SIGNATURE:
        return "" if bytes(data[-8:]) == PNG_END else "truncated PNG (no IEND at its end)"
    if head[:3] == JPEG_SIGNATURE:
        tail = bytes(data[-2:])
        if tail == JPEG_END or bytes(data[-JPEG_PADDING:]).rstrip(b"\x00").endswith(JPEG_END):
            return ""
        return "truncated JPEG (no EOI at its end)"
    if head.startswith(LERC_SIGNATURES):
        return ""
    return f"not a PNG, JPEG or LERC image (starts with {head[:8].hex()})"


# first and last 8 bytes of a tile as little-endian u64: PNG whole, JPEG's 3 and 2 bytes masked
_PNG_HEAD = int.from_bytes(PNG_SIGNATURE, "little")
_PNG_TAIL = int.from_bytes(PNG_END, "little")
_JPEG_HEAD = int.from_bytes(JPEG_SIGNATURE, "little")
_JPEG_TAIL = int.from_bytes(JPEG_END, "little") << 48
_LOW3, _HIGH2 = (1 << 24) - 1, ((1 << 16) - 1) << 48
_EIGHT = np.arange(8)


def damaged_records(blob: bytes, starts: np.ndarray, sizes: np.ndarray) -> dict[int, str]:
    """`damage` for many tiles held in one buffer (a run of bundle records), all at once:
    the first and last 8 bytes of every tile compared in numpy; only tiles that are not plainly
    a whole PNG or JPEG are looked at one by one. {index of the tile: what is wrong}."""
    data = np.frombuffer(blob, np.uint8)
    suspects = np.arange(len(sizes))
    if len(data) >= 16:
        small = sizes < 16  # looked at one by one (their 8-byte windows would overlap)
        head = data[np.where(small, 0, starts)[:, None] + _EIGHT].view("<u8")[:, 0]
        tail = data[np.where(small, 8, starts + sizes)[:, None] - 8 + _EIGHT].view("<u8")[:, 0]
        png = (head == _PNG_HEAD) & (tail == _PNG_TAIL)
        jpeg = ((head & _LOW3) == _JPEG_HEAD) & ((tail & _HIGH2) == _JPEG_TAIL)
        suspects = np.flatnonzero(small | ~(png | jpeg))
    found = {}
    for index in suspects.tolist():
        start = int(starts[index])
        wrong = damage(memoryview(blob)[start : start + int(sizes[index])])
        if wrong:
            found[index] = wrong
    return found
