"""The handler's preprocessing, without a server: decoding, modes, orientation, geometry, refusals."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from handlers.image_classifier import (
    ImageInputError,
    Preprocessing,
    decode_image,
    image_to_input,
    payload_bytes,
    resize_and_crop,
    to_rgb,
    to_tensor,
)
from tests.handlers.images import chelsea_jpeg, encode, halves, png_bomb, truncated_jpeg

LITE = Preprocessing(
    input_size=260,
    resize_size=292,
    interpolation="bicubic",
    mean=(127 / 255,) * 3,
    std=(128 / 255,) * 3,
)


def decoded(image: Image.Image, fmt: str = "PNG", **params: object) -> Image.Image:
    return decode_image(encode(image, fmt, **params), LITE)


# --- modes -------------------------------------------------------------------------------------


def test_grayscale_stays_one_band_and_becomes_three_equal_channels() -> None:
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    # One band through decode and resize (a third of the work), three equal channels in the
    # tensor, exactly what converting to RGB first gives.
    assert decoded(gray).mode == "L"
    tensor = image_to_input(encode(gray, "PNG"), LITE)
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])
    assert torch.equal(tensor, to_tensor(resize_and_crop(gray.convert("RGB"), LITE), LITE))
    assert tensor.max() > 0.9 and tensor.min() < -0.9  # the gradient survived


def test_palette_becomes_rgb_with_the_palette_colours() -> None:
    palette = halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    rgb = np.asarray(decoded(palette))
    assert tuple(rgb[10, 2]) == (255, 0, 0) and tuple(rgb[10, 37]) == (0, 0, 255)


def test_transparent_pixels_are_flattened_onto_white() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (0, 128, 0, 255)  # opaque green
    rgba[:, 4:] = (0, 0, 0, 0)  # fully transparent "black"
    rgb = np.asarray(decoded(Image.fromarray(rgba)))
    assert tuple(rgb[0, 0]) == (0, 128, 0)
    assert tuple(rgb[0, 7]) == (255, 255, 255)


def test_palette_with_transparency_is_flattened_too() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.putpixel((3, 3), 1)
    rgb = np.asarray(decoded(image, "PNG", transparency=0))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[3, 3]) == (200, 10, 10)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    image = decoded(cmyk, "JPEG", quality=95)
    assert image.mode == "RGB"
    r, g, b = np.asarray(image)[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (64, 64, 3)
    # mid-grey stays mid-grey; Pillow's plain convert would have turned nearly all of it white
    assert 120 <= rgb[32, 0, 0] <= 136
    assert rgb[0, 0, 0] == 0 and rgb[63, 63, 0] == 255
    assert np.asarray(decoded(image)).shape == (64, 64, 3)  # and it round-trips through PNG


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_common_formats_decode(fmt: str) -> None:
    image = decoded(halves(), fmt)
    assert image.mode == "RGB" and image.size == (40, 20)
    r, _, b = np.asarray(image)[10, 3].astype(int)
    assert r > 200 and b < 60


def test_animated_gif_uses_the_first_frame() -> None:
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(__import__("io").BytesIO(data)).n_frames == 2
    assert tuple(np.asarray(decode_image(data, LITE))[8, 8]) == (255, 0, 0)


# --- orientation and geometry ------------------------------------------------------------------


def test_exif_orientation_rotates_the_pixels() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image = decoded(halves(40, 20), "JPEG", quality=95, exif=exif.tobytes())
    assert image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    top, bottom = pixels[5, 10], pixels[35, 10]
    assert top[0] > 200 and top[2] < 60  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (1, 1), (2000, 15), (260, 260), (3000, 2000)])
def test_every_size_becomes_the_model_input(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (127, 127, 127))
    tensor = image_to_input(encode(image, "PNG"), LITE)
    assert tensor.shape == (3, 260, 260)
    assert tensor.dtype == torch.float32
    assert tensor.abs().max() < 1e-6  # 127 is the Lite normalisation's zero


def test_an_extreme_strip_is_cropped_before_resizing() -> None:
    strip = Image.new("L", (3_000_000, 1), 127)  # 3 MP: under the pixel limit
    tensor = image_to_input(encode(strip, "PNG"), LITE)  # naive resize: 292 x 876M pixels
    assert tensor.shape == (3, 260, 260)


def test_other_formats_are_refused() -> None:
    assert refusal(encode(halves(), "TIFF")).code == "undecodable_image"


def test_resize_and_crop_matches_torchvision() -> None:
    image = decode_image(chelsea_jpeg(), LITE)
    reference = transforms.Compose(
        [transforms.Resize(292, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(260)]
    )(image)
    assert np.array_equal(np.asarray(resize_and_crop(image, LITE)), np.asarray(reference))


def test_normalisation_uses_the_archive_mean_and_std() -> None:
    imagenet = Preprocessing(260, 292, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    white = encode(Image.new("RGB", (300, 300), (255, 255, 255)), "PNG")
    tensor = image_to_input(white, imagenet)
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(tensor[:, 0, 0], torch.tensor(expected), atol=1e-4)


# --- refusals ----------------------------------------------------------------------------------


def refusal(data: bytes) -> ImageInputError:
    with pytest.raises(ImageInputError) as caught:
        decode_image(data, LITE)
    return caught.value


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < 200_000
    started = time.perf_counter()
    error = refusal(bomb)
    assert (error.status, error.code) == (413, "image_too_large")
    assert "900000000 pixels" in error.message or "30000x30000" in error.message
    assert time.perf_counter() - started < 5  # generous: decoding it would take far longer


def test_an_image_over_the_archive_pixel_limit_is_refused() -> None:
    small_limit = Preprocessing(260, 292, "bicubic", LITE.mean, LITE.std, max_pixels=100 * 100)
    with pytest.raises(ImageInputError) as caught:
        decode_image(encode(Image.new("RGB", (101, 100)), "PNG"), small_limit)
    assert caught.value.status == 413
    assert decode_image(encode(Image.new("RGB", (100, 100)), "PNG"), small_limit).size == (100, 100)


@pytest.mark.parametrize(
    "data",
    [b"not an image at all", truncated_jpeg(), b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"\xff\xd8\xff"],
    ids=["garbage", "truncated-jpeg", "broken-png", "jpeg-magic-only"],
)
def test_undecodable_bytes_are_a_400(data: bytes) -> None:
    error = refusal(data)
    assert (error.status, error.code) == (400, "undecodable_image")
    assert error.as_response() == {"error": error.message, "code": "undecodable_image"}


@pytest.mark.parametrize("row", [{"body": b""}, {"data": bytearray()}, {"body": None}, {}])
def test_an_empty_request_is_a_400(row: dict[str, object]) -> None:
    with pytest.raises(ImageInputError) as caught:
        payload_bytes(row)
    assert (caught.value.status, caught.value.code) == (400, "empty_input")


def test_a_json_body_is_not_an_image() -> None:
    with pytest.raises(ImageInputError) as caught:
        payload_bytes({"body": {"url": "http://example.com/cat.jpg"}})
    assert caught.value.code == "unsupported_input"


def test_bytes_arrive_from_data_or_body_or_a_form_field() -> None:
    assert payload_bytes({"data": bytearray(b"abc")}) == b"abc"
    assert payload_bytes({"body": b"xyz"}) == b"xyz"
    assert payload_bytes({"file": bytearray(b"jpg")}) == b"jpg"
