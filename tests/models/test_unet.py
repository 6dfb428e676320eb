"""The U-Net: shapes, size, batch-norm modes, dropout semantics, Grad-CAM hooks, bf16.

Every real computation uses the tiny model (features (4, 8), 32 x 32 inputs); shape-only checks
run abstractly with ``nnx.eval_shape`` so even the 7.76 M-parameter model costs nothing.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg import config
from jaxseg.models import layers
from jaxseg.models.registry import TINY_FEATURES, build_model, count_params
from jaxseg.models.unet import UNet

SIZE = 32


def build_tiny(seed: int = 0) -> UNet:
    """The tiny U-Net (in 2, out 3) with He-normal kernels drawn by numpy.

    Initialising through JAX's PRNG costs ~15 s of XLA compilation on a small CPU (one threefry
    program per parameter shape); what is tested here does not depend on the initialiser.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(2, 3, TINY_FEATURES, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        keys = [getattr(entry, "key", getattr(entry, "name", "")) for entry in path]
        name = [k for k in keys if isinstance(k, str) and k not in ("value", ".value")][-1]
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(0, math.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)  # running means

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def variant(model: UNet, **kwargs) -> UNet:
    """``model``'s parameters and statistics in a tiny U-Net built with other settings (dropout,
    dtype): the structure comes from an abstract build, so nothing is initialised or compiled."""
    graphdef = nnx.split(nnx.eval_shape(lambda: UNet(2, 3, TINY_FEATURES, rngs=nnx.Rngs(0), **kwargs)))[0]
    return nnx.merge(graphdef, nnx.state(model))


def images(channels=2, batch=2, seed=1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, SIZE, SIZE, channels), jnp.float32)


# One jitted forward for every test: calls with equal structure reuse one compilation.
@nnx.jit(static_argnames=("train",))
def forward(model, x, key=None, perturb=None, train=False):
    return model(x, train=train, dropout_key=key, perturb=perturb)


@pytest.fixture(scope="module")
def base() -> UNet:
    return build_tiny()


@pytest.fixture
def model(base) -> UNet:
    """A fresh copy of the tiny model (in 2, out 3, no dropout): tests may mutate it."""
    return nnx.clone(base)


@pytest.mark.parametrize("in_channels,out_channels", [(1, 1), (4, 1), (1, 3), (4, 4)])
def test_output_and_activation_shapes(in_channels, out_channels):
    def run():
        model = UNet(in_channels, out_channels, (4, 8, 16), rngs=nnx.Rngs(0))
        return model(jnp.zeros((3, SIZE, SIZE, in_channels)))

    logits, acts = nnx.eval_shape(run)
    assert logits.shape == (3, SIZE, SIZE, out_channels) and logits.dtype == jnp.float32
    # eval_shape returns the dict with sorted keys; forward order is activation_names.
    assert set(acts) == {"enc0", "enc1", "enc2", "dec1", "dec0"}
    for name, channels, size in [("enc0", 4, 32), ("enc1", 8, 16), ("enc2", 16, 8), ("dec1", 8, 16),
                                 ("dec0", 4, 32)]:
        assert acts[name].shape == (3, size, size, channels), name


def test_default_model_has_7_76_million_parameters():
    model = nnx.eval_shape(lambda: UNet(1, 1, rngs=nnx.Rngs(0)))
    # Hand count: bias-free 3x3 convs + batch-norm scale/bias, 2x2 transposed convs with bias,
    # 1x1 head with bias.
    features, expected, previous = (32, 64, 128, 256, 512), 0, 1
    for f in features:
        expected += 9 * previous * f + 2 * f + 9 * f * f + 2 * f
        previous = f
    for lo, hi in zip(features[:-1], features[1:]):
        expected += 4 * hi * lo + lo + 9 * 2 * lo * lo + 2 * lo + 9 * lo * lo + 2 * lo
    expected += features[0] + 1
    assert count_params(model) == expected == 7_762_465


def test_build_model_from_config():
    cfg = config.load(None, ["model.features=[4, 8]", "data.target=\"regions\"",
                             "data.modalities=[\"flair\", \"t1ce\"]", "train.precision=bfloat16"])
    model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    assert isinstance(model, UNet)
    assert (model.in_channels, model.out_channels, model.features) == (2, 3, (4, 8))
    assert model.encoders[0].conv1.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_state_is_exactly_params_and_batch_stats():
    """train/state.py splits the model into these two collections and nothing else."""
    model = nnx.eval_shape(lambda: UNet(1, 1, TINY_FEATURES, 0.3, rngs=nnx.Rngs(0)))
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    total = len(jax.tree.leaves(nnx.state(model)))
    assert len(jax.tree.leaves(params)) + len(jax.tree.leaves(stats)) == total
    assert len(jax.tree.leaves(stats)) == 2 * 2 * 3  # mean, var x 2 norms x 3 blocks


def test_train_mode_updates_batch_stats_and_eval_mode_does_not(model):
    x = images() * 3.0 + 1.0
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    forward(model, x, train=False)
    unchanged = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, unchanged)
    train_logits, _ = forward(model, x, train=True)
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    # Momentum 0.9 from a zero start: running mean = 0.1 * the batch mean of the first conv's
    # output (the conv has no bias, so that is a plain convolution of x).
    kernel = np.asarray(model.encoders[0].conv1.kernel[...])
    conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(after["encoders"][0]["norm1"]["mean"][...],
                               0.1 * np.asarray(conv).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    eval_logits, _ = forward(model, x, train=False)
    assert not np.allclose(train_logits, eval_logits)


def test_batch_norm_momentum_matches_pytorch():
    norm = nnx.eval_shape(lambda: layers.ConvBlock(1, 2, rngs=nnx.Rngs(0))).norm1
    assert norm.momentum == 0.9 and norm.epsilon == 1e-5


def test_dropout_active_only_with_a_key(base):
    dropout_model = variant(base, dropout=0.5)
    x = images()
    key_a, key_b = jax.random.key(10), jax.random.key(11)
    plain, plain_acts = forward(dropout_model, x)
    again, _ = forward(dropout_model, x)
    np.testing.assert_array_equal(plain, again)
    a1, acts_a = forward(dropout_model, x, key_a)
    a2, _ = forward(dropout_model, x, key_a)
    b, _ = forward(dropout_model, x, key_b)
    np.testing.assert_array_equal(a1, a2)  # pure in the key
    assert not np.allclose(a1, plain) and not np.allclose(a1, b)  # MC dropout: keys differ
    # Placement: nothing in the encoder level 0, dropout in the bottleneck block and decoder.
    np.testing.assert_array_equal(acts_a["enc0"], plain_acts["enc0"])
    assert not np.allclose(acts_a["enc1"], plain_acts["enc1"])


def test_zero_dropout_ignores_the_key(model):
    x = images()
    with_key, _ = forward(model, x, jax.random.key(3))
    without, _ = forward(model, x)
    np.testing.assert_array_equal(with_key, without)


def test_dropout_function_statistics():
    x = jnp.ones((200, 100))
    y = layers.dropout(x, 0.25, jax.random.key(0), 7)
    kept = np.asarray(y) > 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    other_site = layers.dropout(x, 0.25, jax.random.key(0), 8)
    assert not np.array_equal(np.asarray(other_site) > 0, kept)
    assert layers.dropout(x, 0.25, None, 0) is x


def test_max_pool_matches_reduce_window():
    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
    expected = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(layers.max_pool(x), expected)
    x3 = jax.random.normal(jax.random.key(1), (1, 4, 4, 4, 2))
    expected3 = jax.lax.reduce_window(x3, -jnp.inf, jax.lax.max, (1, 2, 2, 2, 1), (1, 2, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(layers.max_pool(x3), expected3)


def test_grad_wrt_perturbation_is_grad_wrt_activation(model):
    x = images(seed=5)
    _, acts = forward(model, x)
    zeros = {name: jnp.zeros_like(a) for name, a in acts.items()}

    @nnx.jit
    def grads_via_perturb(model, perturb):
        return jax.grad(lambda p: model(x, perturb=p)[0][..., 1].sum())(perturb)

    grads = grads_via_perturb(model, zeros)

    # Independent: split the network by hand after the bottleneck and differentiate the tail.
    @nnx.jit
    def grad_of_tail(model, bottleneck, skip):
        def tail(b):
            up = model.upsamplers[0](b)
            dec = model.decoders[0](jnp.concatenate([up, skip], axis=-1), train=False)
            return model.head(dec)[..., 1].sum()
        return jax.grad(tail)(bottleneck)

    expected = grad_of_tail(model, acts["enc1"], acts["enc0"])
    np.testing.assert_allclose(grads["enc1"], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(grads["enc1"])).max() > 0
    # The head is a 1x1 conv: d sum(logits[..., 1]) / d dec0 is its kernel column at every pixel.
    kernel = np.asarray(model.head.kernel[...])[0, 0, :, 1]
    np.testing.assert_allclose(grads["dec0"], np.broadcast_to(kernel, acts["dec0"].shape), rtol=1e-6)
    for name in acts:
        assert grads[name].shape == acts[name].shape

    # A non-zero perturbation is added: it moves the logits and shows in the activation.
    bump = {"enc1": jnp.ones_like(acts["enc1"])}
    moved, moved_acts = forward(model, x, perturb=bump)
    base, _ = forward(model, x)
    assert not np.allclose(moved, base)
    np.testing.assert_allclose(moved_acts["enc1"], acts["enc1"] + 1.0, rtol=1e-6)


def test_bad_perturbation_and_input_raise():
    model = nnx.eval_shape(lambda: UNet(2, 1, TINY_FEATURES, rngs=nnx.Rngs(0)))
    x = jnp.zeros((1, SIZE, SIZE, 2))
    with pytest.raises(ValueError, match="not activations"):
        nnx.eval_shape(lambda m: m(x, perturb={"bottleneck": jnp.zeros(1)}), model)
    with pytest.raises(ValueError, match="shape"):
        nnx.eval_shape(lambda m: m(x, perturb={"enc1": jnp.zeros((1, 2, 2, 8))}), model)
    with pytest.raises(ValueError, match="divisible"):
        nnx.eval_shape(lambda m: m(jnp.zeros((1, 31, 32, 2))), model)
    with pytest.raises(ValueError, match="input channels"):
        nnx.eval_shape(lambda m: m(jnp.zeros((1, SIZE, SIZE, 3))), model)


def test_bfloat16_compute_path(model):
    x = images()
    model32 = model
    model16 = variant(model, dtype=jnp.bfloat16)  # the same float32 parameters
    logits16, acts16 = forward(model16, x, train=True)
    logits32, _ = forward(model32, x, train=True)
    assert logits16.dtype == jnp.float32 and acts16["enc1"].dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model16, nnx.Param)))
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(nnx.state(model16, nnx.BatchStat)))
    assert np.all(np.isfinite(logits16))
    np.testing.assert_allclose(logits16, logits32, atol=0.1, rtol=0.05)
