"""Inception image preprocessing on the host, in numpy + PIL: pure functions of (encoded image, random generator).

Train (slim `inception_preprocessing.preprocess_for_train`): a random distorted bounding box (area and aspect
ranges), resized straight from the decoded image to the model size, a random horizontal flip, optional colour
distortion. Eval: the crops of `eval_crops` (single central crop of 87.5 %, or 12 / 144 crops). Output: float32
RGB in [-1, 1] (`x / 127.5 - 1`, ARCHITECTURE.md §1.9).

Nothing here knows about datasets, steps or processes; the pipeline supplies the random generator. Every crop is
one PIL resample from the source pixels (bilinear, antialiased when shrinking), and JPEGs are decoded at a reduced
DCT scale when the crop is shrunk 2x or more, which is what keeps ImageNet-sized inputs cheap on 2 cores.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from inception_jax.eval_crops import Crop, crop_boxes

AUGMENTATIONS: tuple[str, ...] = ("inception", "flip", "none")
_BRIGHTNESS_DELTA = 32.0 / 255.0  # slim distort_color
_SATURATION_RANGE = (0.5, 1.5)
_HUE_DELTA = 0.2
_CONTRAST_RANGE = (0.5, 1.5)


class ImageDecodeError(ValueError):
    """An image that PIL cannot decode (corrupt or truncated bytes)."""


def decode(encoded: bytes | np.ndarray, *, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Encoded bytes (JPEG/PNG/...) or a uint8 HxWxC array -> an RGB PIL image.

    min_size: (width, height) the caller needs; a JPEG is then decoded at the smallest DCT scale (1/2, 1/4, 1/8)
    that is still at least that large. PIL refuses truncated files (LOAD_TRUNCATED_IMAGES stays False).
    """
    if isinstance(encoded, np.ndarray) and encoded.dtype == np.uint8 and encoded.ndim in (2, 3):
        array = encoded[..., 0] if encoded.ndim == 3 and encoded.shape[-1] == 1 else encoded
        return Image.fromarray(array).convert("RGB")
    try:
        data = encoded.item() if isinstance(encoded, np.ndarray) else encoded
        image = Image.open(io.BytesIO(data))
        if min_size is not None and image.format == "JPEG":
            image.draft("RGB", min_size)
        image.load()
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ... for bad bytes
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e
    return image if image.mode == "RGB" else image.convert("RGB")


def image_size_of(encoded: bytes | np.ndarray) -> tuple[int, int]:
    """(height, width) without decoding the pixels (PIL reads the header only)."""
    if isinstance(encoded, np.ndarray) and encoded.dtype == np.uint8:
        return int(encoded.shape[0]), int(encoded.shape[1])
    try:
        data = encoded.item() if isinstance(encoded, np.ndarray) else encoded
        width, height = Image.open(io.BytesIO(data)).size
    except Exception as e:
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e
    return height, width


def sample_distorted_box(rng: np.random.Generator, height: int, width: int,
                         area_range: tuple[float, float] = (0.05, 1.0),
                         aspect_range: tuple[float, float] = (0.75, 1.333),
                         max_attempts: int = 10) -> tuple[int, int, int, int]:
    """Random integer crop (top, left, crop_height, crop_width) as in `tf.image.sample_distorted_bounding_box`.

    Area fraction uniform in `area_range`, aspect ratio (width / height) uniform in `aspect_range`, position uniform;
    after `max_attempts` draws that do not fit in the image, the whole image (TF's fallback).
    """
    area = height * width
    for _ in range(max_attempts):
        target = area * rng.uniform(*area_range)
        aspect = rng.uniform(*aspect_range)
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_h <= height and 0 < crop_w <= width:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    return 0, 0, height, width


def _decode_for_boxes(encoded: bytes | np.ndarray, boxes: Sequence[tuple[float, float, float, float]],
                      size: int) -> tuple[Image.Image, float, float]:
    """Decode once for all `boxes` (source coordinates); returns the image and its (y, x) scale vs the source."""
    height, width = image_size_of(encoded)
    smallest_h = min(b[2] - b[0] for b in boxes)
    smallest_w = min(b[3] - b[1] for b in boxes)
    need = (math.ceil(width * size / smallest_w), math.ceil(height * size / smallest_h))
    image = decode(encoded, min_size=need if need[0] < width and need[1] < height else None)
    return image, image.size[1] / height, image.size[0] / width


def resize_box(image: Image.Image, box: tuple[float, float, float, float], size: int,
               scale_yx: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Resample `box` = (top, left, bottom, right) of `image` to a size x size uint8 array (bilinear)."""
    sy, sx = scale_yx
    top, left, bottom, right = box
    pil_box = (left * sx, top * sy, right * sx, bottom * sy)
    return np.asarray(image.resize((size, size), Image.BILINEAR, box=pil_box))


def to_model_range(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (ARCHITECTURE.md §1.9: x / 127.5 - 1)."""
    return image.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    delta = v - rgb.min(axis=-1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0)
    safe = np.where(delta > 0, delta, 1)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(delta > 0, (h / 6) % 1.0, 0)
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = np.stack([(5 + 6 * h) % 6, (3 + 6 * h) % 6, (1 + 6 * h) % 6], axis=-1)
    return (v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def distort_color(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """slim `distort_color(fast_mode=False)`: brightness, saturation, hue, contrast in one of 4 random orders.

    image: float32 RGB in [0, 1]; returns float32 in [0, 1].
    """
    def brightness(x: np.ndarray) -> np.ndarray:
        return np.clip(x + np.float32(rng.uniform(-_BRIGHTNESS_DELTA, _BRIGHTNESS_DELTA)), 0, 1)

    def saturation(x: np.ndarray) -> np.ndarray:
        hsv = _rgb_to_hsv(x)
        hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(rng.uniform(*_SATURATION_RANGE)), 0, 1)
        return _hsv_to_rgb(hsv)

    def hue(x: np.ndarray) -> np.ndarray:
        hsv = _rgb_to_hsv(x)
        hsv[..., 0] = (hsv[..., 0] + np.float32(rng.uniform(-_HUE_DELTA, _HUE_DELTA))) % 1.0
        return _hsv_to_rgb(hsv)

    def contrast(x: np.ndarray) -> np.ndarray:
        mean = x.mean(axis=(0, 1), keepdims=True)
        return np.clip((x - mean) * np.float32(rng.uniform(*_CONTRAST_RANGE)) + mean, 0, 1)

    orders = ((brightness, saturation, hue, contrast), (saturation, brightness, contrast, hue),
              (contrast, hue, brightness, saturation), (hue, saturation, contrast, brightness))
    for op in orders[int(rng.integers(4))]:
        image = op(image)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def train_transform(encoded: bytes | np.ndarray, rng: np.random.Generator, *, image_size: int,
                    augment: str = "inception", color_distort: bool = False,
                    area_range: tuple[float, float] = (0.05, 1.0),
                    aspect_range: tuple[float, float] = (0.75, 1.333)) -> np.ndarray:
    """One training image -> float32 (image_size, image_size, 3) in [-1, 1].

    augment: "inception" = distorted box + flip; "flip" = whole image + flip; "none" = whole image.
    The draws from `rng` happen in a fixed order (box, flip, colour), so equal generators give equal pixels.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment={augment!r} is not one of {list(AUGMENTATIONS)}")
    height, width = image_size_of(encoded)
    if augment == "inception":
        top, left, h, w = sample_distorted_box(rng, height, width, area_range, aspect_range)
    else:
        top, left, h, w = 0, 0, height, width
    box = (float(top), float(left), float(top + h), float(left + w))
    image, sy, sx = _decode_for_boxes(encoded, [box], image_size)
    pixels = resize_box(image, box, image_size, (sy, sx))
    if augment != "none" and rng.uniform() < 0.5:
        pixels = pixels[:, ::-1]
    if color_distort:
        unit = distort_color(pixels.astype(np.float32) * np.float32(1 / 255), rng)
        return unit * np.float32(2.0) - np.float32(1.0)
    return to_model_range(pixels)


def render_crops(encoded: bytes | np.ndarray, crops: Sequence[Crop], image_size: int) -> np.ndarray:
    """Pixels of `crops` (boxes in source coordinates) -> uint8 (len(crops), image_size, image_size, 3)."""
    image, sy, sx = _decode_for_boxes(encoded, [c.box for c in crops], image_size)
    out = np.empty((len(crops), image_size, image_size, 3), np.uint8)
    cache: dict[tuple[float, float, float, float], np.ndarray] = {}  # mirrored pairs share one resample
    for i, crop in enumerate(crops):
        if crop.box not in cache:
            cache[crop.box] = resize_box(image, crop.box, image_size, (sy, sx))
        out[i] = cache[crop.box][:, ::-1] if crop.mirror else cache[crop.box]
    return out


def eval_transform(encoded: bytes | np.ndarray, *, image_size: int, protocol: str = "single",
                   central_fraction: float = 0.875) -> np.ndarray:
    """One evaluation image -> float32 (n_crops, image_size, image_size, 3) in [-1, 1] (n_crops = 1, 12, 144)."""
    height, width = image_size_of(encoded)
    crops = crop_boxes(protocol, height, width, image_size, central_fraction)
    return to_model_range(render_crops(encoded, crops, image_size))
