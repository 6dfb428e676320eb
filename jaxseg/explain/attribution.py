"""Input attributions: occlusion sensitivity and integrated gradients.

Both explain the per-sample score of a :class:`~jaxseg.explain.gradcam.Target` (same targets as
Grad-CAM) in input space, as pure jitted functions of ``(params, batch_stats, images)``, for any
number of spatial axes. For ``score='predicted'`` the pixels are those the model predicts on the
*unperturbed* image, so an occluded or darkened input is scored on the same pixels.

- **Occlusion** (Zeiler & Fergus 2014): slide a ``patch``-sized cube of ``baseline`` (every
  channel) over the image with ``stride``; a pixel's sensitivity is the mean score drop
  ``score(x) - score(x occluded)`` over the patches that cover it. Positive = the score needs it.
- **Integrated gradients** (Sundararajan et al. 2017): ``(x - x') * mean_alpha grad score(x' +
  alpha (x - x'))`` over ``steps`` alphas in [0, 1] by the trapezoid rule, with ``x'`` the
  all-``baseline`` image. Completeness: the attributions add up to ``score(x) - score(x')`` (up
  to the quadrature error).

Patches and alphas each run as one ``jax.vmap`` (``jax.lax.map`` over ``chunk`` at a time when
memory asks for it).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseg.explain.gradcam import Target, masked_mean, resolve_kind, resolve_target, target_probability
from jaxseg.target import TargetKind


def _score_fn(graphdef, params, batch_stats, images, index, use_prediction, mask, target_kind):
    """``score(x) -> (B,)`` with the pixel set fixed on the unperturbed ``images``."""
    model = nnx.merge(graphdef, params, batch_stats)

    def probability(x):
        logits, _ = model(x, train=False)
        return target_probability(logits, target_kind, index)

    _, predicted = probability(images)
    pixels = mask & jnp.where(use_prediction, predicted, True)
    return lambda x: masked_mean(probability(x)[0], pixels)


def _map(fn, xs, chunk):
    return jax.lax.map(fn, xs, batch_size=chunk) if chunk else jax.vmap(fn)(xs)


def patch_starts(size: int, patch: int, stride: int) -> np.ndarray:
    """Start of every patch along one axis: every ``stride``, plus one flush with the end so the
    last pixels are covered too."""
    if not 1 <= patch <= size or stride < 1:
        raise ValueError(f"patch {patch} and stride {stride} do not fit an axis of {size} pixels")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return np.asarray(starts)


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind", "patch", "stride", "chunk"))
def _occlusion(graphdef, params, batch_stats, images, index, use_prediction, mask, baseline, *,
               target_kind, patch, stride, chunk):
    score = _score_fn(graphdef, params, batch_stats, images, index, use_prediction, mask, target_kind)
    spatial = images.shape[1:-1]
    # Per axis, a (patches, size) 0/1 matrix of which pixels each patch start covers; a patch is
    # the outer product of one row per axis, so maps are separable contractions, never (patches,
    # *spatial) arrays.
    covers = [jnp.asarray((np.arange(n)[None, :] >= s[:, None]) & (np.arange(n)[None, :] < s[:, None] + patch),
                          jnp.float32)
              for n, s in ((n, patch_starts(n, patch, stride)) for n in spatial)]
    grid = np.stack(np.meshgrid(*[np.arange(len(c)) for c in covers], indexing="ij"), -1).reshape(-1, len(spatial))
    reference = score(images)

    def drop(cell):
        inside = functools.reduce(jnp.logical_and, [
            (covers[d][cell[d]] > 0).reshape([-1 if a == d else 1 for a in range(len(spatial))])
            for d in range(len(spatial))])
        return reference - score(jnp.where(inside[None, ..., None], baseline, images))

    drops = _map(drop, jnp.asarray(grid, jnp.int32), chunk)  # (cells, B)
    drops = drops.T.reshape(images.shape[0], *[len(c) for c in covers])
    total, coverage = drops, jnp.ones(drops.shape[1:], jnp.float32)
    for c in covers:  # contract the first grid axis with its cover matrix; it moves to the back
        total = jnp.tensordot(total, c, axes=([1], [0]))
        coverage = jnp.tensordot(coverage, c, axes=([0], [0]))
    return total / coverage[None]


def occlusion(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
              target: Target | str = "mean", *, patch: int = 8, stride: int | None = None,
              baseline: float = 0.0, mask: Any = None, target_kind: str | TargetKind | None = None,
              chunk: int | None = None) -> jax.Array:
    """Occlusion sensitivity maps.

    Args:
      images: ``(B, *spatial, C)`` float32.
      target, mask, target_kind: as for :func:`jaxseg.explain.gradcam.gradcam`.
      patch: side of the occluding cube (pixels); stride: its step, default ``patch``.
      baseline: the value occluded pixels take in every channel.
      chunk: occlude at most this many patch positions at once; None = all in one vmap.
    Returns:
      ``(B, *spatial)`` float32 mean score drop (not normalised; it can be negative).
    """
    images = jnp.asarray(images, jnp.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images)
    index, use_prediction, mask = resolve_target(target, kind, mask, images.shape[:-1])
    return _occlusion(graphdef, params, batch_stats, images, jnp.int32(index), jnp.bool_(use_prediction),
                      mask, jnp.float32(baseline), target_kind=kind, patch=int(patch),
                      stride=int(stride or patch), chunk=chunk)


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind", "steps", "chunk"))
def _integrated_gradients(graphdef, params, batch_stats, images, index, use_prediction, mask, baseline, *,
                          target_kind, steps, chunk):
    score = _score_fn(graphdef, params, batch_stats, images, index, use_prediction, mask, target_kind)
    start = jnp.full_like(images, baseline)
    # Samples are independent (inference batch norm): the gradient of the sum is per sample.
    gradient = jax.grad(lambda x: score(x).sum())
    alphas = jnp.linspace(0.0, 1.0, steps)
    grads = _map(lambda a: gradient(start + a * (images - start)), alphas, chunk)  # (steps, B, ..., C)
    trapezoid = jnp.full((steps,), 1.0).at[0].set(0.5).at[-1].set(0.5) / (steps - 1)
    return (images - start) * jnp.tensordot(trapezoid, grads, axes=([0], [0]))


def integrated_gradients(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
                         target: Target | str = "mean", *, steps: int = 32, baseline: float = 0.0,
                         mask: Any = None, target_kind: str | TargetKind | None = None,
                         chunk: int | None = None) -> jax.Array:
    """Integrated gradients from the all-``baseline`` image.

    Args:
      images: ``(B, *spatial, C)`` float32.
      target, mask, target_kind: as for :func:`jaxseg.explain.gradcam.gradcam`.
      steps: alphas ``linspace(0, 1, steps)`` (at least 2), trapezoid rule.
      chunk: at most this many alphas at once; None = all in one vmap.
    Returns:
      ``(B, *spatial, C)`` float32 per-channel attributions; ``.sum(-1)`` is a pixel map (for
      :func:`jaxseg.explain.faithfulness.faithfulness`, say).
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    images = jnp.asarray(images, jnp.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images)
    index, use_prediction, mask = resolve_target(target, kind, mask, images.shape[:-1])
    return _integrated_gradients(graphdef, params, batch_stats, images, jnp.int32(index),
                                 jnp.bool_(use_prediction), mask, jnp.float32(baseline), target_kind=kind,
                                 steps=int(steps), chunk=chunk)


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind", "steps", "chunk"))
def _integrated_gradients_regions(graphdef, params, batch_stats, images, indices, baseline, *,
                                  target_kind, steps, chunk):
    model = nnx.merge(graphdef, params, batch_stats)

    def probability(x):  # (B, *spatial, R) probabilities and predicted masks of the R columns
        probs, predicted = target_kind.probability_table(model(x, train=False)[0].astype(jnp.float32))
        return jnp.take(probs, indices, axis=-1), jnp.take(predicted, indices, axis=-1)

    _, predicted = probability(images)
    pixels = jnp.moveaxis(predicted, -1, 0)  # (R, B, *spatial): each region's own pixels

    def scores(x):  # (R, B): each region's 'predicted' score (masked_mean over its pixels)
        probs = jnp.moveaxis(probability(x)[0], -1, 0)
        return jax.vmap(masked_mean)(probs, pixels)

    start = jnp.full_like(images, baseline)
    regions = indices.shape[0]

    def gradients(alpha):  # (R, B, *spatial, C): one forward pass, one backward pass per region
        _, pullback = jax.vjp(scores, start + alpha * (images - start))
        one_hot = jnp.eye(regions, dtype=jnp.float32)[:, :, None] * jnp.ones((1, 1, images.shape[0]), jnp.float32)
        return jax.vmap(lambda cotangent: pullback(cotangent)[0])(one_hot)

    grads = _map(gradients, jnp.linspace(0.0, 1.0, steps), chunk)  # (steps, R, B, ..., C)
    trapezoid = jnp.full((steps,), 1.0).at[0].set(0.5).at[-1].set(0.5) / (steps - 1)
    return (images - start)[None] * jnp.tensordot(trapezoid, grads, axes=([0], [0]))


def integrated_gradients_regions(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
                                 regions: Any, *, steps: int = 32, baseline: float = 0.0,
                                 target_kind: str | TargetKind | None = None, chunk: int | None = None) -> jax.Array:
    """Integrated gradients of several regions' ``'predicted'`` scores at once: ``(R, B, *spatial,
    C)``, row ``r`` equal (to float rounding) to :func:`integrated_gradients` with
    ``Target('predicted', regions[r])``. Each step runs the network forward once and backward
    once per region (``jax.vjp``), instead of forward and backward per region.

    Args:
      regions: region names or output indices (:meth:`~jaxseg.target.TargetKind.table_index`).
      Others as :func:`integrated_gradients`.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    images = jnp.asarray(images, jnp.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images)
    indices = jnp.asarray([kind.table_index(r) for r in regions], jnp.int32)
    return _integrated_gradients_regions(graphdef, params, batch_stats, images, indices, jnp.float32(baseline),
                                         target_kind=kind, steps=int(steps), chunk=chunk)
