"""Losses against independent numpy formulas, the valid-sample mask and the bf16 path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import JaxsegError
from jaxseg.train.losses import DICE_SMOOTH, LOSSES, loss_fn

SHAPE = (3, 6, 5, 2)  # B, H, W, K


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_dice_loss(p, t):
    dices = [(2 * (p[..., k] * t[..., k]).sum() + DICE_SMOOTH) / (p[..., k].sum() + t[..., k].sum() + DICE_SMOOTH)
             for k in range(p.shape[-1])]
    return 1.0 - np.mean(dices)


def np_bce(x, t):
    p = sigmoid(x)
    return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))


def np_focal(x, t, alpha=0.25, gamma=2.0):
    p = sigmoid(x)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return np.mean(alpha_t * (1 - p_t) ** gamma * ce)


def np_loss(name, x, t):
    if name == "bce":
        return np_bce(x, t)
    if name == "dice":
        return np_dice_loss(sigmoid(x), t)
    if name == "bce_dice":
        return np_bce(x, t) + np_dice_loss(sigmoid(x), t)
    if name == "dice_focal":
        return np_dice_loss(sigmoid(x), t) + np_focal(x, t)
    if name == "ce_dice":
        p = softmax(x)
        return np.mean(-(t * np.log(p)).sum(axis=-1)) + np_dice_loss(p, t)
    raise AssertionError(name)


def example(name, seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, shape)
    if name == "ce_dice":
        target = np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
    else:
        target = (rng.random(shape) < 0.4).astype(np.float64)
    return logits, target


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_matches_numpy(name):
    logits, target = example(name)
    value = loss_fn(name)(jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.float32))
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), np_loss(name, logits, target), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_valid_mask_drops_padded_samples(name):
    logits, target = example(name, seed=1)
    valid = jnp.asarray([True, False, True])
    value = loss_fn(name)(jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.float32), valid)
    kept = [0, 2]
    np.testing.assert_allclose(float(value), np_loss(name, logits[kept], target[kept]), rtol=1e-5)
    nothing = loss_fn(name)(jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.float32),
                            jnp.zeros(3, bool))
    assert float(nothing) == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_logits_compute_in_float32_and_have_gradients(name):
    logits, target = example(name, seed=2)
    logits16 = jnp.asarray(logits, jnp.bfloat16)
    fn = jax.jit(jax.value_and_grad(loss_fn(name)))
    value, grad = fn(logits16, jnp.asarray(target, jnp.float32))
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(value), np_loss(name, np.asarray(logits16, np.float64), target), rtol=1e-4)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_perfect_prediction_has_small_dice_loss():
    _, target = example("dice", seed=3)
    logits = jnp.asarray(np.where(target > 0, 30.0, -30.0), jnp.float32)
    assert float(loss_fn("dice")(logits, jnp.asarray(target, jnp.float32))) < 1e-6
    # An empty channel predicted empty scores ~1 thanks to the smoothing, not 0/0.
    empty = jnp.zeros((1, 4, 4, 1))
    assert float(loss_fn("dice")(jnp.full((1, 4, 4, 1), -30.0), empty)) < 1e-3


def test_unknown_loss():
    with pytest.raises(JaxsegError, match="train.loss"):
        loss_fn("hinge")
