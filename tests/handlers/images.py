"""Test images built in memory: real photos from scikit-image and hostile payloads."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def chelsea_jpeg() -> bytes:
    from skimage import data

    return encode(Image.fromarray(data.chelsea()), "JPEG", quality=95)


def coffee_jpeg() -> bytes:
    from skimage import data

    return encode(Image.fromarray(data.coffee()), "JPEG", quality=95)


def truncated_jpeg() -> bytes:
    whole = chelsea_jpeg()
    return whole[: len(whole) // 3]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A real, valid 1-bit PNG of width x height black pixels: ~110 KB that inflate to ~112 MB
    of scanlines, i.e. 900 megapixels (2.7 GB as RGB) once decoded."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    chunks.append(compressor.compress(row * (height % 1000)))
    chunks.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(chunks))
        + _png_chunk(b"IEND", b"")
    )


def halves(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: shows which way an image was turned."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)
