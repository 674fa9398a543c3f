"""Inception image preprocessing on the host, in numpy + PIL: pure functions of (encoded image, random generator).

Train (slim `inception_preprocessing.preprocess_for_train`): a random distorted bounding box (area and aspect
ranges), resized straight from the decoded image to the model size, a random horizontal flip, optional colour
distortion. Eval: the crops of `eval_crops` (single central crop of 87.5 %, or 12 / 144 crops). Output: float32
RGB in [-1, 1] (`x / 127.5 - 1`, docs/architecture.md §1.9).

The input pipeline ships uint8 pixels (a quarter of the bytes to copy and to put on devices); the jitted steps map
them to [-1, 1] with `UINT8_TO_MODEL_RANGE`, a 256-entry table of `to_model_range`, so the device sees exactly
the values computed here (XLA fuses x / 127.5 - 1 into one rounding, numpy rounds twice). Colour distortion
leaves the uint8 grid, so its images travel as float32 in [-1, 1].

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

from inception_jax.data.eval_crops import Crop, crop_boxes

AUGMENTATIONS: tuple[str, ...] = ("inception", "flip", "none")
_BRIGHTNESS_DELTA = 32.0 / 255.0  # slim distort_color
_SATURATION_RANGE = (0.5, 1.5)
_HUE_DELTA = 0.2
_CONTRAST_RANGE = (0.5, 1.5)


class ImageDecodeError(ValueError):
    """An image that PIL cannot decode (corrupt or truncated bytes)."""


def open_image(encoded: bytes | np.ndarray) -> Image.Image:
    """Encoded bytes (JPEG/PNG/...) or a uint8 HxW[xC] array -> a PIL image whose pixels are not decoded yet."""
    if isinstance(encoded, np.ndarray) and encoded.dtype == np.uint8 and encoded.ndim in (2, 3):
        return Image.fromarray(encoded[..., 0] if encoded.ndim == 3 and encoded.shape[-1] == 1 else encoded)
    try:
        data = encoded.item() if isinstance(encoded, np.ndarray) else encoded
        return Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ... for bad bytes
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e


def load_rgb(image: Image.Image, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode the pixels of an `open_image` result as RGB.

    min_size: (width, height) the caller needs; a JPEG is then decoded at the smallest DCT scale (1/2, 1/4, 1/8)
    that is still at least that large. PIL refuses truncated files (LOAD_TRUNCATED_IMAGES stays False).
    """
    try:
        if min_size is not None and image.format == "JPEG" and min_size[0] < image.size[0] \
                and min_size[1] < image.size[1]:
            image.draft("RGB", min_size)
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as e:
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e


def decode(encoded: bytes | np.ndarray) -> np.ndarray:
    """Encoded image -> uint8 (H, W, 3) RGB array at full resolution."""
    return np.asarray(load_rgb(open_image(encoded)))


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


def _load_for_boxes(image: Image.Image, boxes: Sequence[tuple[float, float, float, float]],
                    size: int) -> tuple[Image.Image, tuple[float, float]]:
    """Decode once for all `boxes` (source coordinates); returns the pixels and their (y, x) scale vs the source."""
    width, height = image.size
    smallest_h = min(b[2] - b[0] for b in boxes)
    smallest_w = min(b[3] - b[1] for b in boxes)
    image = load_rgb(image, (math.ceil(width * size / smallest_w), math.ceil(height * size / smallest_h)))
    return image, (image.size[1] / height, image.size[0] / width)


def resize_box(image: Image.Image, box: tuple[float, float, float, float], size: int,
               scale_yx: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Resample `box` = (top, left, bottom, right) of `image` to a size x size uint8 array (bilinear)."""
    sy, sx = scale_yx
    top, left, bottom, right = box
    pil_box = (left * sx, top * sy, right * sx, bottom * sy)
    return np.asarray(image.resize((size, size), Image.BILINEAR, box=pil_box))


def to_model_range(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (docs/architecture.md §1.9: x / 127.5 - 1)."""
    return image.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


UINT8_TO_MODEL_RANGE: np.ndarray = to_model_range(np.arange(256, dtype=np.uint8))


def _mod6(x: np.ndarray) -> np.ndarray:
    # Faster than np.remainder on float32 (docs/performance.md §6.3).
    return x - np.float32(6) * np.floor(x * np.float32(1 / 6))


def _shift_hue_planar(planes: np.ndarray, delta: float) -> np.ndarray:
    r, g, b = planes
    v = np.maximum(np.maximum(r, g), b)
    chroma = v - np.minimum(np.minimum(r, g), b)
    inv = np.float32(1) / np.where(chroma > 0, chroma, np.float32(1))
    h6 = np.where(v == r, (g - b) * inv, np.where(v == g, 2 + (b - r) * inv, 4 + (r - g) * inv))
    h6 += np.float32(6 * delta)
    out = np.empty_like(planes)
    for channel, n in enumerate((5, 3, 1)):
        k = _mod6(h6 + np.float32(n))
        out[channel] = v - chroma * np.clip(np.minimum(k, 4 - k), 0, 1)
    return out


def _saturate_planar(planes: np.ndarray, factor: float) -> np.ndarray:
    # HSV saturation scaling without the round trip: with v = max channel, every channel is v - (v - c), and
    # scaling s by f scales (v - c) by f; clipping s' at 1 caps the factor at 1 / s = v / (v - min).
    v = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    spread = v - np.minimum(np.minimum(planes[0], planes[1]), planes[2])
    capped = np.minimum(np.float32(factor), v / np.maximum(spread, np.float32(1e-12)))
    return v - (v - planes) * capped


def adjust_saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Scale the HSV saturation of float RGB pixels (..., 3) by `factor`, clipped to 1 (TF `adjust_saturation`)."""
    planes = np.ascontiguousarray(np.moveaxis(rgb.astype(np.float32), -1, 0))
    return np.moveaxis(_saturate_planar(planes, factor), 0, -1)


def shift_hue(rgb: np.ndarray, delta: float) -> np.ndarray:
    """Rotate the HSV hue of float RGB pixels (..., 3) by `delta` turns (TF `adjust_hue`); value and chroma stay.

    Goes only as far into HSV as it must: value v, chroma c = v - min and hue in sixths of a turn; then each channel
    is v - c * clip(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6, n = 5, 3, 1 for R, G, B.
    """
    planes = np.ascontiguousarray(np.moveaxis(rgb.astype(np.float32), -1, 0))
    return np.moveaxis(_shift_hue_planar(planes, delta), 0, -1)


def distort_color(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """slim `distort_color(fast_mode=False)`: brightness, saturation, hue, contrast in one of 4 random orders.

    image: float32 RGB (H, W, 3) in [0, 1]; returns float32 (H, W, 3) in [0, 1]. Works on channel planes, because
    numpy ops on the strided channels of an HxWx3 array are several times slower (docs/performance.md §6.3).
    """
    def brightness(x: np.ndarray) -> np.ndarray:
        return np.clip(x + np.float32(rng.uniform(-_BRIGHTNESS_DELTA, _BRIGHTNESS_DELTA)), 0, 1)

    def saturation(x: np.ndarray) -> np.ndarray:
        return _saturate_planar(x, float(rng.uniform(*_SATURATION_RANGE)))

    def hue(x: np.ndarray) -> np.ndarray:
        return _shift_hue_planar(x, float(rng.uniform(-_HUE_DELTA, _HUE_DELTA)))

    def contrast(x: np.ndarray) -> np.ndarray:
        mean = x.reshape(3, -1).mean(axis=1)[:, None, None]
        return np.clip((x - mean) * np.float32(rng.uniform(*_CONTRAST_RANGE)) + mean, 0, 1)

    orders = ((brightness, saturation, hue, contrast), (saturation, brightness, contrast, hue),
              (contrast, hue, brightness, saturation), (hue, saturation, contrast, brightness))
    planes = np.ascontiguousarray(np.moveaxis(image.astype(np.float32), -1, 0))
    for op in orders[int(rng.integers(4))]:
        planes = op(planes)
    return np.ascontiguousarray(np.moveaxis(np.clip(planes, 0.0, 1.0), 0, -1))


def train_transform(encoded: bytes | np.ndarray, rng: np.random.Generator, *, image_size: int,
                    augment: str = "inception", color_distort: bool = False,
                    area_range: tuple[float, float] = (0.05, 1.0),
                    aspect_range: tuple[float, float] = (0.75, 1.333)) -> np.ndarray:
    """One training image -> float32 (image_size, image_size, 3) in [-1, 1]: `model_range(train_pixels(...))`."""
    return model_range(train_pixels(encoded, rng, image_size=image_size, augment=augment,
                                    color_distort=color_distort, area_range=area_range, aspect_range=aspect_range))


def train_pixels(encoded: bytes | np.ndarray, rng: np.random.Generator, *, image_size: int,
                 augment: str = "inception", color_distort: bool = False,
                 area_range: tuple[float, float] = (0.05, 1.0),
                 aspect_range: tuple[float, float] = (0.75, 1.333)) -> np.ndarray:
    """One training image -> uint8 (image_size, image_size, 3) pixels; float32 in [-1, 1] with color_distort.

    augment: "inception" = distorted box + flip; "flip" = whole image + flip; "none" = whole image.
    The draws from `rng` happen in a fixed order (box, flip, colour), so equal generators give equal pixels.
    For "flip" and "none" this is `augment_pixels(whole_image_pixels(encoded, size), rng, ...)`: the first part is
    deterministic, which is what the input pipeline's image cache keeps.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment={augment!r} is not one of {list(AUGMENTATIONS)}")
    if augment == "inception":
        image = open_image(encoded)
        width, height = image.size
        top, left, h, w = sample_distorted_box(rng, height, width, area_range, aspect_range)
        pixels = _box_pixels(image, (float(top), float(left), float(top + h), float(left + w)), image_size)
    else:
        pixels = whole_image_pixels(encoded, image_size)
    return augment_pixels(pixels, rng, augment=augment, color_distort=color_distort)


def whole_image_pixels(encoded: bytes | np.ndarray, image_size: int) -> np.ndarray:
    """The whole image resampled to uint8 (image_size, image_size, 3): the deterministic part of "flip" / "none"."""
    image = open_image(encoded)
    return _box_pixels(image, (0.0, 0.0, float(image.size[1]), float(image.size[0])), image_size)


def _box_pixels(image: Image.Image, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """One box of a not yet decoded image, decoded (at a reduced JPEG scale when it allows) and resampled."""
    image, scale_yx = _load_for_boxes(image, [box], size)
    return resize_box(image, box, size, scale_yx)


def augment_pixels(pixels: np.ndarray, rng: np.random.Generator, *, augment: str,
                   color_distort: bool = False) -> np.ndarray:
    """uint8 (S, S, 3) crop -> the random flip (unless augment is "none") as uint8; with color_distort, then the
    colour distortion, as float32 in [-1, 1] (its output is not on the uint8 grid)."""
    if augment != "none" and rng.uniform() < 0.5:
        pixels = pixels[:, ::-1]
    if color_distort:
        unit = distort_color(pixels.astype(np.float32) * np.float32(1 / 255), rng)
        return unit * np.float32(2.0) - np.float32(1.0)
    return pixels


def model_range(images: np.ndarray) -> np.ndarray:
    """Pipeline images -> the model's float32 [-1, 1]: uint8 pixels through `to_model_range`, floats as they are."""
    return to_model_range(images) if images.dtype == np.uint8 else images


def render_crops(image: Image.Image | bytes | np.ndarray, crops: Sequence[Crop], image_size: int) -> np.ndarray:
    """Pixels of `crops` (boxes in source coordinates) -> uint8 (len(crops), image_size, image_size, 3)."""
    if not isinstance(image, Image.Image):
        image = open_image(image)
    image, scale_yx = _load_for_boxes(image, [c.box for c in crops], image_size)
    out = np.empty((len(crops), image_size, image_size, 3), np.uint8)
    # Mirrored pairs, and the "whole square" views that recur at every 144-crop scale, share one resample.
    cache: dict[tuple[float, ...], np.ndarray] = {}
    for i, crop in enumerate(crops):
        key = tuple(round(v, 6) for v in crop.box)
        if key not in cache:
            cache[key] = resize_box(image, crop.box, image_size, scale_yx)
        out[i] = cache[key][:, ::-1] if crop.mirror else cache[key]
    return out


def eval_transform(encoded: bytes | np.ndarray, *, image_size: int, protocol: str = "single",
                   central_fraction: float = 0.875) -> np.ndarray:
    """One evaluation image -> float32 (n_crops, image_size, image_size, 3) in [-1, 1] (n_crops = 1, 12, 144)."""
    return to_model_range(eval_pixels(encoded, image_size=image_size, protocol=protocol,
                                      central_fraction=central_fraction))


def eval_pixels(encoded: bytes | np.ndarray, *, image_size: int, protocol: str = "single",
                central_fraction: float = 0.875) -> np.ndarray:
    """The crops of `eval_transform` as uint8 (n_crops, image_size, image_size, 3), before the model range."""
    image = open_image(encoded)
    crops = crop_boxes(protocol, image.size[1], image.size[0], image_size, central_fraction)
    return render_crops(image, crops, image_size)
