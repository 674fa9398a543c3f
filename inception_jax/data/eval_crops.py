"""Crop geometry of the evaluation protocols of docs/architecture.md §6.4: single crop, 12 crops and 144 crops.

Pure geometry: every crop is a box in the *source* image's pixel coordinates plus a mirror flag, so that the
pixels are produced by one resampling of the original (resizing the crop box straight to the network size is the
same sampling grid as "resize the shorter side to `scale`, then cut the crop"). `preprocessing.render_crops`
turns boxes into pixels; this module never touches an image.
"""

from __future__ import annotations

import dataclasses

PROTOCOLS: tuple[str, ...] = ("single", "12", "144")
NUM_CROPS: dict[str, int] = {"single": 1, "12": 12, "144": 144}
# GoogLeNet's 144-crop shorter sides for 224-pixel inputs; §6.4 scales them by image_size / 224 (342..470 at 299).
GOOGLENET_SCALES_224: tuple[int, ...] = (256, 288, 320, 352)
VIEWS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right", "center", "whole")


@dataclasses.dataclass(frozen=True)
class Crop:
    """One view: `box` = (top, left, bottom, right) in source pixels (continuous: pixel i spans [i, i + 1)).

    scale: the shorter side the image is (virtually) resized to before cutting; None for the single central crop.
    square: which square of the resized image ('left'/'center'/'right' for landscape images, 'top'/'center'/
      'bottom' for portrait ones, 'center' only for 12 crops); view: one of VIEWS, or 'central' for single crop.
    """

    box: tuple[float, float, float, float]
    mirror: bool
    scale: int | None
    square: str
    view: str


def central_crop_box(height: int, width: int, central_fraction: float) -> tuple[float, float, float, float]:
    """`tf.image.central_crop` (slim eval, docs/architecture.md §1.9): keep `central_fraction` of each side.

    Same integer arithmetic as TF: the offset is truncated and the crop keeps the remaining, symmetric, extent.
    """
    if not 0.0 < central_fraction <= 1.0:
        raise ValueError(f"central_fraction={central_fraction!r} must be in (0, 1]")
    top = int((height - height * central_fraction) / 2)
    left = int((width - width * central_fraction) / 2)
    return (float(top), float(left), float(height - top), float(width - left))


def protocol_scales(protocol: str, image_size: int, central_fraction: float = 0.875) -> tuple[int, ...]:
    """Shorter-side sizes a protocol resizes to: () for single, (round(S / fraction),) for 12, 4 scales for 144."""
    _check_protocol(protocol)
    if protocol == "single":
        return ()
    if protocol == "12":
        return (round(image_size / central_fraction),)
    return tuple(round(image_size * s / 224) for s in GOOGLENET_SCALES_224)


def _squares(height: int, width: int, scale: int, which: str) -> list[tuple[str, float, float]]:
    """(name, top, left) of the scale x scale squares of the image resized so that its shorter side is `scale`."""
    factor = scale / min(height, width)
    rh, rw = height * factor, width * factor
    if which == "center":
        return [("center", (rh - scale) / 2, (rw - scale) / 2)]
    if width >= height:  # landscape (or square: the three squares coincide, as they would in GoogLeNet)
        return [("left", 0.0, 0.0), ("center", 0.0, (rw - scale) / 2), ("right", 0.0, rw - scale)]
    return [("top", 0.0, 0.0), ("center", (rh - scale) / 2, 0.0), ("bottom", rh - scale, 0.0)]


def _views(top: float, left: float, side: float, crop: float) -> list[tuple[str, float, float, float]]:
    """(view, top, left, size) of the 4 corner crops, the centre crop and the whole square, in resized pixels."""
    far = side - crop
    return [
        ("top_left", top, left, crop), ("top_right", top, left + far, crop),
        ("bottom_left", top + far, left, crop), ("bottom_right", top + far, left + far, crop),
        ("center", top + far / 2, left + far / 2, crop), ("whole", top, left, side),
    ]


def crop_boxes(protocol: str, height: int, width: int, image_size: int,
               central_fraction: float = 0.875) -> tuple[Crop, ...]:
    """All crops of `protocol` for a `height` x `width` source image and a network input of `image_size`.

    Order: scale, then square, then view (VIEWS order), then mirror (False, True).
    """
    _check_protocol(protocol)
    if height < 1 or width < 1:
        raise ValueError(f"image of size {height}x{width} has no pixels")
    if protocol == "single":
        return (Crop(central_crop_box(height, width, central_fraction), False, None, "center", "central"),)
    which = "center" if protocol == "12" else "three"
    crops = []
    for scale in protocol_scales(protocol, image_size, central_fraction):
        if scale < image_size:
            raise ValueError(f"{protocol}-crop scale {scale} is below the crop size {image_size}")
        factor = scale / min(height, width)
        for square, s_top, s_left in _squares(height, width, scale, which):
            for view, top, left, size in _views(s_top, s_left, float(scale), float(image_size)):
                box = (top / factor, left / factor, (top + size) / factor, (left + size) / factor)
                crops.extend(Crop(box, mirror, scale, square, view) for mirror in (False, True))
    return tuple(crops)


def _check_protocol(protocol: str) -> None:
    if protocol not in NUM_CROPS:
        raise ValueError(f"evaluation crops {protocol!r} is not one of {list(PROTOCOLS)}")
