"""Render and decode without servers: widths, overlay pixels, EXIF, modes, draft, poison."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.workers.images import bomb_png, encode, jpeg, noise, photo
from workers import render
from workers.errors import PoisonInput

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

LINES = ["Labrador retriever - 77.0%", "golden retriever - 10.2%", "kuvasz - 3.1%", "tennis ball - 1.0%",
         "Great Pyrenees - 0.5%"]
W = 1000


def decode(data: bytes) -> render.Decoded:
    return render.decode(data, width=W, classifier_short_side=584, max_pixels=90_000_000)


@pytest.mark.parametrize("size", [(300, 2000), (4000, 500), (600, 3000), (12, 9), (1000, 750), (3000, 40)])
def test_exactly_1000_wide_with_height_by_aspect(size):
    out = render.render(decode(encode(noise(size))), LINES, W)
    img = Image.open(io.BytesIO(out.body))
    assert img.format == "JPEG" and out.extension == "jpg"
    assert img.width == W
    assert img.height == max(1, round(size[1] * W / size[0]))


@pytest.mark.parametrize("size", [(451, 300), (300, 900), (5000, 400), (20, 20)])
def test_overlay_changes_pixels_in_the_panel(size):
    decoded = decode(encode(photo("chelsea").resize(size)))
    plain = np.asarray(render.resize_to_width(decoded.image, W), dtype=np.int16)
    drawn, box = render.draw_overlay(render.resize_to_width(decoded.image, W), LINES)
    drawn = np.asarray(drawn, dtype=np.int16)
    assert plain.shape == drawn.shape
    inside = np.abs(drawn - plain)[box.top:box.bottom, box.left:box.right]
    assert inside.mean() > 10  # the panel darkens and the text lightens
    assert (drawn[box.top:box.bottom, box.left:box.right] > 200).all(axis=-1).sum() > 50  # white text
    outside = np.abs(drawn - plain)[box.bottom + 2:, :] if box.bottom + 2 < drawn.shape[0] else None
    if outside is not None and outside.size:
        assert outside.max() == 0  # nothing drawn below the panel


def test_panel_is_legible_on_white_and_black():
    for colour in (0, 255):
        img = Image.new("RGB", (W, 700), (colour,) * 3)
        drawn, box = render.draw_overlay(img, LINES)
        panel = np.asarray(drawn.convert("L"), dtype=np.int16)[box.top:box.bottom, box.left:box.right]
        assert panel.max() - panel.min() > 150  # strong contrast between text and panel


def test_font_scales_with_image():
    big, _ = render.panel_layout(1000, 800, LINES)
    short, box = render.panel_layout(1000, 60, LINES)
    assert big >= 24 and short < big and box.bottom <= 60


def test_exif_orientation_applied():
    img = noise((400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = encode(img, "JPEG", exif=exif.tobytes())
    decoded = decode(data)
    assert decoded.image.size == (200, 400) and decoded.size == (200, 400)
    out = Image.open(io.BytesIO(render.render(decoded, LINES, W).body))
    assert out.size == (1000, 2000)


def test_large_jpeg_decoded_in_draft_mode():
    data = jpeg("chelsea", size=(4000, 3000))
    decoded = decode(data)
    assert decoded.size == (4000, 3000)
    assert decoded.image.size == (1000, 750)  # 1/4 DCT scale still covers 1000 px and 584 px
    panorama = decode(encode(noise((8000, 1000))))
    assert min(panorama.image.size) >= 584


def test_transparency_gives_png():
    img = Image.new("RGBA", (300, 200), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (50, 50, 250, 150))
    out = render.render(decode(encode(img, "PNG")), LINES, W)
    assert out.extension == "png" and out.content_type == "image/png"
    back = Image.open(io.BytesIO(out.body))
    assert back.mode == "RGBA" and back.width == W and back.getpixel((999, 600))[3] == 0


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA"])
def test_modes(mode):
    base = photo("chelsea")
    img = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"  # PNG stores I;16 as 16-bit greyscale
    decoded = decode(encode(img, fmt))
    assert decoded.image.mode in ("RGB", "RGBA")
    assert render.render(decoded, LINES, W).width == W


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (100, 80), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode(buf.getvalue())
    r, g, b = decoded.image.convert("RGB").getpixel((50, 40))
    assert r > 200 and b < 50


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
    (jpeg()[:2000], "truncated"),
    (bomb_png(), "too large to decode safely"),
    (bomb_png(10000), "above the 90 MP limit"),
])
def test_poison(data, message):
    with pytest.raises(PoisonInput, match=message):
        decode(data)


def test_classifier_input_small_original_sent_as_is_and_large_downscaled():
    small = jpeg("chelsea")
    assert render.classifier_input(small, decode(small), 584) == small
    big = jpeg("chelsea", size=(4000, 3000))
    sent = render.classifier_input(big, decode(big), 584)
    img = Image.open(io.BytesIO(sent))
    assert img.format == "JPEG" and min(img.size) == 584 and len(sent) < len(big) / 4


def test_format_prediction():
    assert render.format_prediction("Labrador retriever", 0.77) == "Labrador retriever - 77.0%"


def test_format_title_says_when_the_model_is_unsure():
    assert render.format_title("Labrador retriever", 0.77, 0.2) == "Labrador retriever - 77.0%"
    assert render.format_title("Labrador retriever", 0.2, 0.2) == "Labrador retriever - 20.0%"  # at it: sure
    assert render.format_title("Labrador retriever", 0.14, 0.2) == "Probably Labrador retriever - 14.0%"


def test_an_unreadable_file_gets_a_message_a_person_can_read():
    with pytest.raises(PoisonInput) as err:
        render.decode(b"<html>not a picture</html>", width=1000, classifier_short_side=584, max_pixels=10**8)
    assert str(err.value) == "not an image this service can read (JPEG, PNG, WebP, GIF or BMP)"


@pytest.mark.parametrize("data", [
    encode(noise((300, 200)), "TIFF"),
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 0 0 moveto 100 100 lineto stroke\n%%EOF\n",
    encode(noise((64, 64)), "ICO"),
])
def test_only_the_accepted_formats_are_decoded(data):
    """Pillow would read these (and hand PostScript to Ghostscript); the API accepts none of them."""
    with pytest.raises(PoisonInput) as err:
        decode(data)
    assert str(err.value) == "not an image this service can read (JPEG, PNG, WebP, GIF or BMP)"


def test_a_strip_too_thin_for_a_1000_px_copy_is_refused_from_its_header():
    """10x10000 would become 1000x1000000 (3 GB); the limit is JPEG's 65535 px (or max_pixels / width)."""
    with pytest.raises(PoisonInput, match=r"10x10000 px: too tall .*1000x1000000 px; at most 65535 px tall"):
        decode(encode(Image.new("RGB", (10, 10000)), "PNG"))
    assert decode(encode(Image.new("RGB", (10, 655)), "PNG")).size == (10, 655)  # 1000x65500: allowed
    with pytest.raises(PoisonInput, match="at most 65535 px tall"):
        decode(encode(Image.new("RGB", (10, 656)), "PNG"))
    with pytest.raises(PoisonInput, match="at most 10000 px tall"):  # a smaller pixel limit: lower
        render.decode(encode(Image.new("RGB", (10, 101)), "PNG"), width=W, classifier_short_side=584,
                      max_pixels=10_000_000)
    exif = Image.Exif()
    exif[0x0112] = 6  # a wide strip turned upright is tall
    with pytest.raises(PoisonInput, match="10x10000 px: too tall"):
        decode(encode(Image.new("RGB", (10000, 10)), "JPEG", exif=exif.tobytes()))
    assert render.render(decode(encode(Image.new("RGB", (10000, 10)), "PNG")), LINES, W).height == 1


@pytest.mark.parametrize("bits", [16, 32])
def test_high_depth_grey_becomes_the_picture_the_model_classified(bits):
    """The processed copy shows a 16/32-bit greyscale photo with the same 8-bit values the model's
    handler classifies (a dark 16-bit scan stays dark instead of being stretched to full range)."""
    from handlers.image_classifier import to_rgb

    dark = np.linspace(0, 4000, 64 * 64).reshape(64, 64)
    img = Image.fromarray(dark.astype(np.uint16)) if bits == 16 else Image.fromarray(dark.astype(np.int32) * 70000, "I")
    seen_by_model = np.asarray(to_rgb(img))[..., 0]
    shown = np.asarray(render._to_rgb_or_rgba(img, alpha=False))[..., 0]
    assert np.array_equal(shown, seen_by_model)
    if bits == 16:
        assert shown.max() <= 16  # 4000 / 257: dark, as a viewer shows it
