"""Painting one synthetic photograph: a lesion's appearance drawn on skin, placed as one photograph
of it (angle, zoom, lighting, position), with hairs and grain, as a 600x450 Pillow image."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from skinspark.tools.synthetic.looks import CLASS_STYLES, LesionAppearance, Texture, lesion_appearance
from skinspark.tools.synthetic.metadata import (
    IMAGE_HEIGHT,
    IMAGE_STREAM,
    IMAGE_WIDTH,
    JPEG_QUALITY,
    NOISE_STREAM,
    random_stream,
)

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
    rng = random_stream(seed, NOISE_STREAM)
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
    rng = random_stream(seed, IMAGE_STREAM, image_number)
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


def save_images(seed: int, tasks: Sequence[tuple[int, int, str, str]]) -> int:
    """Render and save (image_number, lesion_number, label, path) tasks; returns how many were written."""
    for number, lesion_number, label, path in tasks:
        render_image(seed, number, lesion_number, label).save(path, "JPEG", quality=JPEG_QUALITY)
    return len(tasks)
