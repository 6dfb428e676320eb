"""Calibration of predicted probabilities: reliability bins and the expected calibration error.

For a binary event (a voxel belongs to a region) with predicted probabilities ``p`` and outcomes
``y``, the ``n_bins`` equal-width bins ``[0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]`` each hold the
voxels whose ``p`` falls in them (``p = 1`` goes to the last bin). Per bin: the count, the mean
predicted probability (confidence) and the observed frequency of ``y`` (accuracy). The expected
calibration error (Naeini et al. 2015; Guo et al. 2017 for the binned form) is

    ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|

over the non-empty bins, on the voxels selected by ``mask``. Convention chosen here: the
probability of the positive event itself is binned (not max(p, 1 - p), the "top-label" form of
multi-class ECE), because each BraTS region is its own Bernoulli event with sigmoid outputs.
Over all brain voxels the ECE is dominated by easy background; :func:`relevant_mask` selects the
voxels that matter for a region (predicted above ``floor`` or inside the reference).
"""
from __future__ import annotations

import numpy as np


def reliability_bins(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
                     n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin ``count`` (int64), ``confidence`` and ``accuracy`` (float64; NaN for empty bins).

    Args:
      probs: predicted probabilities of one event, any shape, values in [0, 1].
      truth: the outcomes, same shape, bool or {0, 1}.
      mask: optional bool selection of the voxels to score, same shape.
      n_bins: number of equal-width bins over [0, 1].
    """
    probs = np.asarray(probs, np.float64)
    truth = np.asarray(truth).astype(bool)
    if probs.shape != truth.shape:
        raise ValueError(f"probabilities {probs.shape} and outcomes {truth.shape} differ in shape")
    if mask is not None:
        probs, truth = probs[mask], truth[mask]
    probs, truth = probs.ravel(), truth.ravel()
    index = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    total_p = np.bincount(index, weights=probs, minlength=n_bins)
    total_y = np.bincount(index, weights=truth.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "confidence": total_p / count, "accuracy": total_y / count}


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
                               n_bins: int = 15) -> float:
    """The binned ECE (module docstring) of ``probs`` against ``truth`` on ``mask``; NaN when the
    mask selects no voxel."""
    bins = reliability_bins(probs, truth, mask, n_bins)
    count = bins["count"]
    if count.sum() == 0:
        return float("nan")
    full = count > 0
    gaps = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float((count[full] * gaps).sum() / count.sum())


def relevant_mask(probs: np.ndarray, truth: np.ndarray, floor: float = 0.01,
                  within: np.ndarray | None = None) -> np.ndarray:
    """The voxels that matter for a region: predicted above ``floor`` or inside the reference
    (bool, same shape), optionally restricted to ``within`` (e.g. the brain)."""
    selected = (np.asarray(probs) > floor) | np.asarray(truth).astype(bool)
    return selected if within is None else selected & within
