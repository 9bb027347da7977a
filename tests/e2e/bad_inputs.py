"""A corpus of hostile and odd uploads, each with the outcome the product owes it.

Every `Case` is pushed through the user's real path by tests/e2e/test_bad_inputs.py (createImage
with the declared type and size -> presigned POST to SeaweedFS -> S3 event -> SQS -> worker ->
TorchServe -> record). Its `expect` is one of:
- `Done`: the record ends DONE and the processed copy is `size` (1000 px wide, height by the
  upright aspect), JPEG or PNG (transparency kept), with `pixels` where the picture proves the
  right thing happened (EXIF orientation applied, first GIF frame, colours of CMYK or 16-bit
  files kept);
- `Failed`: the record ends FAILED with an error containing `phrase`, a sentence a person can read;
- `Refused`: refused up front, by `createImage` (typename + message) or by S3 at the presigned POST
  (the policy pins type and size; error code in S3's XML answer), and nothing reaches the bucket.

The generators are cheap: the 50 MP photo is a flat colour (a small JPEG), the bombs are tiny
files with huge headers.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from tests.handlers.images import chelsea_jpeg, truncated_jpeg
from tests.workers.images import bomb_png, encode, noise

# --- expected outcomes ---------------------------------------------------------------------------

Colour = tuple[int, ...]  # RGB, or RGBA to check the alpha too


@dataclass(frozen=True)
class Done:
    size: tuple[int, int]
    reason: str
    extension: Literal["jpg", "png"] = "jpg"
    # (x, y) as fractions of the processed image -> expected colour; samples sit below the
    # prediction panel (top left), so they see the picture itself.
    pixels: dict[tuple[float, float], Colour] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    phrase: str
    reason: str


@dataclass(frozen=True)
class Refused:
    at: Literal["createImage", "upload"]
    code: str  # createImage: the result's __typename; upload: S3's <Code>
    reason: str
    phrase: str = ""  # createImage: in the message


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], bytes]
    expect: Done | Failed | Refused
    content_type: str = "image/jpeg"  # declared to createImage, and the POST's Content-Type field
    declared_length: Callable[[bytes], int] = len
    post_content_type: str | None = None  # a Content-Type form field other than the policy's

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.content_type.rsplit('/', 1)[-1]}"


# --- generators ----------------------------------------------------------------------------------

RED, GREEN, BLUE, YELLOW = (220, 30, 30), (30, 190, 40), (30, 40, 220), (235, 220, 40)
UPRIGHT = (400, 300)  # the EXIF cases' picture as a viewer shows it: 4:3, processed 1000x750


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def quadrants(size: tuple[int, int] = UPRIGHT) -> Image.Image:
    """Red top left, green top right, blue bottom left, yellow bottom right."""
    w, h = size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[: h // 2, : w // 2] = RED
    pixels[: h // 2, w // 2 :] = GREEN
    pixels[h // 2 :, : w // 2] = BLUE
    pixels[h // 2 :, w // 2 :] = YELLOW
    return Image.fromarray(pixels)


# The stored pixels that EXIF `orientation` turns into `quadrants()`: the inverse of the
# transposition a viewer applies (ImageOps.exif_transpose's table).
_STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def exif_jpeg(orientation: int | None) -> bytes:
    """A JPEG that shows `quadrants()` upright when its EXIF orientation is honoured."""
    upright = quadrants()
    if orientation is None:
        return encode(upright, "JPEG")
    method = _STORE.get(orientation)
    stored = upright.transpose(method) if method is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", exif=exif.tobytes())


def garbage_exif_jpeg() -> bytes:
    """`quadrants()` with an APP1 Exif segment full of noise right after SOI."""
    body = encode(quadrants(), "JPEG")
    payload = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + bytes(range(256)) * 4
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return body[:2] + segment + body[2:]


def text_as_jpeg() -> bytes:
    return b"Dear diary, today I renamed this text file to holiday.jpg.\n" * 20


def truncated_png() -> bytes:
    whole = encode(noise((300, 200)), "PNG")
    return whole[: len(whole) // 2]


def fifty_megapixels() -> bytes:
    return encode(Image.new("RGB", (8660, 5774), (90, 140, 200)), "JPEG", quality=90)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("RGB", (600, 400), RED).convert("CMYK"), "JPEG")


def grey16_png() -> bytes:
    """16-bit greyscale, black on the left to white on the right (values far above 255)."""
    ramp = np.tile(np.linspace(0, 65535, 640).astype(np.uint16), (480, 1))
    return encode(Image.fromarray(ramp), "PNG")  # mode I;16


def rgb16_png() -> bytes:
    """16-bit-per-channel RGB (Pillow cannot write it: built by hand): left half red, right blue."""
    w, h = 400, 300
    pixels = np.zeros((h, w, 3), dtype=">u2")
    pixels[:, : w // 2] = (56000, 8000, 8000)
    pixels[:, w // 2 :] = (8000, 9000, 56000)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def palette_png_transparent() -> bytes:
    """Palette PNG: left half the transparent index, right half red."""
    img = Image.new("P", (400, 300), 0)
    img.putpalette([0, 0, 0, *RED] + [0] * (254 * 3))
    img.paste(1, (200, 0, 400, 300))
    return encode(img, "PNG", transparency=0)


def grey_alpha_png() -> bytes:
    """Greyscale + alpha: top half opaque grey, bottom half fully transparent."""
    img = Image.new("LA", (400, 300), (128, 255))
    img.paste((128, 0), (0, 150, 400, 300))
    return encode(img, "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (300, 200), colour) for colour in (RED, BLUE, GREEN)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def gif_with_html() -> bytes:
    """A valid GIF with an HTML payload appended (a GIF/HTML polyglot)."""
    return encode(Image.new("RGB", (300, 200), BLUE), "GIF") + b"<html><script>alert(document.cookie)</script>"


def gif_huge_screen() -> bytes:
    """A 1x1 GIF whose logical screen claims 65535x65535 pixels."""
    body = bytearray(encode(Image.new("P", (1, 1), 0), "GIF"))
    body[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(body)


def chelsea_webp(**kw) -> bytes:
    return encode(Image.open(io.BytesIO(chelsea_jpeg())), "WEBP", quality=80, **kw)


def webp_with_alpha() -> bytes:
    """WebP with transparency: left half transparent, right half opaque blue."""
    img = Image.new("RGBA", (400, 300), (0, 0, 0, 0))
    img.paste((*BLUE, 255), (200, 0, 400, 300))
    return encode(img, "WEBP", lossless=True)


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (300, 200), colour) for colour in (GREEN, RED)]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    return out.getvalue()


def flat_png(size: tuple[int, int], colour: Colour = BLUE) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


def jpeg_huge_header() -> bytes:
    """A small JPEG whose SOF header claims 65000x65000 pixels."""
    body = bytearray(encode(Image.new("RGB", (16, 16), RED), "JPEG"))
    sof = body.find(b"\xff\xc0")
    body[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)  # height, width
    return bytes(body)


def bmp_bomb() -> bytes:
    """A 54-byte BMP header declaring 50000x50000 24-bit pixels, and no pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def png_with(chunk: bytes) -> bytes:
    """A valid 200x150 PNG with `chunk` inserted before its pixel data."""
    body = encode(Image.new("RGB", (200, 150), GREEN), "PNG")
    idat = body.find(b"IDAT") - 4
    return body[:idat] + chunk + body[idat:]


def ztxt_bomb_png() -> bytes:
    """A zTXt chunk that inflates to 20 MB of text (20 KB compressed; Pillow stops at 1 MB)."""
    compressor = zlib.compressobj(9)
    text = b"".join(compressor.compress(b"A" * 1_000_000) for _ in range(20)) + compressor.flush()
    return png_with(png_chunk(b"zTXt", b"Comment\x00\x00" + text))


def iccp_bomb_png() -> bytes:
    """An iCCP colour profile that inflates to 20 MB (Pillow stops at 1 MB)."""
    compressor = zlib.compressobj(9)
    profile = b"".join(compressor.compress(b"\x00" * 1_000_000) for _ in range(20)) + compressor.flush()
    return png_with(png_chunk(b"iCCP", b"evil\x00\x00" + profile))


def big_text_png() -> bytes:
    """An uncompressed tEXt chunk of 4 MB: metadata Pillow skips, the pixels are fine."""
    return png_with(png_chunk(b"tEXt", b"Comment\x00" + b"x" * 4_000_000))


def tiff_file() -> bytes:
    return encode(Image.new("RGB", (300, 200), RED), "TIFF")


def eps_file() -> bytes:
    """PostScript (which Pillow would hand to Ghostscript): refused without running anything."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
            b"newpath 0 0 moveto 100 100 lineto stroke showpage\n%%EOF\n")


def progressive_jpeg() -> bytes:
    return encode(Image.open(io.BytesIO(chelsea_jpeg())), "JPEG", progressive=True)


# --- the corpus ----------------------------------------------------------------------------------

WIDTH = 1000
UPRIGHT_QUADRANTS = {(0.25, 0.44): RED, (0.75, 0.44): GREEN, (0.25, 0.8): BLUE, (0.75, 0.8): YELLOW}
CHELSEA_SIZE = (WIDTH, 665)  # skimage's chelsea is 451x300
NOT_AN_IMAGE = "not an image this service can read"
DAMAGED = "damaged or truncated"
TOO_LARGE = "too large to decode safely"


def _exif_case(orientation: int) -> Case:
    turned = "swapped width and height" if orientation >= 5 else "same shape"
    return Case(f"exif_orientation_{orientation}", lambda: exif_jpeg(orientation),
                Done((WIDTH, 750), f"EXIF orientation {orientation} ({turned}) applied: the viewer's "
                                   "upright picture, all four quadrants in place", pixels=UPRIGHT_QUADRANTS))


CASES: list[Case] = [
    # refused up front
    Case("zero_bytes_declared", lambda: b"", Refused("createImage", "InvalidInput", "an empty file is refused "
                                                     "before any URL is handed out", "at least 1 byte")),
    Case("zero_bytes_sent", lambda: b"", Refused("upload", "EntityTooSmall", "the policy's length range starts "
                                                 "at the declared size"), declared_length=lambda body: 1),
    Case("over_upload_limit", chelsea_jpeg, Refused("createImage", "UploadTooLarge", "declared above "
                                                    "max_upload_bytes", "the limit is"),
         declared_length=lambda body: 20 * 1024 * 1024 + 1),
    Case("content_larger_than_declared", chelsea_jpeg, Refused("upload", "EntityTooLarge", "the policy pins "
                                                               "the declared size"),
         declared_length=lambda body: len(body) - 100),
    Case("content_smaller_than_declared", chelsea_jpeg, Refused("upload", "EntityTooSmall", "a cut-off file "
                                                                "never reaches the bucket"),
         declared_length=lambda body: len(body) + 100),
    Case("svg_declared", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
         Refused("createImage", "UnsupportedContentType", "SVG can carry scripts: not an accepted type",
                 "is not accepted"), content_type="image/svg+xml"),
    Case("html_declared", lambda: b"<html><script>alert(1)</script></html>",
         Refused("createImage", "UnsupportedContentType", "not an image type", "is not accepted"),
         content_type="text/html"),
    Case("post_content_type_tampered", lambda: b"<html><script>alert(1)</script></html>",
         Refused("upload", "AccessDenied", "the policy pins the Content-Type: served back as HTML it "
                 "would run in the site's origin"), content_type="image/png", post_content_type="text/html"),
    # unreadable, damaged or hostile: FAILED with a readable reason
    Case("text_named_jpg", text_as_jpeg, Failed(NOT_AN_IMAGE, "text is not an image, whatever its name")),
    Case("html_named_png", lambda: b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script>"
                                   b"</body></html>", Failed(NOT_AN_IMAGE, "HTML declared as PNG"),
         content_type="image/png"),
    Case("truncated_jpeg", truncated_jpeg, Failed(DAMAGED, "a third of a JPEG")),
    Case("truncated_png", truncated_png, Failed(DAMAGED, "half of a PNG"), content_type="image/png"),
    Case("png_bomb_30000x30000", bomb_png, Failed(TOO_LARGE, "900 MP declared in a tiny PNG: refused from "
                                                  "its header"), content_type="image/png"),
    Case("png_bomb_10000x10000", lambda: bomb_png(10000), Failed("above the 90 MP limit", "100 MP: above "
                                                                 "max_image_pixels"), content_type="image/png"),
    Case("jpeg_huge_header", jpeg_huge_header, Failed(TOO_LARGE, "a 16x16 JPEG whose header says 65000x65000")),
    Case("gif_huge_logical_screen", gif_huge_screen, Failed(TOO_LARGE, "a 1x1 GIF on a 65535x65535 screen"),
         content_type="image/gif"),
    Case("bmp_bomb", bmp_bomb, Failed(TOO_LARGE, "a BMP header declaring 50000x50000"), content_type="image/bmp"),
    Case("png_ztxt_bomb", ztxt_bomb_png, Failed("Decompressed data too large", "a text chunk that would "
                                                "inflate to 20 MB is stopped at 1 MB"), content_type="image/png"),
    Case("png_iccp_bomb", iccp_bomb_png, Failed("Decompressed data too large", "a colour profile that would "
                                                "inflate to 20 MB is stopped at 1 MB"), content_type="image/png"),
    Case("tiff_declared_jpeg", tiff_file, Failed(NOT_AN_IMAGE, "TIFF is not an accepted format, whatever "
                                                 "the declared type")),
    Case("eps_declared_jpeg", eps_file, Failed(NOT_AN_IMAGE, "PostScript is never decoded (no Ghostscript "
                                               "on user input)")),
    Case("strip_10x10000", lambda: flat_png((10, 10000)), Failed("too tall", "1000 px wide it would be "
                                                                  "1000x1000000"), content_type="image/png"),
    # odd but valid: DONE, 1000 px wide
    Case("photo_50_megapixels", fifty_megapixels, Done((WIDTH, 667), "8660x5774 decoded at 1/8 scale",
                                                       pixels={(0.5, 0.7): (90, 140, 200)})),
    Case("cmyk_jpeg", cmyk_jpeg, Done((WIDTH, 667), "CMYK converted, colours kept", pixels={(0.5, 0.7): RED})),
    Case("png_16bit_grey", grey16_png, Done((WIDTH, 750), "16-bit values rescaled, not clipped to white",
                                            pixels={(0.05, 0.7): (0, 0, 0), (0.5, 0.7): (128, 128, 128),
                                                    (0.95, 0.7): (255, 255, 255)}), content_type="image/png"),
    Case("png_16bit_rgb", rgb16_png, Done((WIDTH, 750), "16 bits per channel reduced to 8",
                                          pixels={(0.25, 0.7): (218, 31, 31), (0.75, 0.7): (31, 35, 218)}),
         content_type="image/png"),
    Case("palette_png_transparent", palette_png_transparent,
         Done((WIDTH, 750), "palette transparency kept: a PNG", "png",
              pixels={(0.25, 0.7): (0, 0, 0, 0), (0.75, 0.7): (*RED, 255)}), content_type="image/png"),
    Case("grey_alpha_png", grey_alpha_png, Done((WIDTH, 750), "greyscale + alpha kept: a PNG", "png",
                                                pixels={(0.75, 0.3): (128, 128, 128, 255),
                                                        (0.5, 0.8): (0, 0, 0, 0)}), content_type="image/png"),
    Case("animated_gif", animated_gif, Done((WIDTH, 667), "the first frame", pixels={(0.5, 0.7): RED}),
         content_type="image/gif"),
    Case("gif_with_html_appended", gif_with_html, Done((WIDTH, 667), "a GIF/HTML polyglot is a GIF; the "
                                                       "processed copy is re-encoded", pixels={(0.5, 0.7): BLUE}),
         content_type="image/gif"),
    Case("webp", chelsea_webp, Done(CHELSEA_SIZE, "lossy WebP"), content_type="image/webp"),
    Case("webp_with_alpha", webp_with_alpha, Done((WIDTH, 750), "WebP transparency kept: a PNG", "png",
                                                  pixels={(0.25, 0.7): (0, 0, 0, 0), (0.75, 0.7): (*BLUE, 255)}),
         content_type="image/webp"),
    Case("animated_webp", animated_webp, Done((WIDTH, 667), "the first frame", pixels={(0.5, 0.7): GREEN}),
         content_type="image/webp"),
    *[_exif_case(orientation) for orientation in range(1, 9)],
    Case("exif_less_jpeg", lambda: exif_jpeg(None), Done((WIDTH, 750), "no EXIF: shown as stored",
                                                         pixels=UPRIGHT_QUADRANTS)),
    Case("exif_orientation_invalid", lambda: exif_jpeg(9), Done((WIDTH, 750), "orientation 9 does not exist: "
                                                                "shown as stored", pixels=UPRIGHT_QUADRANTS)),
    Case("exif_garbage", garbage_exif_jpeg, Done((WIDTH, 750), "an unreadable EXIF block is ignored",
                                                 pixels=UPRIGHT_QUADRANTS)),
    Case("one_pixel", lambda: flat_png((1, 1), (0, 128, 255)), Done((WIDTH, WIDTH), "upscaled to 1000x1000",
                                                                    pixels={(0.5, 0.5): (0, 128, 255)}),
         content_type="image/png"),
    Case("strip_10000x10", lambda: flat_png((10000, 10)), Done((WIDTH, 1), "a 1000x1 result"),
         content_type="image/png"),
    Case("declared_png_is_jpeg", chelsea_jpeg, Done(CHELSEA_SIZE, "the bytes decide the format, not the "
                                                    "declared type"), content_type="image/png"),
    Case("progressive_jpeg", progressive_jpeg, Done(CHELSEA_SIZE, "progressive JPEG")),
    Case("png_huge_text_chunk", big_text_png, Done((WIDTH, 750), "4 MB of plain text metadata: ignored",
                                                   pixels={(0.5, 0.7): GREEN}), content_type="image/png"),
]

assert len({case.name for case in CASES}) == len(CASES), "case names must be unique"
