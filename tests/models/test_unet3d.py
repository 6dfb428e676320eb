"""The 3D U-Net: shapes, size, registry, dropout semantics, Grad-CAM hooks, input checks.

Real computations use the tiny model (features (4, 8), 16^3 volumes); shape-only checks run
abstractly with ``nnx.eval_shape``.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg import config
from jaxseg.models.registry import TINY_FEATURES, build_model, count_params, spatial_dims
from jaxseg.models.unet3d import UNet3D

SIZE = 16


def build_tiny(in_channels: int = 2, out_channels: int = 3, dropout: float = 0.0, seed: int = 0) -> UNet3D:
    """The tiny 3D U-Net with He-normal kernels drawn by numpy (no PRNG compilation)."""
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: UNet3D(in_channels, out_channels, TINY_FEATURES, dropout, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        keys = [getattr(entry, "key", getattr(entry, "name", "")) for entry in path]
        name = [k for k in keys if isinstance(k, str) and k not in ("value", ".value")][-1]
        if name == "kernel":
            return jnp.asarray(rng.normal(0, math.sqrt(2 / math.prod(leaf.shape[:-1])), leaf.shape), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def volumes(channels=2, batch=2, seed=1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, SIZE, SIZE, SIZE, channels), jnp.float32)


@nnx.jit(static_argnames=("train",))
def forward(model, x, key=None, perturb=None, train=False):
    return model(x, train=train, dropout_key=key, perturb=perturb)


def test_output_and_activation_shapes():
    def run():
        return UNet3D(4, 3, (4, 8, 16), rngs=nnx.Rngs(0))(jnp.zeros((2, 16, 24, 32, 4)))

    logits, acts = nnx.eval_shape(run)
    assert logits.shape == (2, 16, 24, 32, 3) and logits.dtype == jnp.float32
    assert set(acts) == {"enc0", "enc1", "enc2", "dec1", "dec0"}
    for name, channels, level in [("enc0", 4, 0), ("enc1", 8, 1), ("enc2", 16, 2), ("dec1", 8, 1), ("dec0", 4, 0)]:
        f = 2 ** level
        assert acts[name].shape == (2, 16 // f, 24 // f, 32 // f, channels), name


def test_parameter_count_by_hand():
    features = (16, 32, 64, 128, 256)
    model = nnx.eval_shape(lambda: UNet3D(4, 3, features, rngs=nnx.Rngs(0)))
    # bias-free 3x3x3 convs + batch-norm scale/bias; 2x2x2 transposed convs with bias; 1x1x1 head.
    expected, previous = 0, 4
    for f in features:
        expected += 27 * previous * f + 2 * f + 27 * f * f + 2 * f
        previous = f
    for lo, hi in zip(features[:-1], features[1:]):
        expected += 8 * hi * lo + lo + 27 * 2 * lo * lo + 2 * lo + 27 * lo * lo + 2 * lo
    expected += 3 * features[0] + 3
    assert count_params(model) == expected


def test_registry_builds_unet3d_from_config():
    cfg = config.load(None, ["model.name=unet3d", "model.features=[4, 8]", "data.patch_size=16",
                             "data.target=\"classes\"", "train.loss=ce_dice", "model.dropout=0.2"])
    assert spatial_dims(cfg) == 3
    model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    assert isinstance(model, UNet3D)
    assert (model.in_channels, model.out_channels, model.features, model.dropout_rate) == (4, 4, (4, 8), 0.2)
    assert model.encoders[0].conv1.kernel.shape == (3, 3, 3, 4, 4)


def test_dropout_only_with_a_key_and_differs_per_key():
    model = build_tiny(dropout=0.5)
    x = volumes()
    plain1, _ = forward(model, x)
    plain2, _ = forward(model, x)
    np.testing.assert_array_equal(np.asarray(plain1), np.asarray(plain2))
    a, _ = forward(model, x, jax.random.key(1))
    b, _ = forward(model, x, jax.random.key(2))
    a2, _ = forward(model, x, jax.random.key(1))
    assert not np.allclose(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(plain1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))


def test_zero_perturbation_is_identity_and_gradient_reaches_activation():
    model = build_tiny()
    x = volumes()
    logits, acts = forward(model, x)
    zeros = {"enc1": jnp.zeros_like(acts["enc1"])}
    perturbed, _ = forward(model, x, perturb=zeros)
    np.testing.assert_allclose(np.asarray(perturbed), np.asarray(logits), rtol=1e-6, atol=1e-6)
    graphdef, state = nnx.split(model)
    score = lambda p: nnx.merge(graphdef, state)(x, perturb=p)[0][..., 0].mean()
    grad = jax.jit(jax.grad(score))(zeros)
    assert grad["enc1"].shape == acts["enc1"].shape and float(jnp.abs(grad["enc1"]).sum()) > 0


def test_train_mode_updates_batch_statistics():
    model = build_tiny()
    before = np.asarray(model.encoders[0].norm1.mean[...])
    forward(model, volumes() + 3.0, train=True)
    assert not np.allclose(np.asarray(model.encoders[0].norm1.mean[...]), before)


@pytest.mark.parametrize("shape", [(1, 16, 16, 2), (1, 16, 16, 15, 2), (1, 16, 16, 16, 3)])
def test_bad_inputs_raise(shape):
    model = nnx.eval_shape(lambda: UNet3D(2, 3, TINY_FEATURES, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError):
        model(jnp.zeros(shape))
    with pytest.raises(ValueError):
        UNet3D(2, 3, (4,), rngs=nnx.Rngs(0))
