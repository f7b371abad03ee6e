"""DICOM files (hospital archives, ISIC 2020): the image inside, as the decoder wants it.

Dermoscopy has its own SOP class (Dermoscopic Photography Image Storage, 1.2.840.10008.5.1.4.1.1.77.1.7),
usually JPEG baseline inside (transfer syntax 1.2.840.10008.1.2.4.50) or uncompressed RGB. A JPEG
baseline object's first encapsulated frame is a complete JPEG file: it is handed to the same
`skinspark.preprocess.decode_image` as any JPEG (DCT-scaled, never decoded at full size), so a DICOM
wrapping a JPEG gives exactly that JPEG's pixels. Uncompressed RGB and MONOCHROME2 come back as a pixel
array (made RGB) for the same resize as a PNG. Other transfer syntaxes go through whatever decoders
pydicom has installed, else they are `unsupported_dicom`.

pydicom is the optional extra `dicom` (`pip install 'skinspark[dicom]'`), imported only when a DICOM is met.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from skinspark import schema
from skinspark.errors import ImageError

SUFFIX = ".dcm"
INSTALL_HINT = "pip install 'skinspark[dicom]'"
DERMOSCOPY_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.7"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
# Native (uncompressed) pixel data: implicit and explicit VR little endian, explicit big endian.
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"


@dataclasses.dataclass(frozen=True)
class DicomImage:
    """The image of a DICOM object: `jpeg` (a JPEG file's bytes) or `pixels` (height x width x 3
    uint8), and `note` when something is worth saying in the row (a multi-frame object's first frame)."""

    jpeg: bytes | None = None
    pixels: np.ndarray | None = None
    note: str | None = None


def is_dicom(data: bytes) -> bool:
    """Whether `data` is a DICOM file (Part 10: a 128-byte preamble, then `DICM`)."""
    return data[_MAGIC_OFFSET : _MAGIC_OFFSET + len(_MAGIC)] == _MAGIC


def available() -> bool:
    """Whether pydicom can be imported here."""
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return True


def unwrap(data: bytes) -> DicomImage:
    """The image inside a DICOM file's bytes: frame 1 of a multi-frame object (said in `note`).

    Raises:
        ImageError: `invalid_dicom` (not DICOM, cut short, no Pixel Data) or `unsupported_dicom` (a
            transfer syntax no installed decoder reads, or pydicom missing).
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageError(schema.REASON_UNSUPPORTED_DICOM, f"DICOM needs pydicom: {INSTALL_HINT}") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        has_pixels = "PixelData" in dataset
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (InvalidDicomError, EOFError, OSError, ValueError, AttributeError, KeyError) as error:
        raise ImageError(schema.REASON_INVALID_DICOM, f"not a readable DICOM file: {error}") from None
    if not has_pixels:
        message = "no Pixel Data (none in the object, or the file ends before it)"
        raise ImageError(schema.REASON_INVALID_DICOM, message)
    note = f"DICOM with {frames} frames: frame 1 used" if frames > 1 else None
    if syntax == JPEG_BASELINE:
        return DicomImage(jpeg=_first_frame(dataset, frames), note=note)
    return DicomImage(pixels=_decoded_pixels(dataset, syntax, frames), note=note)


def _first_frame(dataset, frames: int) -> bytes:
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(dataset.PixelData, number_of_frames=frames))
    except (StopIteration, ValueError, EOFError) as error:
        raise ImageError(schema.REASON_INVALID_DICOM, f"no readable JPEG frame: {error}") from None


def _decoded_pixels(dataset, syntax: str, frames: int) -> np.ndarray:
    """Frame 1 as uncompressed RGB uint8, through pydicom's own decoders (native data needs only NumPy)."""
    try:
        pixels = dataset.pixel_array if frames == 1 else dataset.pixel_array[0]
    except (NotImplementedError, RuntimeError, ImportError) as error:
        raise ImageError(
            schema.REASON_UNSUPPORTED_DICOM,
            f"transfer syntax {syntax} ({_syntax_name(syntax)}) cannot be decoded here: {error}",
        ) from None
    except (ValueError, EOFError, AttributeError, KeyError, TypeError) as error:
        raise ImageError(schema.REASON_INVALID_DICOM, f"cannot read the pixel data: {error}") from None
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    return _as_rgb(np.asarray(pixels), photometric, int(dataset.get("BitsStored", 8) or 8))


def _as_rgb(pixels: np.ndarray, photometric: str, bits_stored: int) -> np.ndarray:
    if pixels.dtype != np.uint8:  # 12- or 16-bit samples: keep the top 8 bits of what is stored
        pixels = (pixels.astype(np.int64) >> max(0, bits_stored - 8)).clip(0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        if photometric == "MONOCHROME1":  # 0 is white
            pixels = 255 - pixels
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        # pydicom 3's pixel_array is RGB already for YBR_FULL, YBR_FULL_422, YBR_RCT and YBR_ICT
        # (its decoders' `as_rgb` default): converting again would shift every colour.
        return np.ascontiguousarray(pixels)
    raise ImageError(
        schema.REASON_UNSUPPORTED_DICOM, f"pixel data of shape {pixels.shape} ({photometric}) is not an image"
    )


def _syntax_name(syntax: str) -> str:
    try:
        from pydicom.uid import UID

        return UID(syntax).name
    except ImportError:
        return "unknown"
