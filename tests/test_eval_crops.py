"""Crop geometry of the 1 / 12 / 144-crop protocols (docs/architecture.md §6.4), checked exactly."""

from collections import Counter

import pytest

from inception_jax.data.eval_crops import NUM_CROPS, VIEWS, central_crop_box, crop_boxes, protocol_scales


def _inside(box, height, width, eps=1e-9):
    top, left, bottom, right = box
    return -eps <= top < bottom <= height + eps and -eps <= left < right <= width + eps


@pytest.mark.parametrize("protocol", ["single", "12", "144"])
@pytest.mark.parametrize("height,width", [(96, 96), (375, 500), (500, 333)])
def test_counts_and_all_boxes_inside_the_image(protocol, height, width):
    crops = crop_boxes(protocol, height, width, 299 if height > 96 else 96)
    assert len(crops) == NUM_CROPS[protocol]
    assert all(_inside(c.box, height, width) for c in crops)


def test_single_crop_is_tf_central_crop():
    # tf.image.central_crop: offset int((H - H * f) / 2), size H - 2 * offset
    assert central_crop_box(96, 96, 0.875) == (6.0, 6.0, 90.0, 90.0)
    assert central_crop_box(375, 500, 0.875) == (23.0, 31.0, 352.0, 469.0)
    assert central_crop_box(10, 10, 1.0) == (0.0, 0.0, 10.0, 10.0)
    (crop,) = crop_boxes("single", 375, 500, 299)
    assert crop.box == (23.0, 31.0, 352.0, 469.0) and not crop.mirror and crop.scale is None


def test_scales_follow_the_spec():
    assert protocol_scales("single", 299) == ()
    assert protocol_scales("12", 299) == (342,)  # round(299 / 0.875)
    assert protocol_scales("144", 299) == (342, 384, 427, 470)  # GoogLeNet 256..352 scaled by 299 / 224
    assert protocol_scales("12", 96) == (110,)
    assert protocol_scales("144", 96) == (110, 123, 137, 151)


def test_12_crops_geometry_landscape():
    height, width, size = 375, 500, 299
    crops = crop_boxes("12", height, width, size)
    factor = 342 / 375  # shorter side -> 342
    # one centre square of side 342 in resized pixels = 375 source pixels, horizontally centred
    sq_left = (width * factor - 342) / 2 / factor
    views = Counter((c.view, c.mirror) for c in crops)
    assert views == Counter({(v, m): 1 for v in VIEWS for m in (False, True)})
    assert {c.square for c in crops} == {"center"} and {c.scale for c in crops} == {342}
    by_view = {c.view: c.box for c in crops if not c.mirror}
    crop_src = size / factor  # a 299-crop in source pixels
    assert by_view["top_left"] == pytest.approx((0.0, sq_left, crop_src, sq_left + crop_src))
    assert by_view["bottom_right"] == pytest.approx((375 - crop_src, sq_left + 375 - crop_src, 375.0, sq_left + 375))
    off = (375 - crop_src) / 2
    assert by_view["center"] == pytest.approx((off, sq_left + off, off + crop_src, sq_left + off + crop_src))
    assert by_view["whole"] == pytest.approx((0.0, sq_left, 375.0, sq_left + 375.0))
    # every view appears once plain and once mirrored, with the same box
    for view in VIEWS:
        pair = [c for c in crops if c.view == view]
        assert len(pair) == 2 and pair[0].box == pair[1].box and {p.mirror for p in pair} == {False, True}


@pytest.mark.parametrize("height,width,squares", [(375, 500, ("left", "center", "right")),
                                                  (500, 375, ("top", "center", "bottom"))])
def test_144_crops_geometry(height, width, squares):
    size = 299
    crops = crop_boxes("144", height, width, size)
    assert Counter(c.scale for c in crops) == Counter({342: 36, 384: 36, 427: 36, 470: 36})
    assert Counter(c.square for c in crops) == Counter({s: 48 for s in squares})
    assert Counter(c.view for c in crops) == Counter({v: 24 for v in VIEWS})
    assert Counter(c.mirror for c in crops) == Counter({False: 72, True: 72})
    # the corner/centre views are all distinct; the "whole square" view is the same square at every scale
    # (GoogLeNet's protocol has this redundancy): 3 squares x 2 mirrors
    rounded = {(tuple(round(v, 6) for v in c.box), c.mirror) for c in crops if c.view != "whole"}
    assert len(rounded) == 4 * 3 * 5 * 2
    assert len({(tuple(round(v, 6) for v in c.box), c.mirror) for c in crops if c.view == "whole"}) == 3 * 2
    short, long_ = min(height, width), max(height, width)
    for scale in (342, 384, 427, 470):
        factor = scale / short
        wholes = {c.square: c.box for c in crops if c.scale == scale and c.view == "whole" and not c.mirror}
        # the whole square spans the shorter side; the three squares start at 0, centre, and the far end
        starts = [wholes[s][1] if width > height else wholes[s][0] for s in squares]
        assert starts == pytest.approx([0.0, (long_ - short) / 2, long_ - short])
        for box in wholes.values():
            assert box[2] - box[0] == pytest.approx(short) and box[3] - box[1] == pytest.approx(short)
        corner = [c.box for c in crops if c.scale == scale and c.view != "whole"]
        for box in corner:  # every non-whole view is a size x size crop of the resized image
            assert box[2] - box[0] == pytest.approx(size / factor) and box[3] - box[1] == pytest.approx(size / factor)


def test_square_image_144_has_coinciding_squares():
    crops = crop_boxes("144", 96, 96, 96)
    assert len(crops) == 144
    whole_110 = {c.box for c in crops if c.scale == 110 and c.view == "whole"}
    assert whole_110 == {(0.0, 0.0, 96.0, 96.0)}


def test_bad_protocol_and_sizes():
    with pytest.raises(ValueError, match=r"'10' is not one of \['single', '12', '144'\]"):
        crop_boxes("10", 96, 96, 96)
    with pytest.raises(ValueError, match="central_fraction"):
        central_crop_box(96, 96, 0.0)
    with pytest.raises(ValueError, match="below the crop size"):
        crop_boxes("12", 96, 96, 96, central_fraction=1.5)
