"""Writing one image as a DICOM file of the Dermoscopic Photography Image Storage class, with pydicom 3.

Two encodings, as dermoscopy archives hold them: a JPEG file's bytes encapsulated unchanged as the single
frame (`jpeg_to_dicom`, transfer syntax JPEG Baseline), or uncompressed RGB or grey pixels
(`rgb_to_dicom`, Explicit VR Little Endian). pydicom is the optional extra `skinspark[dicom]`, imported
inside the functions only, so this module imports without it; `require_pydicom()` says in one line
what to install.

Every UID is derived from the content (`pydicom.uid.generate_uid` with entropy sources), so the same
image and ids always give the same bytes, as the rest of the generator does.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image

from skinspark.images.dicom import INSTALL_HINT, SUFFIX

__all__ = ["SUFFIX", "jpeg_to_dicom", "require_pydicom", "rgb_to_dicom"]

# DICOM's defined term for dermoscopy in Modality (0008,0060).
DERMOSCOPY_MODALITY = "DMS"
PYDICOM_MAJOR = 3  # enforce_file_format and generate_frames are pydicom 3's

Destination = str | os.PathLike | BinaryIO


def require_pydicom():
    """pydicom (the module), or ImportError with one line naming the extra to install.

    Raises:
        ImportError: pydicom is missing or older than 3.
    """
    message = f"writing DICOM needs pydicom {PYDICOM_MAJOR}: {INSTALL_HINT}"
    try:
        import pydicom
    except ImportError:
        raise ImportError(message) from None
    if int(pydicom.__version__.split(".")[0]) < PYDICOM_MAJOR:
        raise ImportError(f"{message} (found pydicom {pydicom.__version__})")
    return pydicom


def jpeg_to_dicom(jpeg: bytes, destination: Destination, image_id: str, patient_id: str) -> None:
    """Write a colour baseline JPEG as a DICOM file whose single frame is the JPEG's bytes, unchanged.

    DICOM items have even lengths, so the frame of an odd-length JPEG carries one zero byte after the
    JPEG's end marker (`pydicom.encaps.encapsulate` adds it; decoders stop at the marker).

    Args:
        jpeg: a complete JPEG file (baseline, three components, as cameras and HAM10000 write them).
        destination: a path (replaced if present) or a writable binary buffer.
        image_id: the image's id (e.g. `ISIC_0024306`), kept as Image Comments and hashed into the UIDs.
        patient_id: Patient ID; the lesion id, so that the photographs of one lesion share a study.

    Raises:
        ValueError: `jpeg` is not a colour baseline JPEG.
        ImportError: pydicom 3 is not installed.
    """
    pydicom = require_pydicom()
    from pydicom.encaps import encapsulate

    columns, rows = _baseline_jpeg_size(jpeg)
    dataset = _dataset(pydicom.uid.JPEGBaseline8Bit, image_id, patient_id, jpeg)
    # The photograph was compressed lossily before it became DICOM, which the standard asks to be said.
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionMethod = "ISO_10918_1"
    # JPEG stores colour as subsampled Y'CbCr: DICOM calls that YBR_FULL_422 for any baseline JPEG.
    _set_image_pixel_module(dataset, rows, columns, samples=3, photometric="YBR_FULL_422")
    dataset.PixelData = encapsulate([jpeg])
    dataset["PixelData"].VR = "OB"
    _save(dataset, destination)


def rgb_to_dicom(
    pixels: np.ndarray, destination: Destination, image_id: str, patient_id: str, monochrome: bool = False
) -> None:
    """Write uncompressed pixels as a DICOM file (Explicit VR Little Endian): RGB, or MONOCHROME2.

    Args:
        pixels: uint8 rows x columns x 3 (RGB); with `monochrome`, uint8 rows x columns (grey, 0 black).
        destination: a path (replaced if present) or a writable binary buffer.
        image_id: the image's id, kept as Image Comments and hashed into the UIDs.
        patient_id: Patient ID (the lesion id).
        monochrome: write a one-sample MONOCHROME2 image instead of RGB.

    Raises:
        ValueError: `pixels` is not uint8 or not of the shape `monochrome` asks for.
        ImportError: pydicom 3 is not installed.
    """
    pydicom = require_pydicom()
    pixels = _checked_pixels(pixels, monochrome)
    dataset = _dataset(pydicom.uid.ExplicitVRLittleEndian, image_id, patient_id, pixels.tobytes())
    samples, photometric = (1, "MONOCHROME2") if monochrome else (3, "RGB")
    _set_image_pixel_module(dataset, pixels.shape[0], pixels.shape[1], samples, photometric)
    dataset.PixelData = pixels.tobytes()  # rows x columns x samples, interleaved: PlanarConfiguration 0
    dataset["PixelData"].VR = "OB"
    _save(dataset, destination)


def _baseline_jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(columns, rows) of a colour baseline JPEG, read from its header; ValueError for anything else.

    The JPEG Baseline transfer syntax promises an 8-bit sequential JPEG, so a progressive or grey one
    would be a DICOM file that lies about its content.
    """
    try:
        with Image.open(io.BytesIO(jpeg)) as image:  # reads the header only
            kind, mode, size = image.format, image.mode, image.size
            progressive = bool(image.info.get("progressive"))
    except (OSError, ValueError) as error:
        raise ValueError(f"not a readable JPEG: {error}") from None
    if kind != "JPEG" or mode != "RGB" or progressive:
        described = f"{kind} {mode}{' progressive' if progressive else ''}"
        raise ValueError(f"jpeg_to_dicom takes a colour baseline JPEG, got {described}")
    return size


def _checked_pixels(pixels: np.ndarray, monochrome: bool) -> np.ndarray:
    pixels = np.asarray(pixels)
    shape = "rows x columns" if monochrome else "rows x columns x 3"
    fits = pixels.ndim == 2 if monochrome else pixels.ndim == 3 and pixels.shape[2] == 3
    if pixels.dtype != np.uint8 or not fits or 0 in pixels.shape:
        raise ValueError(f"pixels must be uint8 {shape}, got {pixels.dtype} {pixels.shape}")
    return np.ascontiguousarray(pixels)


def _dataset(transfer_syntax: str, image_id: str, patient_id: str, content: bytes):
    """A dataset with the file meta and the patient, study, series and instance of one image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DermoscopicPhotographyImageStorage, generate_uid

    digest = hashlib.sha256(content).hexdigest()
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    dataset.SOPClassUID = DermoscopicPhotographyImageStorage
    # The instance is the content: a different picture under the same id is a different instance.
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=["instance", image_id, digest])
    # One patient, study and series per lesion, so a viewer shows a lesion's photographs together.
    dataset.StudyInstanceUID = generate_uid(entropy_srcs=["study", patient_id])
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=["series", patient_id])
    dataset.PatientID = patient_id
    dataset.PatientName = ""  # type 2: present, empty (HAM10000 is de-identified)
    dataset.Modality = DERMOSCOPY_MODALITY
    dataset.ImageType = ["ORIGINAL", "PRIMARY"]
    dataset.ImageComments = image_id  # DICOM has no field for an image's name; the file name has it too
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def _set_image_pixel_module(dataset, rows: int, columns: int, samples: int, photometric: str) -> None:
    """The Image Pixel module of an 8-bit unsigned single-frame image."""
    dataset.SamplesPerPixel = samples
    dataset.PhotometricInterpretation = photometric
    if samples > 1:
        dataset.PlanarConfiguration = 0  # colour-by-pixel, as JPEG and interleaved RGB are
    dataset.Rows = rows
    dataset.Columns = columns
    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0


def _save(dataset, destination: Destination) -> None:
    """Write a DICOM Part 10 file: 128-byte preamble, `DICM`, the file meta, then the dataset."""
    # enforce_file_format: pydicom 3's way to write the preamble and a complete file meta (it fills in
    # the implementation UID and version); write_like_original is deprecated there.
    dataset.save_as(destination, enforce_file_format=True)
