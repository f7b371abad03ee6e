"""The one place that turns encoded image bytes into a model-ready array.

Ingest stores what `decode_image` returns; scoring calls the same function on raw files, so a model
sees identical pixels in training and in production. Pixel scaling (uint8 -> [0, 1]) lives in the
model itself (`skinspark.model`), not here.

JPEGs are decoded with DCT scaling: libjpeg-turbo can decode at 1/2, 1/4 or 1/8 of full size for a
fraction of the work, so a 600 x 450 dermatoscopic JPEG is decoded straight to 150 x 113 and then
resized to the target (100 x 75 by default) with an antialiasing filter.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from skinspark import schema
from skinspark.errors import ImageError
from skinspark.images import dicom

DECODERS = ("simplejpeg", "pillow")
# Decompression-bomb guard: more pixels than this (before DCT scaling) is refused, not decoded.
MAX_IMAGE_PIXELS = 100_000_000
_JPEG_MAGIC = b"\xff\xd8"
# EXIF orientations that swap width and height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True)
class DecodeResult:
    """One image's outcome: pixels (height x width x 3 uint8) or a reason code and message."""

    pixels: np.ndarray | None
    reason: str | None = None
    message: str | None = None
    note: str | None = None  # a decoded image's remark: a multi-frame DICOM's first frame


def decode_image(data: bytes, height: int, width: int, decoder: str = "simplejpeg") -> np.ndarray:
    """Decode JPEG, DICOM (or any Pillow-readable) bytes into a `height x width x 3` uint8 RGB array.

    Greyscale, CMYK and palette images become RGB, PNG content under a `.jpg` name is decoded, and the
    EXIF orientation is applied before resizing. A DICOM file's JPEG frame is decoded as that JPEG,
    its uncompressed pixels resized as a PNG's (`skinspark.images.dicom`).

    Args:
        data: the encoded file's bytes.
        height, width: the output size in pixels.
        decoder: "simplejpeg" (libjpeg-turbo with DCT scaling, Pillow for anything else) or "pillow"
            (Pillow's `draft` DCT scaling for everything).

    Returns:
        A C-contiguous uint8 array of shape (height, width, 3).

    Raises:
        ImageError: empty, truncated, undecodable or too large input, or a DICOM file that is broken
            or of an unsupported transfer syntax (its `reason` says which).
        ValueError: an unknown decoder name or a non-positive size.
    """
    return decode_noted(data, height, width, decoder)[0]


def decode_noted(
    data: bytes, height: int, width: int, decoder: str = "simplejpeg"
) -> tuple[np.ndarray, str | None]:
    """`decode_image`, and a note worth keeping with the row (a multi-frame DICOM's first frame), or None."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {height}x{width}")
    if not data:
        raise ImageError(schema.REASON_EMPTY, "file is empty (0 bytes)")
    if dicom.is_dicom(data):
        image = dicom.unwrap(data)
        if image.jpeg is not None:
            return decode_image(image.jpeg, height, width, decoder), image.note
        _check_pixels(*image.pixels.shape[:2])
        return _resize(Image.fromarray(image.pixels), height, width), image.note
    return _decode_encoded(data, height, width, decoder), None


def _decode_encoded(data: bytes, height: int, width: int, decoder: str) -> np.ndarray:
    if decoder == "simplejpeg" and data[:2] == _JPEG_MAGIC:
        try:
            return _decode_simplejpeg(data, height, width)
        except ImageError:
            raise
        except ValueError as error:
            first_error = str(error)
        # libjpeg-turbo refused the file: let Pillow try (it reads a few JPEG variants turbo does
        # not), and report turbo's own message if Pillow fails too.
        try:
            return _decode_pillow(data, height, width)
        except ImageError as error:
            raise ImageError(error.reason, f"{error.message} (libjpeg-turbo: {first_error})") from None
    return _decode_pillow(data, height, width)


def decode_many(contents, height: int, width: int, decoder: str = "simplejpeg") -> list[DecodeResult]:
    """Decode a sequence of encoded images, turning each failure into a DecodeResult with a reason.

    An `ImageError` in place of an item's bytes (a file that could not be read) is its result.
    """
    results = []
    for data in contents:
        if isinstance(data, ImageError):
            results.append(DecodeResult(None, data.reason, data.message))
            continue
        try:
            pixels, note = decode_noted(data, height, width, decoder)
            results.append(DecodeResult(pixels, note=note))
        except ImageError as error:
            results.append(DecodeResult(None, error.reason, error.message))
        except Exception as error:  # noqa: BLE001 - one strange file must not fail the batch
            message = f"{type(error).__name__}: {error}"
            results.append(DecodeResult(None, schema.REASON_UNDECODABLE, f"cannot decode: {message}"))
    return results


def _decode_simplejpeg(data: bytes, height: int, width: int) -> np.ndarray:
    header_height, header_width, _, _ = simplejpeg.decode_jpeg_header(data)
    _check_pixels(header_height, header_width)
    orientation = _exif_orientation(data)
    min_height, min_width = (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_height, min_width=min_width)
    except ValueError as error:
        if "Premature end" in str(error):
            raise ImageError(schema.REASON_TRUNCATED, f"truncated JPEG: {error}") from None
        raise
    image = Image.fromarray(pixels)
    if orientation > 1:
        image = ImageOps.exif_transpose(_with_orientation(image, orientation))
    return _resize(image, height, width)


def _decode_pillow(data: bytes, height: int, width: int) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
        _check_pixels(image.height, image.width)
        orientation = image.getexif().get(0x0112, 1)
        if image.format == "JPEG":
            # DCT scaling: decode at the smallest 1/n scale still at least the target size.
            size = (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)
            image.draft("RGB", size)
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(schema.REASON_TOO_LARGE, str(error)) from None
    except Image.UnidentifiedImageError:
        raise ImageError(schema.REASON_UNDECODABLE, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as error:
        message = str(error)
        reason = schema.REASON_TRUNCATED if "truncated" in message else schema.REASON_UNDECODABLE
        raise ImageError(reason, f"cannot decode image: {message}") from None
    return _resize(image, height, width)


def _resize(image: Image.Image, height: int, width: int) -> np.ndarray:
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _check_pixels(height: int, width: int) -> None:
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageError(
            schema.REASON_TOO_LARGE, f"image is {width}x{height} pixels, over {MAX_IMAGE_PIXELS:,}"
        )


def _exif_orientation(data: bytes) -> int:
    """EXIF orientation (1 = upright); Pillow parses only files that carry an EXIF segment."""
    if data.find(b"Exif\x00\x00", 0, 4096) < 0:
        return 1
    try:
        return int(Image.open(io.BytesIO(data)).getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not reject an otherwise good image
        return 1


def _with_orientation(image: Image.Image, orientation: int) -> Image.Image:
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    return image


def pixels_from_bytes(raw: bytes, height: int, width: int) -> np.ndarray:
    """The inverse of storing `decode_image(...).tobytes()`: raw row-major uint8 back to an array."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def stored_size(height: int, width: int) -> int:
    """Bytes of one stored image: `height x width x 3` uint8, row-major (the table's `image` column)."""
    return height * width * 3


def stored_pixels(raw: bytes | None, height: int, width: int) -> np.ndarray:
    """One stored image back to a `height x width x 3` array, checking its size first.

    Raises:
        ImageError: (REASON_TRUNCATED) the value does not hold height * width * 3 bytes.
    """
    size = 0 if raw is None else len(raw)
    if size != stored_size(height, width):
        raise ImageError(
            schema.REASON_TRUNCATED, f"stored pixels are {size} bytes, expected {stored_size(height, width)}"
        )
    return pixels_from_bytes(raw, height, width)


def stored_batch(raw: list[bytes], height: int, width: int) -> np.ndarray:
    """Many stored images as one `(n, height, width, 3)` array.

    Raises:
        ImageError: (REASON_TRUNCATED) naming how many values do not hold height * width * 3 bytes.
    """
    bad = sum(1 for value in raw if value is None or len(value) != stored_size(height, width))
    if bad:
        raise ImageError(schema.REASON_TRUNCATED, f"{bad} image(s) do not hold {height}x{width}x3 bytes")
    return np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), height, width, 3)
