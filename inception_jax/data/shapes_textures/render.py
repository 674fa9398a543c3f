"""Pure numpy/PIL renderer of one `shapes_textures` image: no TF, no tfds, deterministic from (seed, split, index).

Kept apart from the builder so that it can be timed, tested and looked at on its own, and so that the images a
version produces never depend on how tfds schedules the generator (each image owns its random stream).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES: tuple[str, ...] = (
    "disc", "ring", "square", "triangle", "plus", "star", "crescent", "stripes", "checker", "dots",
)
# Solid-filled shapes are told apart by their outline; the last three by the pattern inside a region whose outline
# (disc, square or hexagon) carries no information. Every class is invariant to horizontal flips and rotations, so
# the Inception augmentation never turns one class into another.
_TEXTURE_CLASSES = frozenset({"stripes", "checker", "dots"})
_SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down: anti-aliased edges at ~1/4 of the cost of 4x
_MIN_CONTRAST = 120.0  # Euclidean RGB distance between the object and the background it sits on
_NOISE_BANK_SEED = 20_240_601
_NOISE_BANKS: dict[int, np.ndarray] = {}
_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _noise_bank(size: int) -> np.ndarray:
    """A fixed Gaussian field 2x the image size; each image reads a random window of it, faster than drawing
    fresh noise (docs/performance.md §6.3)."""
    if size not in _NOISE_BANKS:
        rng = np.random.default_rng(_NOISE_BANK_SEED)
        _NOISE_BANKS[size] = rng.standard_normal((2 * size, 2 * size, 3), dtype=np.float32)
    return _NOISE_BANKS[size]


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray) -> np.ndarray:
    for _ in range(100):
        colour = rng.uniform(0.0, 255.0, 3).astype(np.float32)
        if np.linalg.norm(colour - against) >= _MIN_CONTRAST:
            return colour
    return (255.0 - against).astype(np.float32)  # unreachable in practice; keeps the loop bounded


def _regular_polygon(cx: float, cy: float, r: float, k: int, theta: float, inner: float | None = None) -> list:
    """Vertices of a k-gon (or a k-pointed star when `inner` is the inner radius ratio)."""
    if inner is None:
        angles = theta + 2 * np.pi * np.arange(k) / k
        return list(zip(cx + r * np.cos(angles), cy + r * np.sin(angles)))
    angles = theta + np.pi * np.arange(2 * k) / k
    radii = np.where(np.arange(2 * k) % 2 == 0, r, r * inner)
    return list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))


def _plus(cx: float, cy: float, r: float, half_width: float, theta: float) -> list:
    w, a = half_width, r
    outline = np.array([(w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w), (-w, -a), (w, -a), (w, -w),
                        (a, -w), (a, w)], np.float64)
    c, s = np.cos(theta), np.sin(theta)
    x = cx + c * outline[:, 0] - s * outline[:, 1]
    y = cy + s * outline[:, 0] + c * outline[:, 1]
    return list(zip(x, y))


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: int) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


def _shape_mask(name: str, rng: np.random.Generator, big: int, cx: float, cy: float, r: float) -> Image.Image:
    """Coverage mask (mode 'L', supersampled size `big`) of a solid shape or of a texture class's region."""
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    theta = float(rng.uniform(0.0, 2 * np.pi))
    if name == "disc":
        _ellipse(draw, cx, cy, 0.85 * r, 255)
    elif name == "ring":
        _ellipse(draw, cx, cy, 0.9 * r, 255)
        _ellipse(draw, cx, cy, 0.9 * r * float(rng.uniform(0.45, 0.7)), 0)
    elif name == "square":
        draw.polygon(_regular_polygon(cx, cy, r, 4, theta), fill=255)
    elif name == "triangle":
        draw.polygon(_regular_polygon(cx, cy, r, 3, theta), fill=255)
    elif name == "plus":
        draw.polygon(_plus(cx, cy, r, r * float(rng.uniform(0.2, 0.32)), theta), fill=255)
    elif name == "star":
        draw.polygon(_regular_polygon(cx, cy, r, 5, theta, inner=float(rng.uniform(0.38, 0.5))), fill=255)
    elif name == "crescent":
        _ellipse(draw, cx, cy, 0.9 * r, 255)
        offset = 0.9 * r * float(rng.uniform(0.4, 0.6))
        bite = 0.9 * r * float(rng.uniform(0.8, 0.95))
        _ellipse(draw, cx + offset * np.cos(theta), cy + offset * np.sin(theta), bite, 0)
    else:  # texture classes: the region's outline is a nuisance variable
        region = int(rng.integers(3))
        if region == 0:
            _ellipse(draw, cx, cy, 0.9 * r, 255)
        else:
            draw.polygon(_regular_polygon(cx, cy, r, 4 if region == 1 else 6, theta), fill=255)
    return mask


def _grid(big: int) -> tuple[np.ndarray, np.ndarray]:
    if big not in _GRIDS:
        _GRIDS[big] = tuple(np.mgrid[0:big, 0:big].astype(np.float32))
    return _GRIDS[big]


def _texture(name: str, rng: np.random.Generator, big: int, r: float) -> np.ndarray:
    """Pattern at the supersampled size as a boolean array: True = first colour, False = second colour."""
    yy, xx = _grid(big)
    theta = float(rng.uniform(0.0, np.pi))
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u, v = c * xx + s * yy, -s * xx + c * yy
    period = np.float32(r * rng.uniform(0.4, 0.65))
    if name == "stripes":
        return np.mod(u / period, 1.0) < 0.5
    if name == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    # dots: a rotated lattice of discs of radius 0.3 * spacing
    du = np.mod(u / period, 1.0) - 0.5
    dv = np.mod(v / period, 1.0) - 0.5
    return du * du + dv * dv < 0.3**2


def _coverage(mask: Image.Image, size: int) -> np.ndarray:
    """Box-filter a binary supersampled 'L' mask down to (size, size, 1) float32 coverage in [0, 1]."""
    return np.asarray(mask.resize((size, size), Image.BOX), np.float32)[..., None] * np.float32(1 / 255)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field: a random 3x3 (or 4x4) colour grid upsampled bilinearly = gradients plus blotches."""
    grid = int(rng.integers(2, 5))
    base = rng.uniform(0.0, 255.0, 3)
    spread = float(rng.uniform(10.0, 60.0))
    colours = np.clip(base + rng.normal(0.0, spread, (grid, grid, 3)), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(colours).resize((size, size), Image.BILINEAR), np.float32)


def _clutter(rng: np.random.Generator, canvas: Image.Image, size: int) -> None:
    """Thin lines and small irregular quadrilaterals that belong to no class."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 4))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line([float(v) for v in rng.uniform(0, size, 4)], fill=colour, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 3))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, size, 2)
        pts = rng.uniform(-0.07 * size, 0.07 * size, (4, 2)) + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts], fill=colour)


DIFFICULTIES = ("standard", "easy")


def render_image(rng: np.random.Generator, label: int, size: int, difficulty: str = "standard") -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`, every nuisance drawn from `rng`.

    `easy` keeps the classes, colours, position, rotation and size variation but drops what makes the standard
    images slow to learn: a flat background instead of a colour field, no clutter, objects of 30-45 % of the
    side, noise sigma at most 4. It exists for minute-long CPU runs (the main job's ablation).
    """
    name = CLASS_NAMES[label]
    big = size * _SUPERSAMPLE
    easy = difficulty == "easy"
    if easy:
        background = np.broadcast_to(rng.uniform(0.0, 255.0, 3).astype(np.float32), (size, size, 3)).copy()
    else:
        background = _background(rng, size)
    canvas = Image.fromarray(background.astype(np.uint8))
    if not easy:
        _clutter(rng, canvas, size)
    image = np.asarray(canvas, np.float32)

    # scale: circumradius from 22 % (easy: 30 %) to 45 % of the side
    r = float(rng.uniform(0.30 if easy else 0.22, 0.45)) * big
    margin = 0.95 * r
    cx, cy = (float(v) for v in rng.uniform(margin, big - margin, 2))
    iy, ix = min(int(cy / _SUPERSAMPLE), size - 1), min(int(cx / _SUPERSAMPLE), size - 1)
    local_bg = background[iy, ix]
    fg = _contrasting_colour(rng, local_bg)
    region = _shape_mask(name, rng, big, cx, cy, r)
    alpha = _coverage(region, size)
    if name in _TEXTURE_CLASSES:
        second = _contrasting_colour(rng, fg)
        first_colour = np.where(_texture(name, rng, big, r), np.asarray(region), np.uint8(0))
        mix = _coverage(Image.fromarray(first_colour), size)  # coverage of the first colour
        image = image * (1 - alpha) + fg * mix + second * (alpha - mix)
    else:
        image = image * (1 - alpha) + fg * alpha

    sigma = np.float32(rng.uniform(0.0, 4.0 if easy else 10.0))  # per-pixel Gaussian noise, grey levels
    oy, ox = rng.integers(0, size, 2)
    image += sigma * _noise_bank(size)[oy:oy + size, ox:ox + size]
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def example_rng(seed: int, split_index: int, example_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split_index, example_index])
