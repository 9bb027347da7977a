"""Decode an upload and render the processed image (Pillow only, no servers).

`decode` validates while it decodes: empty, unidentifiable, truncated and oversized (decompression
bomb) inputs raise `PoisonInput` with a readable message. Only the accepted upload formats are
decoded, whatever the declared type (no TIFF; no PostScript handed to Ghostscript), and a thin
strip whose 1000 px wide copy would be absurdly tall is refused from its header. Large JPEGs are
decoded with `Image.draft`, at the smallest DCT scale (1/2, 1/4, 1/8) that still covers both the
1000 px render and the classifier's input, which is most of the speed for a 12 MP photo.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from udagram import labels
from udagram.data import CONTENT_TYPE_EXTENSIONS
from workers.errors import PoisonInput

# `decode` enforces its own pixel limit (settings.max_image_pixels) with a readable error.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# EXIF orientations that swap width and height (rotated by 90 or 270 degrees).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112
# Pillow's names of the upload types the API accepts (image/jpeg -> JPEG, ...). Camera MPO files
# open through the JPEG opener.
ACCEPTED_FORMATS = tuple(content_type.split("/")[1].upper() for content_type in CONTENT_TYPE_EXTENSIONS)
Image.init()  # Image.open(formats=...) only knows registered plugins (WebP is not preloaded)
JPEG_MAX_SIDE = 65535  # the JPEG format's own limit, for the processed copy's height


@dataclass
class Decoded:
    image: Image.Image  # upright (EXIF applied), mode RGB or RGBA
    format: str  # JPEG, PNG, ...
    size: tuple[int, int]  # upright size of the original, before any draft reduction
    has_alpha: bool


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is not worth failing the image for
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info) or (
        img.mode in ("RGB", "L") and "transparency" in img.info
    )


HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def _high_depth_to_gray(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale -> 8 bits exactly as the model's handler converts it
    (handlers/image_classifier.py `to_rgb`, which an archive carries on its own, without project
    imports; tests/workers/test_render.py keeps the two equal), so the copy people see is the
    picture that was classified: 16-bit values / 257, wider ranges stretched min..max."""
    pixels = np.asarray(img, dtype=np.float64)
    peak = float(pixels.max()) if pixels.size else 0.0
    if img.mode.startswith("I;16") or 255 < peak <= 65535:
        pixels = pixels / 257.0
    elif peak > 65535:
        low = float(pixels.min())
        pixels = (pixels - low) * (255.0 / max(peak - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))  # uint8 2-D: mode L


def _to_rgb_or_rgba(img: Image.Image, alpha: bool) -> Image.Image:
    if img.mode in HIGH_DEPTH_MODES:
        img = _high_depth_to_gray(img)
    target = "RGBA" if alpha else "RGB"
    return img if img.mode == target else img.convert(target)


def decode(data: bytes, *, width: int, classifier_short_side: int, max_pixels: int) -> Decoded:
    """Decode and validate an upload; reduce large JPEGs while decoding (draft mode)."""
    if not data:
        raise PoisonInput("the file is empty (0 bytes)")
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PoisonInput(f"image too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        # Pillow's own message names an in-memory buffer object: useless to the person reading it.
        raise PoisonInput("not an image this service can read (JPEG, PNG, WebP, GIF or BMP)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise PoisonInput(f"not an image this service can read ({type(exc).__name__}: {exc})") from None
    fmt = img.format or "unknown"
    if img.width <= 0 or img.height <= 0:
        raise PoisonInput("image has no pixels")
    pixels = img.width * img.height
    if pixels > max_pixels:
        raise PoisonInput(
            f"image is {img.width}x{img.height} = {pixels / 1e6:.0f} MP, above the "
            f"{max_pixels / 1e6:.0f} MP limit (decompression bomb guard)"
        )
    dw, dh = _displayed_size(img)
    tallest = min(JPEG_MAX_SIDE, max_pixels // width)
    if (copy_height := processed_height((dw, dh), width)) > tallest:
        raise PoisonInput(
            f"image is {dw}x{dh} px: too tall and narrow for a {width} px wide copy "
            f"({width}x{copy_height} px; at most {tallest} px tall)"
        )
    alpha = _has_alpha(img)
    if fmt == "JPEG":
        # Smallest decode that still covers the render width and the classifier's short side.
        scale = max(width / dw, classifier_short_side / min(dw, dh))
        if scale < 1:
            img.draft("RGB" if img.mode in ("RGB", "YCbCr", "CMYK") else img.mode,
                      (math.ceil(img.width * scale), math.ceil(img.height * scale)))
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP: the first frame
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb_or_rgba(img, alpha)
    except Image.DecompressionBombError as exc:
        raise PoisonInput(f"image too large to decode safely: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise PoisonInput(f"the image is damaged or truncated ({type(exc).__name__}: {exc})") from None
    return Decoded(image=img, format=fmt, size=(dw, dh), has_alpha=alpha)


def classifier_input(original: bytes, decoded: Decoded, short_side: int) -> bytes:
    """What is sent to TorchServe: the original when it is already small, else a JPEG (q90)
    whose short side is `short_side` (about 2x the model's 292 px resize, so predictions keep)."""
    img = decoded.image
    w, h = img.size
    if min(decoded.size) <= short_side and len(original) <= 1_000_000:
        return original
    if min(w, h) > short_side:
        scale = short_side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR,
                         reducing_gap=2.0)
    if img.mode != "RGB":
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


UNSURE_TITLE_PREFIX = "Probably "


def format_prediction(label: str, probability: float) -> str:
    """`Labrador retriever - 77.0%`: the overlay lines, and the title when the model is confident."""
    return f"{label} - {probability * 100:.1f}%"


def format_title(label: str, probability: float, threshold: float) -> str:
    """The image's title from its top class: `Probably Labrador retriever - 14.0%` below the
    confidence threshold (the overlay keeps the bare numbers)."""
    line = format_prediction(label, probability)
    return line if labels.is_confident(probability, threshold) else UNSURE_TITLE_PREFIX + line


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 bundles a TrueType font


@dataclass(frozen=True)
class PanelBox:
    left: int
    top: int
    right: int
    bottom: int


def panel_layout(width: int, height: int, lines: list[str]) -> tuple[int, PanelBox]:
    """Font size and panel box for `lines`, scaled to the image (about 3% of the width, smaller
    when the image is too short for five lines)."""
    n = max(1, len(lines))
    size = max(6, min(round(width * 0.03), int(height * 0.85 / (n * 1.35 + 0.8))))
    font = _font(size)
    line_h = round(size * 1.35)
    pad = max(2, round(size * 0.4))
    text_w = max((math.ceil(font.getbbox(t)[2]) for t in lines), default=0)  # FreeType: ints already
    margin = max(1, round(size * 0.5)) if height > n * line_h + 2 * pad + size else 0
    box = PanelBox(margin, margin, min(width, margin + text_w + 2 * pad), min(height, margin + n * line_h + 2 * pad))
    return size, box


def draw_overlay(img: Image.Image, lines: list[str], in_place: bool = False) -> tuple[Image.Image, PanelBox]:
    """The lines in white (dark drop shadow) on a semi-transparent dark panel, top left.
    Only the panel's region is composited (the rest of the image is left untouched)."""
    size, box = panel_layout(img.width, img.height, lines)
    font = _font(size)
    line_h = round(size * 1.35)
    pad = max(2, round(size * 0.4))
    region = (box.left, box.top, box.right, box.bottom)
    w, h = box.right - box.left, box.bottom - box.top
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=pad, fill=(0, 0, 0, 150))
    shadow = max(1, size // 16)  # a drop shadow: as legible as an outline, ~5x cheaper to draw
    for i, text in enumerate(lines):
        xy = (pad, pad + i * line_h)
        draw.text((xy[0] + shadow, xy[1] + shadow), text, font=font, fill=(0, 0, 0, 255))
        draw.text(xy, text, font=font, fill=(255, 255, 255, 255))
    out = img if in_place else img.copy()
    patch = Image.alpha_composite(out.crop(region).convert("RGBA"), layer)
    out.paste(patch if out.mode == "RGBA" else patch.convert(out.mode), region[:2])
    return out, box


def processed_height(size: tuple[int, int], width: int) -> int:
    """Height of the `width` px wide copy of an image of `size`, by aspect."""
    w, h = size
    return max(1, round(h * width / w))


def resize_to_width(img: Image.Image, width: int) -> Image.Image:
    w, h = img.size
    height = processed_height(img.size, width)
    if (w, h) == (width, height):
        return img
    if width > w:  # upscaling a small image: bilinear is smooth enough there and 3x cheaper than Lanczos
        return img.resize((width, height), Image.Resampling.BILINEAR)
    return img.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


@dataclass
class Rendered:
    body: bytes
    extension: str  # "jpg" or "png"
    content_type: str
    width: int
    height: int


def render(decoded: Decoded, lines: list[str], width: int) -> Rendered:
    """Processed image: `width` px wide, the prediction lines on a panel; PNG when transparent."""
    img = resize_to_width(decoded.image, width)
    img, _ = draw_overlay(img, lines, in_place=img is not decoded.image)
    out = io.BytesIO()
    if decoded.has_alpha:
        img.save(out, "PNG", compress_level=3)
        ext, ctype = "png", "image/png"
    else:
        img.save(out, "JPEG", quality=85)
        ext, ctype = "jpg", "image/jpeg"
    return Rendered(out.getvalue(), ext, ctype, img.width, img.height)
