"""Synthetic HAM10000: a dataset shaped exactly like the real download, for the demo, tests and benchmarks.

The real HAM10000 archive cannot be fetched here, so this module writes a stand-in with the same layout:

    DIR/HAM10000_metadata.csv          lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
    DIR/HAM10000_images_part_1/        ISIC_0024306.jpg ... (the first ~half of the image numbers)
    DIR/HAM10000_images_part_2/        ... the rest

Every image is a 600x450 RGB baseline JPEG. The metadata mimics the real release (class counts, about
1.34 images per lesion, per-class dx_type, ages in steps of 5 with a few missing, sex, localization and
source dataset), and the images carry a learnable but imperfect per-class signal: a skin-toned background
with a lesion whose colour, size, shape irregularity, border sharpness and internal texture depend on the
class, with per-lesion jitter wide enough that neighbouring classes (mel/nv/bkl, bcc/akiec) overlap, and
four lesions in ten borrowing a look-alike class's colours (half of them its structures too). Every
lesion also carries structures of its own, of no class. All images of one lesion share the lesion's
appearance and differ by what a new photograph changes (angle, zoom, lighting, position, noise, hairs),
so that a model can memorise lesions and an image-level split inflates accuracy as it does on the real
data.

Everything is deterministic for a seed: the metadata comes from one generator seeded with `seed`, each
lesion's appearance from (seed, lesion number) and each image's variation from (seed, image number), so
the CSV and every JPEG are byte-identical whatever the number of worker processes.

Usage:
    python -m skinspark.tools.synthetic --output DIR --images N --seed S [--workers W] [--legacy-columns]
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from skinspark.schema import (
    HAM10000_CLASS_COUNTS,
    HAM10000_IMAGES,
    IMAGE_FOLDERS,
    LABELS,
    METADATA_COLUMNS,
    METADATA_FILE,
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
# How each class looks. Colours are RGB; sizes are fractions of the image height or lesion radii.
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Texture:
    """One kind of internal structure drawn inside a lesion.

    kind: "dots" (globules, milia, scale), "streaks" (radial lines at the rim), "vessels" (branching red
    lines), "lacunae" (round red-purple pools), "patch" (one irregular blob near the centre).
    size: lesion radii for round shapes, canvas pixels of line width for lines.
    """

    kind: str
    colour: tuple[float, float, float]
    count: int
    size: float
    strength: float
    blur: float = 1.5


@dataclass(frozen=True)
class ClassStyle:
    """The appearance distribution of one class; each lesion draws its own values around these."""

    colour: tuple[float, float, float]
    secondary: tuple[float, float, float]
    blotch: float  # how much of the secondary colour shows in blotches, 0..1
    brightness_sd: float  # per-lesion spread of darkness (log scale)
    radius: float  # mean lesion radius, as a fraction of the image height
    irregularity: float  # amplitude of the border's wobble
    asymmetry: float
    edge: float  # width of the border blur, in lesion radii (small = sharp)
    opacity: float
    centre_darkening: float  # > 0 darker centre, < 0 lighter centre
    textures: tuple[Texture, ...]


CLASS_STYLES: dict[str, ClassStyle] = {
    "nv": ClassStyle(
        colour=(140, 95, 70),
        secondary=(98, 64, 48),
        blotch=0.35,
        brightness_sd=0.17,
        radius=0.22,
        irregularity=0.035,
        asymmetry=0.02,
        edge=0.07,
        opacity=0.92,
        centre_darkening=0.15,
        textures=(Texture("dots", (88, 58, 44), count=8, size=0.05, strength=0.5),),
    ),
    "mel": ClassStyle(
        colour=(102, 70, 60),
        secondary=(72, 76, 100),
        blotch=0.6,
        brightness_sd=0.18,
        radius=0.29,
        irregularity=0.10,
        asymmetry=0.08,
        edge=0.10,
        opacity=0.95,
        centre_darkening=0.05,
        textures=(
            Texture("dots", (45, 35, 35), count=12, size=0.06, strength=0.65),
            Texture("streaks", (62, 46, 40), count=10, size=2.5, strength=0.55),
            Texture("patch", (168, 162, 172), count=1, size=0.28, strength=0.4),
        ),
    ),
    "bkl": ClassStyle(
        colour=(158, 118, 88),
        secondary=(120, 88, 62),
        blotch=0.45,
        brightness_sd=0.18,
        radius=0.25,
        irregularity=0.07,
        asymmetry=0.04,
        edge=0.05,
        opacity=0.88,
        centre_darkening=-0.05,
        textures=(
            Texture("dots", (225, 214, 196), count=6, size=0.05, strength=0.6),
            Texture("dots", (80, 56, 42), count=6, size=0.05, strength=0.5),
        ),
    ),
    "bcc": ClassStyle(
        colour=(196, 142, 138),
        secondary=(122, 118, 138),
        blotch=0.4,
        brightness_sd=0.12,
        radius=0.21,
        irregularity=0.07,
        asymmetry=0.04,
        edge=0.13,
        opacity=0.80,
        centre_darkening=0.0,
        textures=(
            Texture("vessels", (185, 42, 55), count=5, size=2.0, strength=0.85, blur=0.8),
            Texture("lacunae", (92, 92, 116), count=3, size=0.10, strength=0.55),
        ),
    ),
    "akiec": ClassStyle(
        colour=(200, 124, 112),
        secondary=(222, 196, 184),
        blotch=0.45,
        brightness_sd=0.12,
        radius=0.24,
        irregularity=0.09,
        asymmetry=0.05,
        edge=0.20,
        opacity=0.72,
        centre_darkening=0.0,
        textures=(
            Texture("dots", (236, 222, 212), count=40, size=0.025, strength=0.7, blur=1.0),
            Texture("dots", (190, 62, 62), count=15, size=0.02, strength=0.5, blur=1.0),
        ),
    ),
    "df": ClassStyle(
        colour=(160, 112, 88),
        secondary=(140, 95, 75),
        blotch=0.2,
        brightness_sd=0.12,
        radius=0.16,
        irregularity=0.04,
        asymmetry=0.02,
        edge=0.14,
        opacity=0.85,
        centre_darkening=-0.10,
        textures=(Texture("patch", (228, 208, 196), count=1, size=0.45, strength=0.85, blur=3.0),),
    ),
    "vasc": ClassStyle(
        colour=(165, 52, 74),
        secondary=(106, 32, 62),
        blotch=0.5,
        brightness_sd=0.14,
        radius=0.17,
        irregularity=0.05,
        asymmetry=0.03,
        edge=0.06,
        opacity=0.92,
        centre_darkening=0.0,
        textures=(Texture("lacunae", (122, 26, 52), count=7, size=0.18, strength=0.7),),
    ),
}

# A share of lesions take their colours from a look-alike class (their shape stays their own), and half of
# those its internal structures too, which caps what the class signal alone can give at a realistic level
# instead of a trivially separable task: such a lesion can only be told by remembering it.
MIMIC_RATE = 0.4
MIMIC_TEXTURE_RATE = 0.5
CONFUSERS: dict[str, tuple[str, ...]] = {
    "nv": ("mel", "bkl"),
    "mel": ("nv", "bkl"),
    "bkl": ("nv", "mel"),
    "bcc": ("akiec", "bkl"),
    "akiec": ("bcc", "bkl"),
    "df": ("nv", "bkl"),
    "vasc": ("bcc", "mel"),
}
LESION_COLOUR_CHANNEL_SD = 14.0  # per-lesion tint on top of the brightness spread
BRIGHTNESS_SPREAD_SCALE = 1.4  # widens every class's per-lesion darkness spread
RADIUS_SPREAD = 0.38  # log-normal spread of lesion size around the class mean
ASPECT_SPREAD = 0.2
# Every lesion also carries structures of its own, drawn from no class: a scatter of globules of its own
# colour and, for some, a blob; they stay the same in every photograph of the lesion (they rotate and move
# with it), so photographs of one lesion share far more than their class, as on the real photographs.
SIGNATURE_DOTS = (4, 24)  # how many, at least and at most
SIGNATURE_BLOB_RATE = 0.5

SKIN_LIGHT, SKIN_DARK = (236.0, 196.0, 178.0), (196.0, 148.0, 122.0)
VIGNETTE_RATE = 0.3  # share of lesions photographed with a dark circular dermoscope rim
HAIRY_RATE = 0.3

# Per-image changes between photographs of the same lesion (angle, zoom, lighting, position): a dermoscope
# put down again, so lesions stay recognisable.
IMAGE_SHIFT_SD = 0.04  # fraction of the frame
IMAGE_ROTATION_SD_DEGREES = 20.0
IMAGE_SCALE_SD = 0.08
IMAGE_GAIN_SD = 0.06

# The lesion is drawn once on a square canvas in its own coordinates, then rotated, scaled and placed
# at full resolution by Pillow's affine transform (C speed); the background is drawn small and upscaled.
CANVAS_SIZE = 192
# The scene is composed at half size and upscaled once: the lesion canvas holds less detail than that
# anyway, and it halves the cost of the affine transform and the paste. Hairs and grain go on at full size.
COMPOSE_SCALE = 2
COMPOSE_WIDTH, COMPOSE_HEIGHT = IMAGE_WIDTH // COMPOSE_SCALE, IMAGE_HEIGHT // COMPOSE_SCALE
CANVAS_EXTENT = 1.7  # the canvas spans [-extent, extent] lesion radii in both directions
BACKGROUND_HEIGHT, BACKGROUND_WIDTH = 90, 120
NOISE_MARGIN = 64
NOISE_LEVELS = 24  # the full-resolution grain is the sum of two uniform draws, 0..NOISE_LEVELS in all


# ----------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: int) -> np.random.Generator:
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
    _check_images(images)
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
    _check_images(images)
    _check_seed(seed)
    rng = _rng(seed, METADATA_STREAM)
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


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionAppearance:
    """Everything random about one lesion; all its images are drawn from this."""

    label: str
    centre: tuple[float, float]  # pixels, full resolution
    radius: float  # pixels, full resolution
    aspect: float
    angle: float  # radians
    harmonics: np.ndarray  # (k, amplitude, phase) rows of the border's wobble
    colour: np.ndarray
    secondary: np.ndarray
    blotch: float
    blotch_grid: np.ndarray
    texture_layers: tuple[tuple[Texture, np.ndarray], ...]  # each texture with its random layout
    skin: np.ndarray
    shading_grid: np.ndarray
    vignette: tuple[float, float, float] | None  # (radius, width, darkness) or None
    hairs: int


def _jittered_colour(rng: np.random.Generator, colour: Sequence[float], brightness_sd: float) -> np.ndarray:
    """A class colour with a per-lesion darkness change (shared by all channels) and a small tint."""
    gain = math.exp(rng.normal(0.0, brightness_sd))
    return np.clip(np.asarray(colour) * gain + rng.normal(0.0, LESION_COLOUR_CHANNEL_SD, 3), 0.0, 255.0)


def _texture_layout(rng: np.random.Generator, texture: Texture) -> np.ndarray:
    """Random positions (lesion radii) and sizes for one texture; the row format depends on the kind."""
    count = texture.count
    if texture.kind in ("dots", "lacunae"):
        limit = 0.8 if texture.kind == "dots" else 0.6
        distance = limit * np.sqrt(rng.random(count))
        angle = rng.uniform(0.0, 2 * np.pi, count)
        scale = texture.size * rng.uniform(0.6, 1.4, count)
        return np.column_stack([distance * np.cos(angle), distance * np.sin(angle), scale])
    if texture.kind == "streaks":
        return np.column_stack(
            [rng.uniform(0.0, 2 * np.pi, count), rng.uniform(0.5, 0.7, count), rng.uniform(0.95, 1.15, count)]
        )
    if texture.kind == "vessels":
        # Random walks: start point, then per step a turn; drawn as polylines of 7 points.
        starts = rng.uniform(-0.5, 0.5, (count, 2))
        headings = rng.uniform(0.0, 2 * np.pi, count)[:, None] + np.cumsum(
            rng.normal(0.0, 0.6, (count, 6)), 1
        )
        steps = 0.13 * np.stack([np.cos(headings), np.sin(headings)], axis=-1)
        points = np.concatenate([starts[:, None, :], starts[:, None, :] + np.cumsum(steps, axis=1)], axis=1)
        return points.reshape(count, -1)
    if texture.kind == "patch":
        offset = rng.normal(0.0, 0.08, 2)
        radii = texture.size * rng.uniform(0.6, 1.3, 10)
        return np.concatenate([offset, radii])[None, :]
    raise ValueError(f"unknown texture kind: {texture.kind!r}")


def _signature(rng: np.random.Generator) -> tuple[Texture, ...]:
    """Structures of one lesion's own, of no class: globules of a random colour, maybe a random blob."""
    colour = tuple(float(value) for value in rng.uniform((30.0, 25.0, 25.0), (170.0, 140.0, 150.0)))
    dots = Texture(
        "dots",
        colour,
        count=int(rng.integers(SIGNATURE_DOTS[0], SIGNATURE_DOTS[1] + 1)),
        size=float(rng.uniform(0.03, 0.08)),
        strength=float(rng.uniform(0.4, 0.75)),
    )
    if rng.random() >= SIGNATURE_BLOB_RATE:
        return (dots,)
    blob_colour = tuple(float(value) for value in rng.uniform((40.0, 30.0, 30.0), (200.0, 180.0, 190.0)))
    blob = Texture("patch", blob_colour, count=1, size=float(rng.uniform(0.15, 0.35)), strength=0.45)
    return dots, blob


def lesion_appearance(seed: int, lesion_number: int, label: str) -> LesionAppearance:
    """The random appearance of lesion `lesion_number` (the digits of its HAM id) of class `label`.

    Depends only on (seed, lesion_number, label). Raises ValueError for an unknown label.
    """
    if label not in CLASS_STYLES:
        raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
    rng = _rng(seed, LESION_STREAM, lesion_number)
    style = CLASS_STYLES[label]
    colour_style = texture_style = style
    if rng.random() < MIMIC_RATE:
        colour_style = CLASS_STYLES[CONFUSERS[label][rng.integers(len(CONFUSERS[label]))]]
        if rng.random() < MIMIC_TEXTURE_RATE:
            texture_style = colour_style
    brightness_sd = style.brightness_sd * BRIGHTNESS_SPREAD_SCALE
    harmonic_orders = np.arange(1, 8)
    amplitudes = np.where(
        harmonic_orders == 1, style.asymmetry, style.irregularity / harmonic_orders**0.6
    ) * np.abs(rng.normal(1.0, 0.5, 7))
    harmonics = np.column_stack([harmonic_orders, amplitudes, rng.uniform(0.0, 2 * np.pi, 7)])
    vignette = None
    if rng.random() < VIGNETTE_RATE:
        vignette = (rng.uniform(1.0, 1.35), rng.uniform(0.05, 0.15), rng.uniform(0.75, 0.95))
    return LesionAppearance(
        label=label,
        centre=(IMAGE_WIDTH * rng.normal(0.5, 0.06), IMAGE_HEIGHT * rng.normal(0.5, 0.06)),
        radius=min(0.42, style.radius * math.exp(rng.normal(0.0, RADIUS_SPREAD))) * IMAGE_HEIGHT,
        aspect=math.exp(rng.normal(0.0, ASPECT_SPREAD)),
        angle=rng.uniform(0.0, 2 * np.pi),
        harmonics=harmonics,
        colour=_jittered_colour(rng, colour_style.colour, brightness_sd),
        secondary=_jittered_colour(rng, colour_style.secondary, brightness_sd),
        blotch=colour_style.blotch * rng.uniform(0.6, 1.2),
        blotch_grid=rng.random((rng.integers(4, 8),) * 2).astype(np.float32),
        texture_layers=tuple(
            (texture, _texture_layout(rng, texture))
            for texture in (*texture_style.textures, *_signature(rng))
        ),
        skin=np.asarray(SKIN_LIGHT)
        + (np.asarray(SKIN_DARK) - np.asarray(SKIN_LIGHT)) * rng.random()
        + rng.normal(0.0, 5.0, 3),
        shading_grid=rng.normal(0.0, 0.05, (3, 4)).astype(np.float32),
        vignette=vignette,
        hairs=int(rng.poisson(4) + 1) if rng.random() < HAIRY_RATE else 0,
    )


@functools.lru_cache(maxsize=1)
def _canvas_polar() -> tuple[np.ndarray, np.ndarray]:
    """Distance and angle of every canvas pixel from the lesion centre, in lesion radii and radians."""
    coordinates = (np.arange(CANVAS_SIZE, dtype=np.float32) + 0.5) * (2 * CANVAS_EXTENT / CANVAS_SIZE)
    u, v = np.meshgrid(coordinates - CANVAS_EXTENT, coordinates - CANVAS_EXTENT)
    return np.hypot(u, v), np.arctan2(v, u)


def _to_canvas(values: np.ndarray) -> np.ndarray:
    """Lesion-radius coordinates to canvas pixels."""
    return (values + CANVAS_EXTENT) * (CANVAS_SIZE / (2 * CANVAS_EXTENT))


def _smooth_field(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A small random grid upsampled bicubically into a smooth field of the given size."""
    return np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC))


def _texture_mask(texture: Texture, layout: np.ndarray) -> np.ndarray:
    """The coverage (0..strength) of one texture on the canvas."""
    mask = Image.new("L", (CANVAS_SIZE, CANVAS_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    pixels_per_radius = CANVAS_SIZE / (2 * CANVAS_EXTENT)
    if texture.kind in ("dots", "lacunae"):
        for x, y, size in layout:
            cx, cy, r = _to_canvas(x), _to_canvas(y), size * pixels_per_radius
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif texture.kind == "streaks":
        for angle, inner, outer in layout:
            direction = np.array([math.cos(angle), math.sin(angle)])
            start, end = _to_canvas(inner * direction), _to_canvas(outer * direction)
            draw.line((*start, *end), fill=255, width=max(1, round(texture.size)))
    elif texture.kind == "vessels":
        for row in layout:
            points = [tuple(point) for point in _to_canvas(row.reshape(-1, 2))]
            draw.line(points, fill=255, width=max(1, round(texture.size)), joint="curve")
    elif texture.kind == "patch":
        offset, radii = layout[0, :2], layout[0, 2:]
        angles = np.linspace(0.0, 2 * np.pi, len(radii), endpoint=False)
        outline = offset + radii[:, None] * np.column_stack([np.cos(angles), np.sin(angles)])
        draw.polygon([tuple(point) for point in _to_canvas(outline)], fill=255)
    if texture.blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(texture.blur))
    return np.asarray(mask, dtype=np.float32) * (texture.strength / 255.0)


def _lesion_canvas(appearance: LesionAppearance, gain: float) -> Image.Image:
    """The lesion as an RGBA image in its own coordinates (alpha = coverage over the skin)."""
    style = CLASS_STYLES[appearance.label]
    distance, angle = _canvas_polar()
    border = np.ones_like(distance)
    for order, amplitude, phase in appearance.harmonics:
        border += amplitude * np.cos(order * angle + phase)
    # Smoothstep across a band of width `edge` around the border: sharp for nevi, diffuse for akiec.
    inside = np.clip((border - distance) / style.edge + 0.5, 0.0, 1.0)
    alpha = inside * inside * (3.0 - 2.0 * inside) * style.opacity
    relative = np.clip(distance / border, 0.0, 1.0)
    shade = 1.0 - style.centre_darkening * (1.0 - relative * relative)
    colour = shade[..., None] * appearance.colour.astype(np.float32)
    blotches = _smooth_field(appearance.blotch_grid, CANVAS_SIZE, CANVAS_SIZE)
    weight = (appearance.blotch * np.clip((blotches - 0.45) * 3.0, 0.0, 1.0))[..., None]
    colour += weight * (appearance.secondary.astype(np.float32) - colour)
    for texture, layout in appearance.texture_layers:
        coverage = _texture_mask(texture, layout)[..., None]
        colour += coverage * (np.asarray(texture.colour, dtype=np.float32) - colour)
    rgba = np.empty((CANVAS_SIZE, CANVAS_SIZE, 4), dtype=np.uint8)
    rgba[..., :3] = np.clip(colour * gain, 0.0, 255.0)
    rgba[..., 3] = alpha * 255.0
    return Image.fromarray(rgba, mode="RGBA")


def _background(appearance: LesionAppearance, rng: np.random.Generator, gain: float) -> Image.Image:
    """Skin with smooth shading, faint mottling and maybe a dark dermoscope rim, at compose size."""
    shading = 1.0 + _smooth_field(appearance.shading_grid, BACKGROUND_HEIGHT, BACKGROUND_WIDTH)
    shading += rng.normal(0.0, 0.015, shading.shape).astype(np.float32)
    if appearance.vignette is not None:
        radius, width, darkness = appearance.vignette
        rows = (np.arange(BACKGROUND_HEIGHT) + 0.5 - BACKGROUND_HEIGHT / 2) / (BACKGROUND_HEIGHT / 2)
        columns = (np.arange(BACKGROUND_WIDTH) + 0.5 - BACKGROUND_WIDTH / 2) / (BACKGROUND_HEIGHT / 2)
        rim = np.clip((np.hypot(rows[:, None], columns[None, :]) - radius) / width, 0.0, 1.0)
        shading *= 1.0 - darkness * rim
    pixels = np.clip(shading[..., None] * (appearance.skin * gain).astype(np.float32), 0.0, 255.0)
    small = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    return small.resize((COMPOSE_WIDTH, COMPOSE_HEIGHT), Image.BILINEAR)


def _place_lesion(
    image: Image.Image,
    canvas: Image.Image,
    centre: tuple[float, float],
    radius: float,
    aspect: float,
    angle: float,
) -> None:
    """Rotate, scale and paste the lesion canvas onto the image, touching only its bounding box.

    `centre` and `radius` are in the image's own pixels.
    """
    axis_x, axis_y = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
    reach = CANVAS_EXTENT * max(axis_x, axis_y)
    left, top = max(0, math.floor(centre[0] - reach)), max(0, math.floor(centre[1] - reach))
    right = min(image.width, math.ceil(centre[0] + reach))
    bottom = min(image.height, math.ceil(centre[1] + reach))
    if right <= left or bottom <= top:
        return
    # Pillow's affine maps each output pixel back to the canvas: rotate by -angle, divide by the axes.
    pixels_per_radius = CANVAS_SIZE / (2 * CANVAS_EXTENT)
    cos, sin = math.cos(angle), math.sin(angle)
    a, b = pixels_per_radius * cos / axis_x, pixels_per_radius * sin / axis_x
    d, e = -pixels_per_radius * sin / axis_y, pixels_per_radius * cos / axis_y
    offset = CANVAS_EXTENT * pixels_per_radius
    c = a * (left - centre[0]) + b * (top - centre[1]) + offset
    f = d * (left - centre[0]) + e * (top - centre[1]) + offset
    placed = canvas.transform(
        (right - left, bottom - top), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR
    )
    image.paste(placed, (left, top), placed)


def _draw_hairs(image: Image.Image, rng: np.random.Generator, hairs: int) -> None:
    """Dark, slightly curved hairs across the frame (drawn fresh for each photograph)."""
    draw = ImageDraw.Draw(image)
    for _ in range(hairs):
        start = rng.uniform((0.0, 0.0), (IMAGE_WIDTH, IMAGE_HEIGHT))
        heading = rng.uniform(0.0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.15, 4))
        steps = rng.uniform(40.0, 120.0) * np.column_stack([np.cos(heading), np.sin(heading)])
        points = np.vstack([start, start + np.cumsum(steps, axis=0)])
        shade = tuple(int(value) for value in rng.integers(25, 70) * np.array([1.0, 0.8, 0.65]))
        draw.line(
            [tuple(point) for point in points], fill=shade, width=int(rng.integers(2, 4)), joint="curve"
        )


# Pillow's add_modulo is four times faster than its saturating add but wraps around: shift every value
# down by the grain's mean (keeping the average brightness) and cap it so that adding grain stays <= 255.
_GRAIN_HEADROOM = [min(max(value - NOISE_LEVELS // 2, 0), 255 - NOISE_LEVELS) for value in range(256)] * 3


@functools.lru_cache(maxsize=4)
def _noise_bank(seed: int) -> Image.Image:
    """A fixed field of fine grain, slightly larger than an image; each image uses a random crop of it.

    Drawing 810,000 fresh random values per image would cost more than the rest of the image; a crop at a
    random offset is just as good as grain and still depends only on the seed.
    """
    rng = _rng(seed, NOISE_STREAM)
    shape = (IMAGE_HEIGHT + NOISE_MARGIN, IMAGE_WIDTH + NOISE_MARGIN, 3)
    grain = rng.integers(0, NOISE_LEVELS // 2 + 1, shape, dtype=np.uint8)
    grain += rng.integers(0, NOISE_LEVELS // 2 + 1, shape, dtype=np.uint8)
    return Image.fromarray(grain, mode="RGB")


def render_image(seed: int, image_number: int, lesion_number: int, label: str) -> Image.Image:
    """One synthetic photograph: a 600x450 RGB Pillow image of lesion `lesion_number` of class `label`.

    The lesion's look comes from (seed, lesion_number), this photograph's small changes from
    (seed, image_number). Raises ValueError for an unknown label.
    """
    appearance = lesion_appearance(seed, lesion_number, label)
    rng = _rng(seed, IMAGE_STREAM, image_number)
    gain = math.exp(rng.normal(0.0, IMAGE_GAIN_SD))
    image = _background(appearance, rng, gain)
    centre = (
        appearance.centre[0] + rng.normal(0.0, IMAGE_SHIFT_SD) * IMAGE_WIDTH,
        appearance.centre[1] + rng.normal(0.0, IMAGE_SHIFT_SD) * IMAGE_HEIGHT,
    )
    radius = appearance.radius * math.exp(rng.normal(0.0, IMAGE_SCALE_SD))
    angle = appearance.angle + math.radians(rng.normal(0.0, IMAGE_ROTATION_SD_DEGREES))
    _place_lesion(
        image,
        _lesion_canvas(appearance, gain),
        (centre[0] / COMPOSE_SCALE, centre[1] / COMPOSE_SCALE),
        radius / COMPOSE_SCALE,
        appearance.aspect,
        angle,
    )
    # Bilinear upscaling never leaves the range of its inputs, so after this the grain cannot overflow.
    image = image.point(_GRAIN_HEADROOM).resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.BILINEAR)
    _draw_hairs(image, rng, appearance.hairs)
    left, top = (int(value) for value in rng.integers(0, NOISE_MARGIN + 1, 2))
    grain = _noise_bank(seed).crop((left, top, left + IMAGE_WIDTH, top + IMAGE_HEIGHT))
    return ImageChops.add_modulo(image, grain)


def _render_chunk(seed: int, tasks: Sequence[tuple[int, int, str, str]]) -> int:
    """Render and save (image_number, lesion_number, label, path) tasks; returns how many were written."""
    for number, lesion_number, label, path in tasks:
        render_image(seed, number, lesion_number, label).save(path, "JPEG", quality=JPEG_QUALITY)
    return len(tasks)


# ----------------------------------------------------------------------------------------------------
# Writing a dataset
# ----------------------------------------------------------------------------------------------------


def _check_images(images: int) -> None:
    if isinstance(images, bool) or not isinstance(images, int | np.integer) or images < 1:
        raise ValueError(f"images must be a positive integer, got {images!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    return int(workers)


def _prepare_output(output_dir: Path, overwrite: bool) -> None:
    """Create the folders; refuse to mix with a previous dataset unless told to replace it.

    Leftover images from a bigger earlier run would otherwise sit next to a CSV that does not list them.
    """
    existing = [output_dir / METADATA_FILE] if (output_dir / METADATA_FILE).exists() else []
    for folder in IMAGE_FOLDERS:
        if (output_dir / folder).is_dir():
            existing.extend((output_dir / folder).glob("ISIC_*.jpg"))
    if existing and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a dataset ({len(existing)} files); "
            "pass overwrite=True (--overwrite) to replace it"
        )
    for path in existing:
        path.unlink()
    for folder in IMAGE_FOLDERS:
        (output_dir / folder).mkdir(parents=True, exist_ok=True)


def _chunks(tasks: list, size: int) -> Iterable[list]:
    return (tasks[start : start + size] for start in range(0, len(tasks), size))


def _render_all(seed: int, tasks: list[tuple[int, int, str, str]], workers: int) -> None:
    """Render every task, in this process or a pool; the output never depends on the split."""
    # Small chunks keep all workers busy to the end; big enough that task overhead stays negligible.
    chunk_size = max(1, min(64, math.ceil(len(tasks) / (workers * 8))))
    if workers == 1 or len(tasks) <= chunk_size:
        _render_chunk(seed, tasks)
        return
    chunks = list(_chunks(tasks, chunk_size))
    # Spawned workers, not forked: the caller may hold threads (Spark, TensorFlow) that fork would copy
    # mid-lock; a fresh interpreter costs about a second.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
        written = sum(pool.map(_render_chunk, [seed] * len(chunks), chunks))
    if written != len(tasks):
        raise RuntimeError(f"wrote {written} of {len(tasks)} images")


def generate(
    output_dir: str | os.PathLike,
    images: int = HAM10000_IMAGES,
    seed: int = 42,
    workers: int | None = None,
    legacy_columns: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic HAM10000 dataset to `output_dir` and return a summary.

    Takes the output folder (created if missing), the number of images (>= 1; from 7 up every class has
    at least one image), a non-negative seed, the number of worker processes (default os.cpu_count()),
    whether to write the older 7-column CSV without `dataset`, and whether to replace a dataset already
    in the folder. Returns a dict with images, lesions, class_counts (label -> images), seconds,
    images_per_second, metadata_path, output_dir, seed and workers. Raises ValueError for bad arguments
    and FileExistsError if the folder already holds a dataset and overwrite is False.
    """
    _check_images(images)
    _check_seed(seed)
    workers = _check_workers(workers)
    started = time.perf_counter()
    output_dir = Path(output_dir)
    metadata = make_metadata(images, seed)
    _prepare_output(output_dir, overwrite)
    numbers = [id_number(image_id) for image_id in metadata["image_id"]]
    tasks = sorted(
        (
            number,
            id_number(lesion_id),
            label,
            str(output_dir / part_folder(number, images) / f"{image_id}.jpg"),
        )
        for number, lesion_id, label, image_id in zip(
            numbers, metadata["lesion_id"], metadata["dx"], metadata["image_id"], strict=True
        )
    )
    _render_all(seed, tasks, workers)
    # The CSV goes last, so an interrupted run never leaves metadata that points at missing images.
    columns = list(METADATA_COLUMNS if legacy_columns else CURRENT_METADATA_COLUMNS)
    metadata_path = output_dir / METADATA_FILE
    metadata[columns].to_csv(metadata_path, index=False, lineterminator="\n")
    seconds = time.perf_counter() - started
    class_counts = {label: int((metadata["dx"] == label).sum()) for label in LABELS}
    return {
        "images": int(len(metadata)),
        "lesions": int(metadata["lesion_id"].nunique()),
        "class_counts": class_counts,
        "seconds": seconds,
        "images_per_second": len(metadata) / seconds if seconds > 0 else float("inf"),
        "metadata_path": str(metadata_path),
        "output_dir": str(output_dir),
        "seed": int(seed),
        "workers": workers,
    }


def format_summary(summary: dict) -> str:
    """A short human-readable report of a generate() summary."""
    classes = ", ".join(f"{label} {count}" for label, count in summary["class_counts"].items())
    return (
        f"wrote {summary['images']} images of {summary['lesions']} lesions to {summary['output_dir']}\n"
        f"classes: {classes}\n"
        f"{summary['seconds']:.1f} s, {summary['images_per_second']:.0f} images/s "
        f"({summary['workers']} workers)\n"
        f"metadata: {summary['metadata_path']}"
    )


def args_parser() -> argparse.ArgumentParser:
    """The command-line parser of `python -m skinspark.tools.synthetic`."""
    parser = argparse.ArgumentParser(
        prog="skinspark-synthetic",
        description="Write a synthetic dataset laid out exactly like the HAM10000 download.",
    )
    parser.add_argument("--output", required=True, help="folder to write into (created if missing)")
    parser.add_argument(
        "--images",
        type=int,
        default=HAM10000_IMAGES,
        help="number of images (default: %(default)s, the real count; >= 7 for all classes)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: the number of CPUs)"
    )
    parser.add_argument(
        "--legacy-columns",
        action="store_true",
        help="write the older 7-column metadata CSV without `dataset`",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in the output folder"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 2 for bad arguments)."""
    parser = args_parser()
    args = parser.parse_args(argv)
    try:
        summary = generate(
            args.output,
            images=args.images,
            seed=args.seed,
            workers=args.workers,
            legacy_columns=args.legacy_columns,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))  # exits with status 2 and the usage line
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
