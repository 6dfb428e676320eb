"""Segmentation losses: ``loss_fn(name)(logits, target, valid=None) -> scalar float32``.

All losses take channel-last ``(B, H, W, K)`` logits (any float dtype; the arithmetic is float32)
and float targets of the same shape, and return one float32 scalar:

- ``bce``: sigmoid binary cross-entropy with logits, mean over samples, pixels and channels.
- ``dice``: soft Dice on sigmoid probabilities, one Dice per channel pooled over the whole batch
  (not per image), ``1 - mean over channels``, smoothing ``DICE_SMOOTH`` in numerator and
  denominator so an empty channel predicted empty scores ~1 instead of 0/0.
- ``bce_dice``: ``bce + dice``.
- ``dice_focal``: ``dice + sigmoid focal loss`` (gamma 2, alpha 0.25, optax), mean like bce.
- ``ce_dice``: softmax cross-entropy (target one-hot over K classes) + soft Dice on softmax
  probabilities over all K channels, background included.

``valid`` is an optional ``(B,)`` bool: samples with False (batch padding) contribute nothing to
any term; with no valid sample the loss is 0. Pixel-mean terms average over valid samples, so
``loss * valid.sum()`` is the sum a data-parallel reduction needs.

Deep supervision (:func:`deep_supervision_loss`, ``model.deep_supervision``): the same loss on
each auxiliary output against the target average-pooled to its size (soft targets: the share of
each region or class in the pooled block), weighted ``1 / 2**level`` with the main output's
weight 1, divided by the weights' sum (nnU-Net's scheme).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxseg.errors import JaxsegError

DICE_SMOOTH = 1e-5
FOCAL_GAMMA = 2.0
FOCAL_ALPHA = 0.25

Loss = Callable[..., jax.Array]


def _sample_weights(batch: int, valid: jax.Array | None) -> jax.Array:
    """``(B,)`` float32 weights: 1 for real samples, 0 for padding."""
    if valid is None:
        return jnp.ones((batch,), jnp.float32)
    return valid.astype(jnp.float32).reshape(batch)


def _masked_pixel_mean(per_element: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean of ``(B, ..., K)`` values over valid samples, all pixels and channels."""
    per_sample = per_element.reshape(per_element.shape[0], -1).mean(axis=1)
    return (per_sample * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def soft_dice_loss(probs: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """``1 - mean_k (2 sum(p t) + s) / (sum p + sum t + s)``, sums over valid samples and pixels.

    Args:
      probs, target: ``(B, ..., K)`` float32 in [0, 1].
      weights: ``(B,)`` float32 sample weights (0 drops a sample).
    """
    w = weights.reshape((-1,) + (1,) * (probs.ndim - 1))
    axes = tuple(range(probs.ndim - 1))
    intersection = (probs * target * w).sum(axis=axes)
    denominator = (probs * w).sum(axis=axes) + (target * w).sum(axis=axes)
    dice = (2.0 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    return 1.0 - dice.mean()


def bce(logits: jax.Array, target: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    logits, target = logits.astype(jnp.float32), target.astype(jnp.float32)
    weights = _sample_weights(logits.shape[0], valid)
    return _masked_pixel_mean(optax.sigmoid_binary_cross_entropy(logits, target), weights)


def dice(logits: jax.Array, target: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    logits, target = logits.astype(jnp.float32), target.astype(jnp.float32)
    weights = _sample_weights(logits.shape[0], valid)
    return soft_dice_loss(jax.nn.sigmoid(logits), target, weights)


def bce_dice(logits: jax.Array, target: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    return bce(logits, target, valid) + dice(logits, target, valid)


def dice_focal(logits: jax.Array, target: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    logits, target = logits.astype(jnp.float32), target.astype(jnp.float32)
    weights = _sample_weights(logits.shape[0], valid)
    focal = optax.sigmoid_focal_loss(logits, target, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA)
    return dice(logits, target, valid) + _masked_pixel_mean(focal, weights)


def ce_dice(logits: jax.Array, target: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    logits, target = logits.astype(jnp.float32), target.astype(jnp.float32)
    weights = _sample_weights(logits.shape[0], valid)
    # softmax_cross_entropy sums over K, so the mean is per pixel (not per pixel and channel).
    ce = optax.softmax_cross_entropy(logits, target)[..., None]
    return _masked_pixel_mean(ce, weights) + soft_dice_loss(jax.nn.softmax(logits, axis=-1), target, weights)


def pool_target(target: jax.Array, factor: int) -> jax.Array:
    """``(B, *spatial, K)`` averaged over ``factor``-wide blocks of every spatial axis (each size
    divisible by ``factor``): ``(B, *spatial / factor, K)``."""
    if factor == 1:
        return target
    batch, *spatial, channels = target.shape
    blocked = target.reshape(batch, *[n for size in spatial for n in (size // factor, factor)], channels)
    return blocked.mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def deep_supervision_loss(loss: Loss, logits: jax.Array, auxiliary: list[jax.Array], target: jax.Array,
                          valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(objective, main)``: ``main = loss(logits, target)``; the objective adds ``loss`` of
    ``auxiliary[i - 1]`` (level ``i``, ``1 / 2**i`` of the size) against the target pooled to it,
    weights ``1 / 2**i`` (1 for the main output), divided by their sum. No auxiliary outputs:
    the objective is ``main``."""
    main = loss(logits, target, valid)
    if not auxiliary:
        return main, main
    weights = [2.0 ** -level for level in range(len(auxiliary) + 1)]
    total = main * weights[0]
    for level, aux in enumerate(auxiliary, start=1):
        factor = target.shape[1] // aux.shape[1]
        if factor != 2 ** level:
            raise ValueError(f"auxiliary output {level} has shape {aux.shape}; the target {target.shape} "
                             f"needs 1/{2 ** level} of its size")
        total = total + weights[level] * loss(aux, pool_target(target.astype(jnp.float32), factor), valid)
    return total / sum(weights), main


LOSSES: dict[str, Loss] = {"bce": bce, "dice": dice, "bce_dice": bce_dice, "dice_focal": dice_focal,
                           "ce_dice": ce_dice}


def loss_fn(name: str) -> Loss:
    """The loss called ``name`` (see the module docstring): ``(logits, target, valid=None) -> ()``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise JaxsegError(f"train.loss: unknown loss {name!r} (known: {', '.join(LOSSES)})") from None
