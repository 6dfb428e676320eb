"""Shared-encoder MC dropout: ``decode(encode(x))`` is the forward pass for every model of the
family, and the statistics equal the plain vmapped passes with the same keys."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.explain.mc_shared import mc_dropout_shared
from jaxseg.explain.uncertainty import mc_dropout
from jaxseg.models.attention_unet import AttentionUNet
from jaxseg.models.resunet import ResUNet
from jaxseg.models.transunet import TransUNet
from jaxseg.models.unet import UNet
from jaxseg.models.unet3d import UNet3D
from tests.models.tiny import numpy_init

RATE = 0.3
BUILDERS = {
    "unet": lambda out: UNet(2, out, (4, 8), RATE, rngs=nnx.Rngs(0)),
    "attention_unet": lambda out: AttentionUNet(2, out, (4, 8), RATE, rngs=nnx.Rngs(0)),
    "resunet34": lambda out: ResUNet(2, out, (4, 4, 8, 8, 8), (1, 1, 1, 1), (8, 8, 4, 4, 4), dropout=RATE,
                                     rngs=nnx.Rngs(0)),
    "transunet": lambda out: TransUNet(2, out, (4, 8), RATE, image_size=16, layers=2, heads=2, dim=8,
                                       mlp_dim=16, rngs=nnx.Rngs(0)),
    "unet3d": lambda out: UNet3D(2, out, (4, 8), RATE, rngs=nnx.Rngs(0)),
}


def tiny(name, out=3):
    return numpy_init(nnx.eval_shape(lambda: BUILDERS[name](out)), seed=1)


def inputs(name, batch=2):
    shape = (batch, 8, 8, 8, 2) if name == "unet3d" else (batch, 16, 16, 2)
    return np.random.default_rng(2).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_shared_encoder_equals_the_plain_passes(name):
    model, x = tiny(name), inputs(name)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    @jax.jit
    def both(params, stats, key, delta):
        m = nnx.merge(graphdef, params, stats)
        perturb = {"dec0": delta}
        return m(x, dropout_key=key, perturb=perturb), m.decode(m.encode(x, perturb=perturb), dropout_key=key,
                                                                perturb=perturb)

    delta = jnp.full(jax.eval_shape(lambda: model(x))[1]["dec0"].shape, 0.25)
    (expected_logits, expected), (logits, activations) = both(params, stats, jax.random.key(7), delta)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected_logits), atol=1e-6)
    assert set(activations) == set(expected) == set(model.activation_names)  # jit returns dicts key-sorted
    assert jax.eval_shape(lambda: model.encode(x)).input_size == x.shape[1:-1]

    key = jax.random.key(3)
    plain = mc_dropout(graphdef, params, stats, x, key, 4, "regions")
    shared = mc_dropout_shared(graphdef, params, stats, x, key, 4, "regions", chunk=2)
    assert float(plain["variance"].max()) > 1e-4  # the passes differ: there is dropout to share around
    for stat in plain:
        np.testing.assert_allclose(np.asarray(shared[stat]), np.asarray(plain[stat]), atol=2e-6, err_msg=stat)


def test_softmax_targets_and_models_without_a_split():
    model, x = tiny("unet", out=4), inputs("unet")
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    plain = mc_dropout(graphdef, params, stats, x, jax.random.key(0), 3, "classes")
    shared = mc_dropout_shared(graphdef, params, stats, x, jax.random.key(0), 3, "classes")
    assert shared["entropy"].shape == x.shape[:-1]
    for stat in plain:
        np.testing.assert_allclose(np.asarray(shared[stat]), np.asarray(plain[stat]), atol=2e-6, err_msg=stat)
    from tests.explain.test_faithfulness import pixel_model  # no encode/decode: whole passes
    graphdef, params, stats = nnx.split(pixel_model(), nnx.Param, nnx.BatchStat)
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(mc_dropout_shared(graphdef, params, stats, images, jax.random.key(0), 3, "wt")["mean"]),
        np.asarray(mc_dropout(graphdef, params, stats, images, jax.random.key(0), 3, "wt")["mean"]))
