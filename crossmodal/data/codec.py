"""Decoding the encoded images of a prepared file (`prepare --encoding jpeg|png`), on the CPU.

One decoder for preparation and loading: OpenCV's (libjpeg-turbo, libpng), the one raw
preparation decodes with, so an encoded file's pixels are a raw file's pixels (same EXIF
orientation handling, same handling of damaged JPEGs). A JPEG can be decoded at 1/2, 1/4 or
1/8 of its size by libjpeg's DCT scaling, which skips most of the inverse DCT and colour work:
the reduced image has ceil(H / k) x ceil(W / k) pixels.
"""
from __future__ import annotations

import cv2
import numpy as np

REDUCTIONS = (1, 2, 4, 8)
_COLOR_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}
# SOF markers carrying the frame size (not DHT C4, JPG C8, DAC CC)
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def is_jpeg(data) -> bool:
    """True for bytes that start like a JPEG (SOI marker)."""
    return bytes(data[:3]) == b"\xff\xd8\xff"


def jpeg_size(data) -> tuple[int, int] | None:
    """(H, W) from a JPEG's frame header, as stored (before any EXIF orientation); None if not found."""
    data = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF:
            if pos + 9 > end:
                return None
            return (data[pos + 5] << 8) | data[pos + 6], (data[pos + 7] << 8) | data[pos + 8]
        if marker == 0xDA or length < 2:  # start of scan before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def jpeg_orientation(data) -> int:
    """The EXIF orientation (1-8) a JPEG's APP1 segment gives, 1 when it has none (or it cannot be read)."""
    head = bytes(memoryview(data)[:1 << 16])  # APP segments come first and are at most 64 kB each
    pos = 2
    while pos + 4 <= len(head) and head[pos] == 0xFF:
        marker = head[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _SOF or marker == 0xDA:
            return 1
        length = int.from_bytes(head[pos + 2:pos + 4], "big")
        if marker == 0xE1 and head[pos + 4:pos + 10] == b"Exif\0\0":
            tiff = pos + 10
            order = {b"II": "little", b"MM": "big"}.get(head[tiff:tiff + 2])
            if order is None:
                return 1
            ifd = tiff + int.from_bytes(head[tiff + 4:tiff + 8], order)
            for k in range(int.from_bytes(head[ifd:ifd + 2], order)):
                entry = ifd + 2 + 12 * k
                if entry + 12 > len(head):
                    break
                if int.from_bytes(head[entry:entry + 2], order) == 0x0112:  # Orientation, a SHORT
                    value = int.from_bytes(head[entry + 8:entry + 10], order)
                    return value if 1 <= value <= 8 else 1
            return 1
        pos += 2 + length
    return 1


def decode(data, reduce: int = 1) -> np.ndarray | None:
    """Encoded bytes -> (H, W, 3) uint8 RGB, JPEGs at 1/reduce of their size (rounded up); None if unreadable."""
    buffer = np.frombuffer(data, np.uint8)
    if buffer.size == 0:
        return None
    flags = _REDUCED[reduce if reduce in _REDUCED and is_jpeg(buffer) else 1]
    rgb = _COLOR_RGB is not None
    if rgb:
        flags = (flags & ~cv2.IMREAD_COLOR) | _COLOR_RGB
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error:
        return None
    if image is None:
        return None
    return image if rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def reduction_for(height: int, width: int, need_height: float, need_width: float) -> int:
    """The largest of 1, 2, 4, 8 whose reduced (height, width) still has need_height x need_width pixels."""
    factor = 1
    for k in REDUCTIONS[1:]:
        if height / k >= need_height and width / k >= need_width:
            factor = k
    return factor
