"""Test images made in memory (skimage photos and synthetic ones)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(name: str = "chelsea") -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    img.save(out, fmt, **({"quality": 95} if fmt == "JPEG" else {}) | kw)
    return out.getvalue()


def jpeg(name: str = "chelsea", size: tuple[int, int] | None = None, **kw) -> bytes:
    img = photo(name)
    if size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    return encode(img, "JPEG", **kw)


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def bomb_png(side: int = 30000) -> bytes:
    """A tiny PNG declaring side x side pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # greyscale 8 bit
    row = b"\x00" + b"\x00" * side
    body = zlib.compress(row * 64, 9)  # only a few rows: decoding would need 900 MB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
