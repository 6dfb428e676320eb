"""Whole-volume inference of 3D models by sliding windows (as MONAI's ``sliding_window_inference``
and nnU-Net's predictor).

A volume ``(X, Y, Z, C)`` is covered by windows of the training patch size on a regular grid
whose stride is ``window * (1 - overlap)`` (the last window of each axis is moved back to end at
the border, so every voxel is covered and no window leaves the volume). Each window's
probabilities are weighted by an importance map and accumulated; the result is the weighted
mean per voxel. The Gaussian map (sigma = window / 8, as nnU-Net and MONAI) trusts window
centres more than window borders, where a convolutional network sees zero padding instead of
context. Volumes smaller than the window on an axis are zero-padded (evenly) to the window and
cropped back.

Windows go to the model ``window_batch`` at a time through one jitted forward (compiled once:
every batch has the window's shape); accumulation is numpy on the host, which needs no
compilation per volume shape. With ``tta_flips`` each window is also passed flipped along
every subset of the three axes (8 passes) and the probabilities, flipped back, are averaged.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.infer.chunks import call_padded

BLENDS = ("gaussian", "constant")
GAUSSIAN_SIGMA_SCALE = 1 / 8  # sigma = window * 1/8 (nnU-Net, MONAI's sigma_scale=0.125)
# nnU-Net clips the map's smallest values to its smallest non-zero value so that no voxel is
# divided by ~0; our analytical map is never 0, but its corners are ~e^-24 at sigma = w/8, so
# keep a floor for voxels covered only by window corners (possible at overlap 0).
MIN_WEIGHT = 1e-3

ProbsFn = Callable[[jax.Array], jax.Array]  # (B, *window, C) float32 -> (B, *window, K) float32


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """First voxel of every window along one axis of ``size >= window`` voxels.

    Stride ``max(1, int(window * (1 - overlap)))``; the last start is ``size - window`` (MONAI's
    scan intervals).
    """
    if size < window:
        raise ValueError(f"axis of {size} voxels is smaller than the window {window}; pad it first")
    stride = max(1, int(window * (1 - overlap)))
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


def window_origins(shape: Sequence[int], window: Sequence[int], overlap: float) -> np.ndarray:
    """``(N, 3)`` int64: the first voxel of every window covering a volume of ``shape (X, Y, Z)``."""
    axes = [window_starts(int(n), int(w), overlap) for n, w in zip(shape, window)]
    return np.asarray(list(itertools.product(*axes)), dtype=np.int64).reshape(-1, len(shape))


def importance_map(window: Sequence[int], blend: str) -> np.ndarray:
    """``window``-shaped float32 weights, maximum 1: a separable Gaussian centred on the window's
    centre with sigma = edge / 8 per axis (floored at ``MIN_WEIGHT``), or all ones."""
    if blend == "constant":
        return np.ones(tuple(window), np.float32)
    if blend != "gaussian":
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}; got {blend!r}")
    weights = np.ones((), np.float64)
    for w in window:
        x = np.arange(w) - (w - 1) / 2
        sigma = w * GAUSSIAN_SIGMA_SCALE
        weights = np.multiply.outer(weights, np.exp(-x ** 2 / (2 * sigma ** 2)))
    weights /= weights.max()
    return np.maximum(weights, MIN_WEIGHT).astype(np.float32)


def with_flip_tta(probs_fn: ProbsFn, spatial_axes: Sequence[int] = (1, 2, 3)) -> ProbsFn:
    """``probs_fn`` averaged over flips of the window batch along every subset of ``spatial_axes``
    (2**3 = 8 passes for a volume); traceable, so it can sit inside ``jax.jit``."""
    def flipped(x: jax.Array) -> jax.Array:
        total = None
        subsets = [s for r in range(len(spatial_axes) + 1) for s in itertools.combinations(spatial_axes, r)]
        for axes in subsets:
            xs = jnp.flip(x, axes) if axes else x
            p = probs_fn(xs)
            p = jnp.flip(p, axes) if axes else p
            total = p if total is None else total + p
        return total / len(subsets)
    return flipped


def sliding_window_probabilities(forward: ProbsFn, image: np.ndarray, window: int | Sequence[int], *,
                                 overlap: float = 0.5, blend: str = "gaussian", window_batch: int = 2,
                                 batch_multiple: int = 1) -> np.ndarray:
    """Weighted mean of window probabilities over a whole volume: :func:`sliding_window_mean`
    of a ``forward(windows)`` that needs no batch number."""
    return sliding_window_mean(lambda windows, batch_number: forward(windows), image, window, overlap=overlap,
                               blend=blend, window_batch=window_batch, batch_multiple=batch_multiple)


def sliding_window_mean(forward: Callable[[np.ndarray, int], jax.Array], image: np.ndarray,
                        window: int | Sequence[int], *, overlap: float = 0.5, blend: str = "gaussian",
                        window_batch: int = 2, batch_multiple: int = 1) -> np.ndarray:
    """Weighted mean of per-window outputs over a whole volume.

    Args:
      forward: ``(windows (B, *window, C) float32 numpy, batch_number int)`` -> ``(B, *window, K)``
        outputs, ideally jitted (:func:`with_flip_tta` inside for test-time flips). ``B`` is
        always the padded batch; batch ``n`` (0, 1, ...) holds the same windows on every call, so
        a random forward pass can take its key from the number (``fold_in(key, n)``).
      image: ``(X, Y, Z, C)`` float32 (preprocessed, e.g. the brain box of
        ``patches.prepare_volume_3d``).
      window: window edge (an int for a cube) or ``(wx, wy, wz)``.
      overlap: in [0, 1): share of a window's edge shared with its neighbour.
      blend: ``gaussian`` or ``constant`` (plain mean).
      window_batch: windows per forward pass; the last batch is padded with zero windows whose
        output is discarded.
      batch_multiple: round the batch up to a multiple of this (the number of devices it is
        split over).

    Returns:
      ``(X, Y, Z, K)`` float32, the weighted mean of the windows' outputs.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1); got {overlap}")
    image = np.asarray(image, np.float32)
    spatial = image.shape[:3]
    window = (int(window),) * 3 if np.isscalar(window) else tuple(int(w) for w in window)
    # Pad (evenly, zeros = normalised background) where the volume is smaller than the window.
    before = [max(w - n, 0) // 2 for n, w in zip(spatial, window)]
    after = [max(w - n, 0) - b for n, w, b in zip(spatial, window, before)]
    padded = np.pad(image, list(zip(before, after)) + [(0, 0)]) if any(before + after) else image
    origins = window_origins(padded.shape[:3], window, overlap)
    weights = importance_map(window, blend)
    batch = -(-max(1, window_batch) // batch_multiple) * batch_multiple

    accumulated = None
    norm = np.zeros(padded.shape[:3], np.float32)
    for number, first in enumerate(range(0, len(origins), batch)):
        chunk = origins[first:first + batch]
        windows = np.stack([padded[o[0]:o[0] + window[0], o[1]:o[1] + window[1], o[2]:o[2] + window[2]]
                            for o in chunk])
        # Zero windows fill the last batch; the forward hears the batch's number.
        probs = call_padded(lambda full, n=number: forward(full, n), batch, windows).astype(np.float32, copy=False)
        if accumulated is None:
            accumulated = np.zeros(padded.shape[:3] + probs.shape[-1:], np.float32)
        for i, o in enumerate(chunk):
            where = (slice(o[0], o[0] + window[0]), slice(o[1], o[1] + window[1]), slice(o[2], o[2] + window[2]))
            accumulated[where] += probs[i] * weights[..., None]
            norm[where] += weights
    out = accumulated / norm[..., None]
    crop = tuple(slice(b, b + n) for b, n in zip(before, spatial))
    return np.ascontiguousarray(out[crop])
