"""The metadata of a synthetic HAM10000: the facts of the real release it mimics and how its rows are
drawn (class counts, images per lesion, dx_type, age, sex, localization, source dataset)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from skinspark.schema import (
    HAM10000_CLASS_COUNTS,
    HAM10000_IMAGES,
    IMAGE_FOLDERS,
    LABELS,
    METADATA_COLUMNS,
    OPTIONAL_METADATA_COLUMNS,
    SEX_VALUES,
)

# ----------------------------------------------------------------------------------------------------
# Facts about the real release that the metadata mimics.
# ----------------------------------------------------------------------------------------------------

# The current release's eight columns; `legacy_columns` drops the trailing `dataset`.
CURRENT_METADATA_COLUMNS: tuple[str, ...] = METADATA_COLUMNS + OPTIONAL_METADATA_COLUMNS

# Real image ids run consecutively from ISIC_0024306 to ISIC_0034320; part 1 holds the first 5,000.
FIRST_IMAGE_NUMBER = 24306
HAM10000_PART_1_IMAGES = 5000
IMAGE_WIDTH, IMAGE_HEIGHT = 600, 450
# Quality 97 and the grain below give files of about 130 KB that take about 1.4 ms to decode at 1/4 scale,
# as the real photographs do (about 120 KB, 1.6 ms): what ingest and scoring measure is realistic.
JPEG_QUALITY = 97

# Distinct lesions per class in the real release (they sum to HAM10000_LESIONS = 7,470). Melanomas are
# photographed more often than nevi, so the images-per-lesion ratio differs by class (nv 1.24, mel 1.81).
HAM10000_LESION_COUNTS: dict[str, int] = {
    "akiec": 228,
    "bcc": 327,
    "bkl": 727,
    "df": 73,
    "mel": 614,
    "nv": 5403,
    "vasc": 98,
}
MAX_IMAGES_PER_LESION = 6
# With at least this many images every class is present (each class is guaranteed one image).
MIN_IMAGES_FOR_ALL_CLASSES = len(LABELS)

# Real dx_type counts per class (images). They reproduce the real totals: histo 5,340, follow_up 3,704
# (nevi only), consensus 902, confocal 69 (benign keratoses only).
DX_TYPE_COUNTS: dict[str, dict[str, int]] = {
    "akiec": {"histo": 327},
    "bcc": {"histo": 514},
    "bkl": {"histo": 766, "consensus": 264, "confocal": 69},
    "df": {"histo": 55, "consensus": 60},
    "mel": {"histo": 1113},
    "nv": {"follow_up": 3704, "histo": 2498, "consensus": 503},
    "vasc": {"histo": 67, "consensus": 75},
}

# Age: multiples of 5 from 0 to 85; 57 of 10,015 real rows leave it empty. Means and spreads per class
# follow the real data (nevi are younger, keratinocyte cancers older).
AGE_STEP, AGE_LOWEST, AGE_HIGHEST = 5, 0, 85
MISSING_AGE_RATE = 57 / HAM10000_IMAGES
AGE_MEAN_SD: dict[str, tuple[float, float]] = {
    "akiec": (67.0, 12.0),
    "bcc": (67.0, 13.0),
    "bkl": (64.0, 13.0),
    "df": (53.0, 14.0),
    "mel": (61.0, 15.0),
    "nv": (47.0, 16.0),
    "vasc": (52.0, 18.0),
}

# Sex: 5,406 male, 4,552 female, 57 unknown in the real data; skin cancers lean male.
UNKNOWN_SEX_RATE = 57 / HAM10000_IMAGES
MALE_SHARE: dict[str, float] = {
    "akiec": 0.66,
    "bcc": 0.60,
    "bkl": 0.58,
    "df": 0.46,
    "mel": 0.61,
    "nv": 0.52,
    "vasc": 0.49,
}

# Real localization counts (they sum to 10,015), tilted per class: sun-damage lesions sit on the face,
# dermatofibromas on the legs.
LOCALIZATION_COUNTS: dict[str, int] = {
    "back": 2192,
    "lower extremity": 2077,
    "trunk": 1404,
    "upper extremity": 1118,
    "abdomen": 1022,
    "face": 745,
    "chest": 407,
    "foot": 319,
    "unknown": 234,
    "neck": 168,
    "scalp": 128,
    "hand": 90,
    "ear": 56,
    "genital": 48,
    "acral": 7,
}
LOCALIZATION_TILTS: dict[str, dict[str, float]] = {
    "akiec": {"face": 6.0, "scalp": 3.0, "hand": 3.0, "upper extremity": 1.5, "back": 0.5, "trunk": 0.5},
    "bcc": {"face": 3.0, "scalp": 2.0, "neck": 2.0, "chest": 2.0, "back": 1.5, "lower extremity": 0.6},
    "bkl": {"face": 3.0, "chest": 1.5, "back": 1.2, "lower extremity": 0.8},
    "df": {"lower extremity": 5.0, "upper extremity": 1.5, "back": 0.4, "face": 0.1},
    "mel": {"back": 1.3, "face": 1.2, "upper extremity": 1.3},
    "nv": {},
    "vasc": {"trunk": 1.5, "abdomen": 1.5, "face": 1.5, "lower extremity": 1.2},
}

# Source collections in the current release. Follow-up images all come from the MoleMax series, so
# follow_up lesions go there and the other lesions share out what is left.
DATASET_COUNTS: dict[str, int] = {
    "vidir_molemax": 3954,
    "vidir_modern": 3363,
    "rosendahl": 2259,
    "vienna_dias": 439,
}
FOLLOW_UP_DATASET = "vidir_molemax"

# Independent random streams, so adding draws to one never shifts another.
METADATA_STREAM, LESION_STREAM, IMAGE_STREAM, NOISE_STREAM = 0, 1, 2, 3

# ----------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------


def random_stream(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one independent stream, derived only from the seed and the keys."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integers proportional to `weights` (Hamilton's largest-remainder method)."""
    weight_sum = float(sum(weights))
    quotas = [total * weight / weight_sum for weight in weights]
    counts = [math.floor(quota) for quota in quotas]
    # Ties go to the larger weight, then the earlier position, so the result never depends on chance.
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), -weights[i], i))
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    return counts


def scaled_class_counts(images: int) -> dict[str, int]:
    """Images per class for a dataset of `images` images, proportional to the real release.

    Counts are rounded by largest remainder, then every class is lifted to at least one image (taken from
    the largest class) when there are at least 7 images; for 10,015 images the result is exactly
    HAM10000_CLASS_COUNTS. Raises ValueError if `images` < 1.
    """
    check_images(images)
    counts = dict(
        zip(LABELS, _largest_remainder(images, [HAM10000_CLASS_COUNTS[x] for x in LABELS]), strict=True)
    )
    if images >= MIN_IMAGES_FOR_ALL_CLASSES:
        for label in LABELS:
            if counts[label] == 0:
                largest = max(LABELS, key=lambda other: (counts[other], -LABELS.index(other)))
                counts[largest] -= 1
                counts[label] = 1
    return counts


def _lesion_count(label: str, class_images: int) -> int:
    """Distinct lesions for `class_images` images of a class, at the class's real images-per-lesion ratio."""
    ratio = HAM10000_LESION_COUNTS[label] / HAM10000_CLASS_COUNTS[label]
    lesions = round(class_images * ratio)
    return min(class_images, max(1, math.ceil(class_images / MAX_IMAGES_PER_LESION), lesions))


def _images_per_lesion(rng: np.random.Generator, class_images: int, lesions: int) -> np.ndarray:
    """Spread a class's images over its lesions: one each, the rest uniformly at random (capped).

    Uniform placement of the extras gives a Poisson-like tail (most lesions 1 image, some 2-3, a few up
    to 6), close to the real distribution.
    """
    sizes = np.ones(lesions, dtype=np.int64)
    extra = class_images - lesions
    if extra > 0:
        sizes += rng.multinomial(extra, np.full(lesions, 1.0 / lesions))
    # Move any overflow above the cap to lesions that still have room; lesions >= images / cap holds.
    while (overflow := int(np.clip(sizes - MAX_IMAGES_PER_LESION, 0, None).sum())) > 0:
        sizes = np.minimum(sizes, MAX_IMAGES_PER_LESION)
        room = np.flatnonzero(sizes < MAX_IMAGES_PER_LESION)
        np.add.at(sizes, rng.choice(room, size=overflow), 1)
    return sizes


def _choose(rng: np.random.Generator, weights: dict[str, float], size: int) -> np.ndarray:
    """`size` draws from the keys of `weights`, with probabilities proportional to the values."""
    names = list(weights)
    probabilities = np.array([weights[name] for name in names], dtype=np.float64)
    return np.array(names, dtype=object)[
        rng.choice(len(names), size=size, p=probabilities / probabilities.sum())
    ]


def _lesion_attributes(rng: np.random.Generator, label: str, lesions: int) -> dict[str, np.ndarray]:
    """The per-lesion columns (shared by all images of a lesion) for `lesions` lesions of one class."""
    dx_type = _choose(rng, DX_TYPE_COUNTS[label], lesions)
    mean, spread = AGE_MEAN_SD[label]
    age = np.clip(np.round(rng.normal(mean, spread, lesions) / AGE_STEP) * AGE_STEP, AGE_LOWEST, AGE_HIGHEST)
    age[rng.random(lesions) < MISSING_AGE_RATE] = np.nan
    male, female, unknown = SEX_VALUES
    male_share = MALE_SHARE[label] * (1.0 - UNKNOWN_SEX_RATE)
    sex = _choose(
        rng,
        {male: male_share, female: 1.0 - UNKNOWN_SEX_RATE - male_share, unknown: UNKNOWN_SEX_RATE},
        lesions,
    )
    tilt = LOCALIZATION_TILTS[label]
    localization = _choose(
        rng, {place: count * tilt.get(place, 1.0) for place, count in LOCALIZATION_COUNTS.items()}, lesions
    )
    other_datasets = dict(DATASET_COUNTS)
    other_datasets[FOLLOW_UP_DATASET] -= DX_TYPE_COUNTS["nv"]["follow_up"]
    dataset = np.where(dx_type == "follow_up", FOLLOW_UP_DATASET, _choose(rng, other_datasets, lesions))
    return {"dx_type": dx_type, "age": age, "sex": sex, "localization": localization, "dataset": dataset}


def make_metadata(images: int = HAM10000_IMAGES, seed: int = 42) -> pd.DataFrame:
    """The metadata rows of a synthetic dataset, without writing anything.

    Takes the number of images (>= 1; all 7 classes are present from 7 images up, and the per-class
    proportions are recognisable from about 50) and a non-negative integer seed. Returns a DataFrame with
    the eight CURRENT_METADATA_COLUMNS, one row per image, rows of a lesion adjacent and lesions in random
    order; `age` is a float (NaN when missing). For 10,015 images the class counts are exactly the real
    ones and there are exactly 7,470 lesions. Raises ValueError for images < 1 or a negative seed.
    """
    check_images(images)
    check_seed(seed)
    rng = random_stream(seed, METADATA_STREAM)
    columns: dict[str, list[np.ndarray]] = {
        name: [] for name in ("dx", "size", "dx_type", "age", "sex", "localization", "dataset")
    }
    for label, class_images in scaled_class_counts(images).items():
        if class_images == 0:
            continue
        lesions = _lesion_count(label, class_images)
        columns["dx"].append(np.full(lesions, label, dtype=object))
        columns["size"].append(_images_per_lesion(rng, class_images, lesions))
        for name, values in _lesion_attributes(rng, label, lesions).items():
            columns[name].append(values)
    lesion_table = pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})
    lesion_table = lesion_table.iloc[rng.permutation(len(lesion_table))].reset_index(drop=True)
    lesion_table["lesion_id"] = [f"HAM_{number:07d}" for number in rng.permutation(len(lesion_table))]
    rows = lesion_table.loc[lesion_table.index.repeat(lesion_table["size"])].reset_index(drop=True)
    rows["image_id"] = [f"ISIC_{FIRST_IMAGE_NUMBER + offset:07d}" for offset in rng.permutation(images)]
    rows["age"] = rows["age"].astype(np.float64)
    return rows[list(CURRENT_METADATA_COLUMNS)]


def id_number(identifier: str) -> int:
    """The number in an id like ISIC_0024306 (24306) or HAM_0000118 (118)."""
    return int(identifier.split("_", 1)[1])


def part_folder(number: int, images: int) -> str:
    """The image folder for image number `number` in a dataset of `images` images.

    Like the real release, the lowest-numbered ~5,000/10,015 of the images go to part 1, the rest to part 2.
    """
    part_1_images = round(images * HAM10000_PART_1_IMAGES / HAM10000_IMAGES)
    return IMAGE_FOLDERS[0] if number - FIRST_IMAGE_NUMBER < part_1_images else IMAGE_FOLDERS[1]


def check_images(images: int) -> None:
    if isinstance(images, bool) or not isinstance(images, int | np.integer) or images < 1:
        raise ValueError(f"images must be a positive integer, got {images!r}")


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
