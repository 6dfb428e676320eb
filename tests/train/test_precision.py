"""``train.precision``: the setting validates (and reads the old ``train.bf16``), and a bfloat16
train step computes in bfloat16 while its parameters, optimizer state and loss stay float32, with
a loss close to the float32 step's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError
from jaxseg.models import registry
from tests.models.tiny import train_run
from tests.train.test_step import tiny_config


def test_precision_defaults_to_float32_and_takes_bfloat16():
    assert config_lib.load("demo").train.precision == "float32"
    assert tiny_config("train.precision=bfloat16").train.precision == "bfloat16"


@pytest.mark.parametrize("value", ["float16", "fp32", "true"])
def test_other_precisions_are_refused_naming_the_setting(value):
    with pytest.raises(JaxsegError, match=r"train\.precision: must be one of float32, bfloat16; got"):
        tiny_config(f"train.precision={value}")


@pytest.mark.parametrize("bf16, precision", [("true", "bfloat16"), ("false", "float32")])
def test_the_old_bf16_setting_is_read_as_precision(bf16, precision):
    cfg = tiny_config(f"train.bf16={bf16}")
    assert cfg.train.precision == precision
    assert "bf16" not in config_lib.dumps(cfg)  # written back under its new name
    assert config_lib.load_from_dict(config_lib.to_dict(cfg)) == cfg


def test_a_given_precision_wins_over_the_old_setting():
    """An old run folder says ``bf16 = false``; ``--set train.precision=bfloat16`` on it holds."""
    raw = config_lib.to_dict(tiny_config())
    raw["train"].pop("precision")
    raw["train"]["bf16"] = False
    assert config_lib.load_from_dict(raw, ["train.precision=bfloat16"]).train.precision == "bfloat16"
    with pytest.raises(JaxsegError, match=r"train\.bf16: must be true or false"):
        tiny_config('train.bf16="yes"')


def test_the_model_computes_in_the_configured_precision():
    for precision, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        cfg = tiny_config(f"train.precision={precision}")
        x = jnp.zeros((1, 32, 32, cfg.in_channels))
        model = registry.build_model(cfg, nnx.Rngs(0))
        logits, acts = model(x, train=False)
        assert {a.dtype for a in acts.values()} == {jnp.dtype(dtype)}
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        # build_model(precision=...) overrides the config's (inference of a run in another precision)
        other = "float32" if precision == "bfloat16" else "bfloat16"
        _, acts = registry.build_model(cfg, nnx.Rngs(0), precision=other)(x, train=False)
        assert {a.dtype for a in acts.values()} == {jnp.dtype(other)}


def _losses_and_state(precision: str, steps: int):
    cfg = tiny_config(f"train.precision={precision}", "model.features=[8, 16]", "train.learning_rate=0.003")
    losses, state, sums = train_run(cfg, steps)
    assert all(s["loss_sum"].dtype == jnp.float32 for s in sums)
    return np.array(losses), state


def test_a_bfloat16_step_stays_close_to_float32():
    """Same initial parameters (same seed), same batch, 4 Adam steps of the tiny U-Net.
    Tolerance: the losses agree within 0.5 % (relative). bfloat16 keeps 8 mantissa bits (a
    rounding of up to 2**-9 = 0.2 % a value) and the losses, a mean over every pixel, average
    most of it out: measured 0.01-0.04 % on this machine; 0.5 % leaves room for other
    backends' orders of summation. The Dice on real data is a separate question (docs/speed.md)."""
    losses32, _ = _losses_and_state("float32", 4)
    losses16, state16 = _losses_and_state("bfloat16", 4)
    assert np.all(np.isfinite(losses16))
    np.testing.assert_allclose(losses16, losses32, rtol=5e-3)
    assert not np.array_equal(losses16, losses32)  # it did compute in bfloat16
    # Parameters and optimizer state stay float32 (the step updates them in float32).
    assert {leaf.dtype for leaf in jax.tree.leaves(state16.params)} == {jnp.dtype(jnp.float32)}
    floats = [leaf for leaf in jax.tree.leaves(state16.opt_state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and {leaf.dtype for leaf in floats} == {jnp.dtype(jnp.float32)}
    assert {leaf.dtype for leaf in jax.tree.leaves(state16.batch_stats)} == {jnp.dtype(jnp.float32)}
