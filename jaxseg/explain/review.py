"""Slices to review first: where in the volume the model is unsure about the tumor.

A reader checking a segmentation wants the slices where it is most likely wrong. Uncertainty far
from any predicted tumor (noise at the edge of the brain) matters less than uncertainty on the
tumor's border, so the score of axial slice ``z`` is the **uncertainty mass inside and around the
predicted tumor**:

    score[z] = sum of uncertainty over the voxels of slice z within ``margin`` voxels of the
               predicted tumor (a cube dilation, Chebyshev distance <= margin, in 3D)

Slices are ranked by score (ties: the lower index first); slices with zero score are left out.
A missed tumor far from every predicted voxel is not seen by this ranking; with ``margin`` of a
few voxels it does see under- and over-segmented borders, which is where the errors are.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    """Cube dilation of a bool ``mask`` (any rank) by ``margin`` voxels along every axis: a voxel
    is set iff some set voxel is within Chebyshev distance ``margin``. Separable (one axis at a
    time); nothing wraps around the edges."""
    out = np.asarray(mask, bool).copy()
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    for axis in range(out.ndim):
        grown = out.copy()
        n = out.shape[axis]
        for shift in range(1, min(margin, n - 1) + 1):
            lead = [slice(None)] * out.ndim
            lag = [slice(None)] * out.ndim
            lead[axis], lag[axis] = slice(shift, None), slice(None, n - shift)
            grown[tuple(lead)] |= out[tuple(lag)]
            grown[tuple(lag)] |= out[tuple(lead)]
        out = grown
    return out


def slices_to_review(uncertainty: np.ndarray, predicted: np.ndarray, *, margin: int = 3, top: int = 10,
                     axis: int = 2) -> list[dict[str, Any]]:
    """The slices to review first (module docstring), best first.

    Args:
      uncertainty: ``(X, Y, Z)`` float >= 0 (the MC-dropout entropy of the whole tumor, say).
      predicted: ``(X, Y, Z)`` bool predicted tumor.
      margin: voxels around the tumor that count (3 = a 7-voxel cube).
      top: at most this many slices.
      axis: the slice axis (2 = axial in the canonical RAS grid).
    Returns:
      ``[{'slice': z, 'score': mass, 'share': mass / total mass near the tumor}]`` (int, float,
      float), at most ``top``, by decreasing score; empty without predicted tumor. The JSON value
      of ``review_slices``.
    """
    uncertainty = np.asarray(uncertainty, np.float64)
    predicted = np.asarray(predicted, bool)
    if uncertainty.shape != predicted.shape:
        raise ValueError(f"uncertainty {uncertainty.shape} and prediction {predicted.shape} differ in shape")
    near = dilate(predicted, margin)
    other = tuple(a for a in range(uncertainty.ndim) if a != axis % uncertainty.ndim)
    scores = np.where(near, uncertainty, 0.0).sum(axis=other)
    total = scores.sum()
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > 0][:top]
    return [{"slice": int(z), "score": float(scores[z]), "share": float(scores[z] / total)} for z in order]
