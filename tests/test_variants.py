"""A variant's stored name is written by one function and read back by the same module: writer and reader agree."""

import pytest

from inception_jax.models.variants import display_name, order_key, parse_variant, variant_name


@pytest.mark.parametrize(("knobs", "stored", "shown"), [
    (dict(model_name="inception_resnet_v2", use_residual=False, residual_scale_mode="constant",
          residual_scale=(1.0, 1.0, 1.0)), "plain", "plain"),
    (dict(model_name="inception_resnet_v2", use_residual=True, residual_scale_mode="constant",
          residual_scale=(0.3, 0.3, 0.3)), "scale=0.3", "residual, scale 0.3"),
    (dict(model_name="inception_resnet_v2", use_residual=True, residual_scale_mode="constant",
          residual_scale=(1.0, 1.0, 1.0)), "scale=1", "residual, unscaled"),
    (dict(model_name="inception_resnet_v2", use_residual=True, residual_scale_mode="constant",
          residual_scale=(0.17, 0.1, 0.2)), "scale=0.17/0.1/0.2", "residual, scales 0.17 / 0.1 / 0.2"),
    (dict(model_name="inception_resnet_v2", use_residual=True, residual_scale_mode="learnable",
          residual_scale=(1.0, 1.0, 1.0)), "learnable", "residual, learnable scale"),
    (dict(model_name="inception_v4", use_residual=False, residual_scale_mode="constant",
          residual_scale=(1.0, 1.0, 1.0)), "inception_v4", "Inception-v4 (plain)"),
])
def test_a_variant_name_is_written_read_back_and_shown_in_words(knobs, stored, shown):
    assert variant_name(**knobs) == stored
    assert parse_variant(stored).is_residual == (knobs["use_residual"] and knobs["model_name"] != "inception_v4")
    assert display_name(stored) == shown


def test_variants_sort_plain_first_then_scales_ascending_then_learnable():
    names = ["learnable", "scale=1", "plain", "scale=0.1", "scale=0.3"]
    assert sorted(names, key=order_key) == ["plain", "scale=0.1", "scale=0.3", "scale=1", "learnable"]


def test_a_constant_scale_reads_back_as_a_number():
    assert parse_variant("scale=0.3").scale == 0.3
    assert parse_variant("scale=0.17/0.1/0.2").scale is None
    assert parse_variant("learnable").scales is None
