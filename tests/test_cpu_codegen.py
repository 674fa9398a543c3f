"""XLA:CPU code generation (cpu/codegen.py): which options the train and eval steps compile with, that this
jaxlib accepts every one of them and does what they say (convolutions off YNNPACK), that NaN and inf stay visible,
and that a train step compiled with them computes what XLA's default code computes, up to float32 rounding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.configuration import base_config, validate_static
from inception_jax.cpu import codegen as cpu_codegen
from inception_jax.training.checkpointing import RunCheckpoints
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.programs import compile_steps
from inception_jax.training.sharding import global_batch
from inception_jax.training.state import restore_or_init
from inception_jax.validation import ConfigError
from tests.numerics import assert_trees_close_to_scale
from tests.training_helpers import assert_losses_agree_up_to_rounding, tiny_config


def test_options_apply_to_cpu_programs_only_and_xla_default_sets_none():
    assert cpu_codegen.compiler_options("tuned", "cpu", xla_flags="") == cpu_codegen.TUNED_OPTIONS
    assert cpu_codegen.compiler_options("xla_default", "cpu", xla_flags="") is None
    for platform in ("gpu", "cuda", "rocm", "tpu"):
        for codegen in cpu_codegen.CODEGENS:
            assert cpu_codegen.compiler_options(codegen, platform, xla_flags="") is None


def test_the_training_loop_compiles_tuned_by_default():
    assert base_config().xla_cpu_codegen == "tuned"


def _library_fusions(compiled_text: str) -> dict[str, int]:
    """How many YNNPACK fusions of a compiled CPU program hold a convolution, a dot or a reduction."""
    bodies = dict(re.findall(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", compiled_text, re.S))
    counts = {"convolution": 0, "dot": 0, "reduce": 0}
    for callee in re.findall(r"%?ynn_fusion[\w.\-]* = [^\n]*calls=%?([\w.\-]+)", compiled_text):
        for op in counts:
            counts[op] += f" {op}(" in bodies.get(callee, "")
    return counts


def test_tuned_takes_the_convolutions_off_ynnpack_and_leaves_dots_and_reductions_on_it():
    """What "tuned" is for (cpu/codegen.py): XLA's own convolution kernels, YNNPACK's dots and reductions. A
    jaxlib that renamed the option's values fails on compiling; one that ignored it fails on the counts."""
    def conv_bn_dense(x, w, v):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = (y - y.mean((0, 1, 2))) * jax.lax.rsqrt(y.var((0, 1, 2)) + 1e-3)
        return y.reshape(-1, y.shape[-1]) @ v

    args = (jnp.ones((4, 9, 9, 16)), jnp.ones((3, 3, 16, 32)), jnp.ones((32, 8)))
    lowered = jax.jit(conv_bn_dense).lower(*args)
    default = _library_fusions(lowered.compile().as_text())
    tuned = _library_fusions(
        lowered.compile(compiler_options=cpu_codegen.compiler_options("tuned", "cpu", xla_flags="")).as_text())
    assert default["convolution"] >= 1 and tuned["convolution"] == 0
    assert tuned["dot"] == default["dot"] >= 1 and tuned["reduce"] == default["reduce"] >= 1


def test_an_option_set_in_xla_flags_is_left_to_xla_flags():
    flags = "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_DOT"
    assert cpu_codegen.compiler_options("tuned", "cpu", xla_flags=flags) is None
    assert cpu_codegen.compiler_options("tuned", "cpu", xla_flags="--xla_cpu_prefer_vector_width") == \
        cpu_codegen.TUNED_OPTIONS


def test_a_bad_codegen_is_refused_with_the_choices():
    config = base_config()
    config.xla_cpu_codegen = "fastest"
    choices = r"\['tuned', 'xla_default'\]"
    with pytest.raises(ConfigError, match=rf"xla_cpu_codegen='fastest' is not one of {choices}"):
        validate_static(config)
    with pytest.raises(ValueError, match="'fastest'"):
        cpu_codegen.compiler_options("fastest", "cpu")


def test_a_train_step_compiled_tuned_computes_what_xla_default_code_computes(shapes_tiny_dir, tmp_path):
    results = {}
    for codegen in cpu_codegen.CODEGENS:
        run = prepare_run(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "xla_cpu_codegen": codegen}),
                          str(tmp_path / codegen))
        checkpoints = RunCheckpoints(str(tmp_path / codegen / "checkpoints"), every_steps=100, keep=1)
        state, shardings, _ = restore_or_init(run, checkpoints)
        checkpoints.close()
        train_fn, _ = compile_steps(run, shardings)
        assert train_fn.compiler_options == cpu_codegen.compiler_options(codegen, "cpu")
        losses = []
        for step in range(3):
            state, metrics = train_fn(state, global_batch(run.train_stream.batch(step), run.mesh), 0)
            losses.append(float(metrics["loss"]))
        results[codegen] = losses, jax.tree.map(np.asarray, state.params)
    (losses, params), (default_losses, default_params) = results["tuned"], results["xla_default"]
    assert_losses_agree_up_to_rounding(losses, default_losses, "tuned")
    assert_trees_close_to_scale(params, default_params, 1e-3)


def test_steps_with_large_block_matmuls_leave_dots_to_xla_and_keep_xlas_convolutions():
    """From XLA_DOTS_MIN_ROWS rows in the B blocks' matmuls (299 px, batch 8: 2,312), "tuned" hands only reductions
    to YNNPACK; below (75 px, batch 32: 288) dots stay there. Convolutions are XLA's either way."""
    assert cpu_codegen.block_matmul_rows(8, 17) == 2312 and cpu_codegen.block_matmul_rows(32, 3) == 288
    small = cpu_codegen.compiler_options("tuned", "cpu", xla_flags="", matmul_rows=288)
    large = cpu_codegen.compiler_options("tuned", "cpu", xla_flags="", matmul_rows=2312)
    assert "INDIVIDUAL_DOT" in small[cpu_codegen.YNN_FUSION_TYPE]
    assert large[cpu_codegen.YNN_FUSION_TYPE] == "LIBRARY_FUSION_TYPE_REDUCE"
    assert cpu_codegen.xla_convolution_kernels("tuned", "cpu", xla_flags="")
    assert cpu_codegen.compiler_options("xla_default", "cpu", xla_flags="", matmul_rows=10**6) is None
    assert not cpu_codegen.xla_convolution_kernels("xla_default", "cpu", xla_flags="")
    # The user's XLA_FLAGS still win.
    flags = f"--{cpu_codegen.YNN_FUSION_TYPE}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    assert cpu_codegen.compiler_options("tuned", "cpu", xla_flags=flags, matmul_rows=10**6) is None
    # Compiled: the matmul is a YNNPACK fusion with the small setting, XLA's own dot with the large one.
    lowered = jax.jit(lambda x, w: x @ w).lower(jnp.ones((64, 32)), jnp.ones((32, 16)))
    for rows, on_ynn in ((288, True), (2312, False)):
        hlo = lowered.compile(compiler_options=cpu_codegen.compiler_options("tuned", "cpu", xla_flags="",
                                                                            matmul_rows=rows)).as_text()
        assert ("__ynn_fusion" in hlo) == on_ynn, rows
