"""How a synthetic lesion looks: each class's appearance distribution, the look-alike classes, and
the random appearance of one lesion that all its photographs share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skinspark.schema import (
    LABELS,
)
from skinspark.tools.synthetic.metadata import IMAGE_HEIGHT, IMAGE_WIDTH, LESION_STREAM, random_stream

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
    rng = random_stream(seed, LESION_STREAM, lesion_number)
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
