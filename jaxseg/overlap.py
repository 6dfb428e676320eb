"""Overlap scores (Dice, IoU, precision, recall): the one Dice of jaxseg and its empty-mask convention.

Every Dice in jaxseg (training and validation metrics, ``evaluate``, the deletion/insertion
curves, the report's scores and per-slice tiles) comes from here, so all of them agree.

**Convention (the BraTS evaluation's):** where prediction and reference are both empty, Dice is
1.0 (a correct "no tumor"); an empty versus non-empty pair scores 0.0. The same holds for IoU;
precision with an empty prediction and recall with an empty reference are 1.0 if the other mask
is empty too, else 0.0. A caller that must show "nothing to score" differently (the report's
per-slice tiles say "no tumor") asks whether the masks are empty, not whether Dice is special.

Two forms, one convention:

- :func:`dice` of two masks, numpy (host-side reports, evaluation) or jax.numpy (inside a jitted
  function), over all axes or the ones given (per sample, per slice);
- sums (CONTRIBUTING.md, habit 6): :func:`confusion_sums` per batch, added up over batches,
  devices and hosts, then :func:`scores_from_sums` once, so a dataset Dice is the Dice of the
  whole dataset and not a mean of batch Dices. :func:`dice_from_counts` is the shared rule.

This module imports nothing of jaxseg: every layer (data, train, explain, report, serve) may use it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
    """numpy for numpy inputs (host-side evaluation), jax.numpy otherwise (jitted steps)."""
    return np if isinstance(x, (np.ndarray, np.generic, bool, int, float)) else jnp


def dice_from_counts(intersection: Any, total: Any) -> Any:
    """Dice ``2 |P & R| / (|P| + |R|)`` from the counts, 1.0 where ``total`` is 0 (both empty).

    Args:
      intersection: ``|P & R|``, any shape, integer or float (numpy or jax).
      total: ``|P| + |R|``, the same shape.
    Returns:
      float64 for numpy inputs, float32 for jax inputs; the broadcast shape of the two.
    """
    xp = _xp(total)
    dtype = np.float64 if xp is np else jnp.float32
    intersection, total = xp.asarray(intersection, dtype), xp.asarray(total, dtype)
    safe = xp.where(total > 0, total, 1.0)
    return xp.where(total > 0, 2.0 * intersection / safe, 1.0)


def dice(pred: Any, ref: Any, axis: int | tuple[int, ...] | None = None) -> Any:
    """Dice of two masks, reduced over ``axis`` (all axes when None); 1.0 where both are empty.

    Args:
      pred, ref: bool (or 0/1) arrays of one shape, numpy or jax.
      axis: the axes to sum over; the others stay (``axis=(1, 2)`` of ``(B, H, W)`` gives ``(B,)``
        per-sample Dice; ``axis=(0, 1)`` of ``(X, Y, Z)`` one Dice per slice along z).
    Returns:
      float64 (numpy: a Python float when reduced to a scalar) or float32 (jax) of the kept axes.
    """
    xp = _xp(pred)
    pred, ref = xp.asarray(pred).astype(bool), xp.asarray(ref).astype(bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    dtype = np.int64 if xp is np else jnp.int32
    intersection = (pred & ref).sum(axis=axis, dtype=dtype)
    total = pred.sum(axis=axis, dtype=dtype) + ref.sum(axis=axis, dtype=dtype)
    score = dice_from_counts(intersection, total)
    return float(score) if xp is np and np.ndim(score) == 0 else score


def confusion_sums(pred: Any, ref: Any, valid: Any = None) -> dict:
    """True positives, false positives and false negatives per channel.

    Args:
      pred, ref: ``bool (B, ..., K)``.
      valid: optional ``bool (B,)``; samples with False (batch padding) are not counted.

    Returns:
      ``{'tp', 'fp', 'fn'}``, each ``(K,)``: int32 for jax inputs (jittable; exact up to 2**31
      per call, so accumulate across batches on the host in int64), int64 for numpy inputs.
      Sums over batches add up to the sums of the concatenated batches.
    """
    xp = _xp(pred)
    pred = pred.astype(bool)
    ref = ref.astype(bool)
    if valid is not None:
        weight = valid.astype(bool).reshape((pred.shape[0],) + (1,) * (pred.ndim - 1))
        pred, ref = pred & weight, ref & weight
    axes = tuple(range(pred.ndim - 1))
    dtype = np.int64 if xp is np else jnp.int32
    return {"tp": (pred & ref).sum(axis=axes, dtype=dtype),
            "fp": (pred & ~ref).sum(axis=axes, dtype=dtype),
            "fn": (~pred & ref).sum(axis=axes, dtype=dtype)}


def scores_from_sums(sums: dict) -> dict[str, np.ndarray]:
    """Dice, IoU, precision and recall ``float64 (K,)`` from confusion sums (numpy, on the host).

    Dice is :func:`dice_from_counts` ``(tp, 2 tp + fp + fn)``. Where prediction and reference are
    both empty (tp = fp = fn = 0) every score is 1.0; a 0/0 that is not both-empty (precision with
    an empty prediction, recall with an empty reference) is 0.0, so an empty versus non-empty
    pair scores 0 on all four.
    """
    tp, fp, fn = (np.asarray(jax.device_get(sums[k]), np.float64) for k in ("tp", "fp", "fn"))
    both_empty = (tp + fp + fn) == 0

    def ratio(numerator, denominator):
        safe = np.where(denominator > 0, denominator, 1.0)
        return np.where(denominator > 0, numerator / safe, np.where(both_empty, 1.0, 0.0))

    return {"dice": dice_from_counts(tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}
