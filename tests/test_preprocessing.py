"""Inception preprocessing: distorted boxes, train/eval transforms, ranges, colour distortion, decode errors."""

import io

import numpy as np
import pytest
from PIL import Image

from inception_jax.data import preprocessing as pp
from inception_jax.data.eval_crops import crop_boxes


def _jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _gradient(height: int, width: int) -> np.ndarray:
    """An image whose left and right halves differ, so flips are visible."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256],
                    -1).astype(np.uint8)


def test_distorted_box_respects_area_aspect_and_bounds():
    rng = np.random.default_rng(0)
    height, width = 300, 400
    for _ in range(500):
        top, left, h, w = pp.sample_distorted_box(rng, height, width, (0.05, 1.0), (0.75, 1.333))
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
        if (h, w) != (height, width):
            area = h * w / (height * width)
            assert 0.05 - 0.01 <= area <= 1.0  # integer rounding of the sides
            assert 0.75 - 0.02 <= w / h <= 1.333 + 0.02


def test_distorted_box_falls_back_to_the_whole_image():
    # aspect 10:1 never fits in a square image at >= 50 % area: TF's fallback is the whole image
    rng = np.random.default_rng(0)
    assert pp.sample_distorted_box(rng, 32, 32, (0.5, 1.0), (10.0, 10.0)) == (0, 0, 32, 32)


def test_train_transform_range_shape_and_determinism():
    encoded = _jpeg(_gradient(120, 160))
    for augment in ("inception", "flip", "none"):
        for color in (False, True):
            kw = dict(image_size=96, augment=augment, color_distort=color)
            a = pp.train_transform(encoded, np.random.default_rng(7), **kw)
            b = pp.train_transform(encoded, np.random.default_rng(7), **kw)
            assert a.shape == (96, 96, 3) and a.dtype == np.float32
            assert a.min() >= -1.0 and a.max() <= 1.0
            np.testing.assert_array_equal(a, b)


def test_train_transform_none_is_resize_and_flip_mirrors():
    array = _gradient(64, 80)
    encoded = _png(array)
    plain = pp.train_transform(encoded, np.random.default_rng(0), image_size=80, augment="none")
    expected = pp.to_model_range(np.asarray(Image.fromarray(array).resize((80, 80), Image.BILINEAR)))
    np.testing.assert_array_equal(plain, expected)
    seen = set()
    for seed in range(16):
        flipped = pp.train_transform(encoded, np.random.default_rng(seed), image_size=80, augment="flip")
        if np.array_equal(flipped, expected):
            seen.add("plain")
        elif np.array_equal(flipped, expected[:, ::-1]):
            seen.add("mirror")
        else:
            pytest.fail("augment='flip' produced something other than the image or its mirror")
    assert seen == {"plain", "mirror"}


def test_inception_crops_vary_with_the_generator():
    encoded = _png(_gradient(96, 96))
    outs = {pp.train_transform(encoded, np.random.default_rng(s), image_size=96).tobytes() for s in range(8)}
    assert len(outs) == 8


def test_to_model_range_endpoints():
    x = np.array([0, 255, 51], np.uint8)
    np.testing.assert_allclose(pp.to_model_range(x), [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-7)


def test_hue_and_saturation_match_hsv_and_distortion_range():
    import colorsys

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(pp.shift_hue(image, 0.0), image, atol=1e-6)
    np.testing.assert_allclose(pp.shift_hue(image, 1.0), image, atol=1e-5)
    shifted = pp.shift_hue(image, 0.15)
    for pixel, out in zip(image.reshape(-1, 3)[:50], shifted.reshape(-1, 3)[:50]):
        h, s, v = colorsys.rgb_to_hsv(*pixel)
        np.testing.assert_allclose(out, colorsys.hsv_to_rgb((h + 0.15) % 1.0, s, v), atol=1e-5)
    np.testing.assert_allclose(pp.shift_hue(np.array([[1.0, 0, 0]], np.float32), 1 / 3), [[0, 1.0, 0]], atol=1e-6)
    for factor in (0.5, 1.4):
        saturated = pp.adjust_saturation(image, factor)
        for pixel, out in zip(image.reshape(-1, 3)[:50], saturated.reshape(-1, 3)[:50]):
            h, s, v = colorsys.rgb_to_hsv(*pixel)
            np.testing.assert_allclose(out, colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v), atol=1e-5)
    out = pp.distort_color(image, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - image).mean() > 1e-3


def test_eval_single_crop_is_central_crop_then_resize():
    array = _gradient(100, 80)
    encoded = _png(array)
    out = pp.eval_transform(encoded, image_size=75, protocol="single", central_fraction=0.875)
    # tf central_crop of 100x80 at 0.875: offsets 6 and 5
    expected = Image.fromarray(array).resize((75, 75), Image.BILINEAR, box=(5, 6, 75, 94))
    np.testing.assert_array_equal(out[0], pp.to_model_range(np.asarray(expected)))


def test_eval_crops_shapes_and_mirrors():
    encoded = _png(_gradient(90, 120))
    out = pp.eval_transform(encoded, image_size=75, protocol="12")
    assert out.shape == (12, 75, 75, 3) and out.min() >= -1 and out.max() <= 1
    crops = crop_boxes("12", 90, 120, 75)
    for i, crop in enumerate(crops):
        if crop.mirror:
            np.testing.assert_array_equal(out[i], out[i - 1][:, ::-1])  # same box, mirrored
    assert pp.eval_transform(encoded, image_size=75, protocol="144").shape == (144, 75, 75, 3)


def test_jpeg_draft_decoding_matches_full_decoding():
    big = np.asarray(Image.fromarray(_gradient(64, 64)).resize((1024, 768), Image.BILINEAR))
    encoded = _jpeg(big)
    fast = pp.eval_transform(encoded, image_size=96)  # decodes at 1/4 scale
    full = pp.eval_transform(_png(big), image_size=96)  # PNG: always full resolution
    assert np.abs(fast - full).mean() < 0.02


def test_decode_accepts_arrays_and_grayscale():
    gray = np.full((10, 12, 1), 7, np.uint8)
    assert pp.decode(gray).shape == (10, 12, 3)
    assert pp.decode(_png(gray[..., 0])).shape == (10, 12, 3)


def test_corrupt_and_truncated_images_raise():
    encoded = _jpeg(_gradient(64, 64))
    with pytest.raises(pp.ImageDecodeError):
        pp.train_transform(encoded[: len(encoded) // 2], np.random.default_rng(0), image_size=96)
    with pytest.raises(pp.ImageDecodeError, match="UnidentifiedImageError"):
        pp.decode(b"not an image at all")
    with pytest.raises(ValueError, match="augment='mixup' is not one of"):
        pp.train_transform(encoded, np.random.default_rng(0), image_size=96, augment="mixup")
