"""The one decode path: DCT-scaled decode, colour modes, EXIF orientation, bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from skinspark import schema
from skinspark.preprocess import DECODERS, ImageError, decode_image, pixels_from_bytes


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    pixels = np.full((450, 600, 3), (190, 140, 120), dtype=np.float64) + rng.normal(0, 6, (450, 600, 3))
    pixels[:90, :120] = (250, 20, 20)  # a red block top-left survives any resize
    return pixels.clip(0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("decoder", DECODERS)
def test_jpeg_decodes_to_the_target_size_close_to_a_full_decode(decoder):
    data = _encode(Image.fromarray(_image()), quality=95)
    pixels = decode_image(data, 75, 100, decoder)
    assert pixels.shape == (75, 100, 3) and pixels.dtype == np.uint8
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((100, 75), Image.BILINEAR))
    assert np.abs(pixels.astype(int) - reference).mean() < 3.0
    assert tuple(pixels[5, 5]) > (230, 0, 0) and pixels[5, 5, 1] < 60


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_become_rgb(decoder, mode):
    data = _encode(Image.fromarray(_image()).convert(mode), quality=95)
    pixels = decode_image(data, 75, 100, decoder)
    assert pixels.shape == (75, 100, 3)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((100, 75), Image.BILINEAR))
    assert np.abs(pixels.astype(int) - expected).mean() < 3.0


@pytest.mark.parametrize("decoder", DECODERS)
def test_png_content_under_a_jpg_name_is_decoded(decoder):
    data = _encode(Image.fromarray(_image()), "PNG")
    assert decode_image(data, 75, 100, decoder).shape == (75, 100, 3)


@pytest.mark.parametrize("decoder", DECODERS)
def test_exif_orientation_is_applied(decoder):
    image = Image.fromarray(_image())
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    pixels = decode_image(_encode(image, exif=exif.tobytes(), quality=95), 75, 100, decoder)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80)
    # Upright, the red block sits top-left; after a clockwise turn it sits top-right.
    assert red[:10, -10:].mean() > 0.8 and red[:10, :10].mean() < 0.1


@pytest.mark.parametrize("decoder", DECODERS)
def test_bad_bytes_raise_image_error_with_a_reason(decoder):
    good = _encode(Image.fromarray(_image()))
    cases = {
        schema.REASON_EMPTY: b"",
        schema.REASON_TRUNCATED: good[: len(good) // 2],
        schema.REASON_UNDECODABLE: b"this is not an image" * 10,
    }
    for reason, data in cases.items():
        with pytest.raises(ImageError) as caught:
            decode_image(data, 75, 100, decoder)
        assert caught.value.reason == reason, (reason, caught.value.message)
        assert caught.value.message


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="decoder"):
        decode_image(b"x", 75, 100, "opencv")
    with pytest.raises(ValueError, match="positive"):
        decode_image(b"x", 0, 100)


def test_raw_bytes_round_trip():
    pixels = decode_image(_encode(Image.fromarray(_image())), 75, 100)
    assert np.array_equal(pixels_from_bytes(pixels.tobytes(), 75, 100), pixels)


def test_decode_many_turns_any_failure_into_a_reason_and_goes_on(monkeypatch):
    from skinspark import preprocess

    good = _encode(Image.fromarray(_image()))
    real = preprocess.decode_noted

    def flaky(data, height, width, decoder):
        if data == b"boom":
            raise RuntimeError("decoder bug")
        return real(data, height, width, decoder)

    monkeypatch.setattr(preprocess, "decode_noted", flaky)
    results = preprocess.decode_many([good, b"boom", b"", good], 75, 100)
    assert [result.reason for result in results] == [
        None,
        schema.REASON_UNDECODABLE,
        schema.REASON_EMPTY,
        None,
    ]
    assert "RuntimeError: decoder bug" in results[1].message
    assert results[0].pixels.shape == (75, 100, 3) and results[1].pixels is None
