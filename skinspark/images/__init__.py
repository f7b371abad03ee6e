"""Where images come from: listing them with Spark (folders, globs, zip archives read in place) and
reading each one's encoded bytes in the Python worker that decodes it (plain files, zip members, the
image inside a DICOM file).

- `listing`: Spark's `binaryFile` listing, the jobs' input as a `Listing`, path keys and image ids.
- `files`: plain files opened by a worker (local, or through `pyarrow.fs`).
- `archives`: zip archives, planned from their central directories and read member by member.
- `dicom`: the image inside a DICOM object.
- `reading`: the bytes of a batch's rows, whatever holds them.
"""

from skinspark.images.files import ARROW_SCHEMES, LOCAL_SCHEMES
from skinspark.images.listing import (
    ARCHIVE_GLOB,
    CONTENT,
    FILE_PATH,
    IMAGE_GLOB,
    IMAGE_KINDS,
    IMAGE_SUFFIXES,
    LENGTH,
    PATH,
    READERS,
    ImagePathError,
    Listing,
    file_index,
    image_id,
    image_id_column,
    list_images,
    list_sources,
    listed_files,
    listing_settings,
    path_key,
    resolve_reader,
    scan_settings,
    zero_byte_files,
)
from skinspark.images.reading import batch_contents, read_columns, read_file, read_files

__all__ = [
    "ARCHIVE_GLOB",
    "ARROW_SCHEMES",
    "CONTENT",
    "FILE_PATH",
    "IMAGE_GLOB",
    "IMAGE_KINDS",
    "IMAGE_SUFFIXES",
    "LENGTH",
    "LOCAL_SCHEMES",
    "PATH",
    "READERS",
    "ImagePathError",
    "Listing",
    "batch_contents",
    "file_index",
    "image_id",
    "image_id_column",
    "list_images",
    "list_sources",
    "listed_files",
    "listing_settings",
    "path_key",
    "read_columns",
    "read_file",
    "read_files",
    "resolve_reader",
    "scan_settings",
    "zero_byte_files",
]
