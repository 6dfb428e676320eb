"""Segmentation metrics, kept as sums (CONTRIBUTING.md, habit 6).

Overlap metrics are accumulated as confusion sums ``tp, fp, fn`` per channel over any number of
batches, devices and hosts, and turned into scores once (:func:`scores_from_sums`), so a dataset
Dice is the Dice of the whole dataset and not a mean of batch Dices.

Surface metrics of whole volumes (HD95, lesion-wise scores) are :mod:`jaxseg.eval.surface`.

Region conventions (docs/architecture.md): internal classes 0 background, 1 NCR, 2 ED, 3 ET;
regions WT = {1, 2, 3}, TC = {1, 3}, ET = {3}; target kinds ``wt`` (1 sigmoid channel),
``regions`` (WT, TC, ET sigmoid channels) and ``classes`` (4 softmax channels).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data.brats import REGIONS  # one definition, with the other BraTS conventions


def _xp(x):
    """numpy for numpy inputs (host-side evaluation), jax.numpy otherwise (jitted steps)."""
    return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def region_names(target_kind: str) -> tuple[str, ...]:
    """The regions a target kind can be scored on: ``('WT',)`` for wt, WT/TC/ET otherwise."""
    if target_kind == "wt":
        return ("WT",)
    if target_kind in ("regions", "classes"):
        return REGIONS
    raise ValueError(f"unknown target kind {target_kind!r}")


def predictions_from_logits(logits, target_kind: str):
    """Binary predictions ``bool (..., K)`` from logits ``(..., K)``.

    ``wt`` / ``regions``: sigmoid > 0.5, i.e. logit > 0 (exact, no overflow). ``classes``: the
    one-hot of the argmax over K.
    """
    xp = _xp(logits)
    if target_kind in ("wt", "regions"):
        return logits > 0
    if target_kind == "classes":
        k = logits.shape[-1]
        winner = xp.argmax(logits, axis=-1)[..., None]
        return winner == xp.arange(k).reshape((1,) * (logits.ndim - 1) + (k,))
    raise ValueError(f"unknown target kind {target_kind!r}")


def region_masks_from_prediction(pred, target_kind: str):
    """BraTS regions ``bool (..., R)`` from a prediction ``bool (..., K)``.

    ``wt`` -> (WT,); ``regions`` -> the channels themselves (WT, TC, ET); ``classes`` (one-hot
    of 0 background, 1 NCR, 2 ED, 3 ET) -> WT = NCR|ED|ET, TC = NCR|ET, ET = ET.
    """
    xp = _xp(pred)
    if target_kind in ("wt", "regions"):
        return pred
    if target_kind == "classes":
        ncr, ed, et = pred[..., 1], pred[..., 2], pred[..., 3]
        return xp.stack([ncr | ed | et, ncr | et, et], axis=-1)
    raise ValueError(f"unknown target kind {target_kind!r}")


def region_masks_from_logits(logits, target_kind: str):
    """``region_masks_from_prediction(predictions_from_logits(logits))``: bool (..., R)."""
    return region_masks_from_prediction(predictions_from_logits(logits, target_kind), target_kind)


def region_masks_from_classes(classes, target_kind: str):
    """BraTS regions ``bool (..., R)`` from internal classes ``(...)`` uint8 (0-3).

    ``wt`` -> (WT,); ``regions`` and ``classes`` -> (WT, TC, ET).
    """
    xp = _xp(classes)
    wt = classes > 0
    if target_kind == "wt":
        return wt[..., None]
    if target_kind in ("regions", "classes"):
        et = classes == 3
        return xp.stack([wt, (classes == 1) | et, et], axis=-1)
    raise ValueError(f"unknown target kind {target_kind!r}")


def confusion_sums(pred, ref, valid=None) -> dict:
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
    """Dice, IoU, precision and recall ``float64 (K,)`` from confusion sums (numpy).

    Convention for empty masks: where prediction and reference are both empty (tp = fp = fn =
    0) every score is 1.0 (a correct "no tumor"). A 0/0 that is not both-empty (precision with
    an empty prediction, recall with an empty reference) is 0.0, so an empty versus non-empty
    pair scores 0 on all four.
    """
    tp, fp, fn = (np.asarray(jax.device_get(sums[k]), np.float64) for k in ("tp", "fp", "fn"))
    both_empty = (tp + fp + fn) == 0

    def ratio(numerator, denominator):
        safe = np.where(denominator > 0, denominator, 1.0)
        return np.where(denominator > 0, numerator / safe, np.where(both_empty, 1.0, 0.0))

    return {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}
