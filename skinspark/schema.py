"""Column names, types and the label vocabulary: the one place every job refers to.

The label order is fixed: a label's index here is the `label` column of the ingested table, the
model's output unit and the `prob_<label>` column order of scoring. Never reorder it.
"""

from __future__ import annotations

from pyspark.sql import types as T

# The seven HAM10000 diagnoses, in the fixed order used everywhere (alphabetical, as in the
# dataset's documentation).
LABELS: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
LABEL_NAMES: dict[str, str] = {
    "akiec": "Actinic keratoses and intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesions",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevi",
    "vasc": "Vascular lesions",
}
LABEL_INDEX: dict[str, int] = {label: index for index, label in enumerate(LABELS)}
NUM_CLASSES = len(LABELS)

# The benign/malignant task (`--task malignant`): melanoma, basal cell carcinoma and actinic keratoses /
# intraepithelial carcinoma are malignant or pre-malignant; nevi, keratosis-like lesions,
# dermatofibroma and vascular lesions are benign (as Merchan Vargas et al. group HAM10000).
MALIGNANT_DX: tuple[str, ...] = ("akiec", "bcc", "mel")
BINARY_LABELS: tuple[str, ...] = ("benign", "malignant")
BINARY_LABEL_NAMES: dict[str, str] = {
    "benign": "Benign: nv, bkl, df, vasc",
    "malignant": "Malignant or pre-malignant: mel, bcc, akiec",
}

# Class counts of the real HAM10000 release (10,015 images, 7,470 lesions).
HAM10000_CLASS_COUNTS: dict[str, int] = {
    "akiec": 327,
    "bcc": 514,
    "bkl": 1099,
    "df": 115,
    "mel": 1113,
    "nv": 6705,
    "vasc": 142,
}
HAM10000_IMAGES = 10015
HAM10000_LESIONS = 7470
IMAGE_FOLDERS: tuple[str, ...] = ("HAM10000_images_part_1", "HAM10000_images_part_2")
METADATA_FILE = "HAM10000_metadata.csv"
# The same release as Harvard Dataverse serves it: each image folder as a zip named after it, its JPEGs at
# the zip's root, and the metadata as Dataverse's tab-separated export (text quoted, numbers not).
DATAVERSE_IMAGE_ARCHIVES: tuple[str, ...] = tuple(f"{folder}.zip" for folder in IMAGE_FOLDERS)
DATAVERSE_METADATA_FILE = "HAM10000_metadata.tab"

SEX_VALUES: tuple[str, ...] = ("male", "female", "unknown")
DX_TYPES: tuple[str, ...] = ("histo", "follow_up", "consensus", "confocal")
AGE_MIN, AGE_MAX = 0.0, 120.0

# Metadata CSV. The current release adds an eighth column `dataset`; older copies have seven.
# Extra columns are carried through as strings rather than rejected.
METADATA_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
OPTIONAL_METADATA_COLUMNS: tuple[str, ...] = ("dataset",)
# Read every column as a string and validate row by row: a typed read would turn a bad `age` into a
# silent null instead of a quarantined row.
METADATA_SCHEMA = T.StructType([T.StructField(name, T.StringType(), True) for name in METADATA_COLUMNS])

# Column names shared by ingest, training and scoring.
IMAGE_ID = "image_id"
LESION_ID = "lesion_id"
DX = "dx"
LABEL = "label"
DX_TYPE = "dx_type"
AGE = "age"
SEX = "sex"
LOCALIZATION = "localization"
IMAGE = "image"
HEIGHT = "height"
WIDTH = "width"
SOURCE_PATH = "source_path"
SPLIT = "split"
# The split names, the values of `split`; TEST is the held-out split, never in a fold.
TRAIN, VAL, TEST = "train", "val", "test"
SPLITS: tuple[str, ...] = (TRAIN, VAL, TEST)
# Cross-validation fold of a train or val row (0..K-1; null for test rows), only in a table ingested with
# --folds K. An integer column, unlike the other plan columns carried into the table as strings.
FOLD = "fold"

# The ingested table (partition column `split` lives in the directory names).
INGESTED_SCHEMA = T.StructType(
    [
        T.StructField(IMAGE_ID, T.StringType(), False),
        T.StructField(LESION_ID, T.StringType(), False),
        T.StructField(DX, T.StringType(), False),
        T.StructField(LABEL, T.IntegerType(), False),
        T.StructField(DX_TYPE, T.StringType(), True),
        T.StructField(AGE, T.FloatType(), True),
        T.StructField(SEX, T.StringType(), True),
        T.StructField(LOCALIZATION, T.StringType(), True),
        T.StructField(IMAGE, T.BinaryType(), False),
        T.StructField(HEIGHT, T.IntegerType(), False),
        T.StructField(WIDTH, T.IntegerType(), False),
        T.StructField(SOURCE_PATH, T.StringType(), False),
    ]
)

# Quarantine rows (ingest) and the reason codes they carry.
QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("item", T.StringType(), False),  # "file" (an image file) or "row" (a CSV row)
        T.StructField("source_path", T.StringType(), True),
        T.StructField("image_id", T.StringType(), True),
        T.StructField("reason", T.StringType(), False),
        T.StructField("message", T.StringType(), False),
    ]
)
REASON_UNDECODABLE = "undecodable_image"
REASON_TRUNCATED = "truncated_image"
REASON_EMPTY = "empty_file"
REASON_TOO_LARGE = "image_too_large"
REASON_UNREADABLE = "unreadable_file"  # listed, then gone or unreadable when its bytes were read
REASON_INVALID_ENCODING = "invalid_encoding"  # a CSV row that does not decode in the given encoding
REASON_NO_METADATA = "image_without_metadata"
REASON_NO_IMAGE = "metadata_without_image"
REASON_DUPLICATE_ID = "duplicate_image_id"
REASON_DUPLICATE_FILE = "duplicate_file"
REASON_CONFLICT = "conflicting_image_files"
REASON_INVALID_FIELD = "invalid_field"
REASON_DUPLICATE_ROW = "duplicate_row"  # an identical repeat of a CSV row: kept once
REASON_ROW_REJECTED = "metadata_row_rejected"  # an image whose only metadata rows were rejected
REASON_IMAGE_REJECTED = "image_rejected"  # a valid row whose image file(s) were all quarantined
# Zip archives read in place and DICOM files (skinspark.images.archives, skinspark.images.dicom).
REASON_BAD_ARCHIVE = "bad_archive"  # not a zip, or its central directory is missing (a cut download)
REASON_BAD_MEMBER = "bad_archive_member"  # a member whose data is cut, corrupt or fails its CRC
REASON_ENCRYPTED = "encrypted_member"  # a member that needs a password: never read
REASON_UNSUPPORTED_COMPRESSION = "unsupported_compression"  # a method Python's zipfile cannot read
REASON_INVALID_DICOM = "invalid_dicom"  # not DICOM, cut short, or without Pixel Data
REASON_UNSUPPORTED_DICOM = "unsupported_dicom"  # a transfer syntax no installed decoder reads
# Recorded for the record but not bad input: the item itself is ingested once.
BENIGN_REASONS: frozenset[str] = frozenset({REASON_DUPLICATE_FILE, REASON_DUPLICATE_ROW})
ITEM_FILE = "file"
ITEM_ROW = "row"

# Scoring output.
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{label}" for label in LABELS)
