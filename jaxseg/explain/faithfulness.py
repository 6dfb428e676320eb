"""Deletion and insertion curves (Petsiuk et al. 2018): does a saliency map point at what the
model uses?

Pixels are ranked by saliency (most salient first; ties broken at random by ``key``). For each
fraction ``f`` of :func:`curve_fractions` (``linspace(0, 1, steps)``, or geometric steps):

- **deletion** sets the top ``round(f * pixels)`` pixels of every channel to the baseline (0, the
  background value after normalisation); a faithful map makes the tumor score fall fast, so a
  *low* area under the curve is good;
- **insertion** starts from the all-baseline image and reveals the top pixels; a faithful map
  makes the score rise fast, so a *high* area is good.

Recorded per step: the **tumor score**, the mean probability of the target channel over the
pixels the model predicts positive on the unperturbed image (the whole image if it predicts
none), and the **Dice** of the perturbed prediction against the unperturbed one (1 when both
are empty). Curves are means over the batch; AUCs are trapezoids over ``f`` in [0, 1]. The same
curves for a random ranking (:func:`random_ranking`) are the baseline a map has to beat.

Fraction spacing: ``"linear"`` (the paper's) spends most steps where nothing is left to learn
when the tumor is a few percent of the image (after the first 5 % step of ``linspace(0, 1, 21)``
a 2 % tumor is already deleted). ``"geometric"`` puts 0 and then ``steps - 1`` fractions from
:data:`SMALLEST_FRACTION` to 1 at a constant ratio (11 steps: 0, 0.1 %, 0.2 %, 0.5 %, 1 %, ...,
46 %, 100 %), so the curve is sampled where it changes; the AUC is the trapezoid over the same
fractions either way.

The ends of the curves (the image, the all-baseline image) are shared by every ranking; the
perturbed images of every other (ranking, step) pair run as one batch (or ``jax.lax.map`` over
``chunk`` pairs at a time when memory asks for it): ``2 * (steps - 2) * 2 * B`` images per call.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseg.explain.gradcam import masked_mean, resolve_kind, target_probability
from jaxseg.overlap import dice
from jaxseg.target import TargetKind

CURVES = ("deletion_score", "insertion_score", "deletion_dice", "insertion_dice")
SPACINGS = ("linear", "geometric")
SMALLEST_FRACTION = 1.0 / 1024  # the first non-zero geometric fraction: 36 pixels of a 192 px slice


def curve_fractions(steps: int, spacing: str = "linear") -> np.ndarray:
    """The fractions of a deletion/insertion curve: ``(steps,)`` float32, 0 first and 1 last.

    ``"linear"``: ``linspace(0, 1, steps)``; ``"geometric"``: 0, then ``steps - 1`` fractions
    from :data:`SMALLEST_FRACTION` to 1 at a constant ratio. Raises ValueError for fewer than 2
    steps or an unknown spacing.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown fraction spacing {spacing!r} (known: {', '.join(SPACINGS)})")
    if spacing == "linear" or steps == 2:
        return np.linspace(0.0, 1.0, steps, dtype=np.float32)
    geometric = np.geomspace(SMALLEST_FRACTION, 1.0, steps - 1)
    geometric[-1] = 1.0
    return np.concatenate([[0.0], geometric]).astype(np.float32)


def random_ranking(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A saliency map ``shape`` (``(B, *spatial)``) float32 of uniform noise: ranking pixels by it
    is a uniformly random order, the baseline of :func:`faithfulness`."""
    return jax.random.uniform(key, shape, jnp.float32)


def pixel_ranks(saliency: jax.Array, key: jax.Array) -> jax.Array:
    """Rank of each pixel per sample, 0 = most salient: ``(B, *spatial)`` int32.

    Ties (a map that is 0 outside the brain) are broken by a random order from ``key``, not by
    raster order, which would delete the top rows first.
    """
    batch = saliency.shape[0]
    flat = saliency.reshape(batch, -1).astype(jnp.float32)
    noise = jax.random.uniform(key, flat.shape)
    order = jnp.lexsort((noise, -flat), axis=-1)  # the last key is the primary one
    ranks = jnp.argsort(order, axis=-1).astype(jnp.int32)
    return ranks.reshape(saliency.shape)


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind", "fractions", "chunk"))
def _curves(graphdef, params, batch_stats, images, saliencies, key, index, baseline, *,
            target_kind, fractions, chunk):
    """``(rankings, steps, 4 curves, B)`` float32 for ``saliencies (R, B, *spatial)`` at the
    ``fractions`` (a tuple of floats from 0 to 1, ``steps`` of them).

    Both ends of every curve are the same for every ranking (deletion runs from the image to the
    all-baseline image, insertion back), so they are measured once: the unperturbed images
    (already run for the reference masks) and one all-baseline image (its prediction is the same
    for every sample; batch norm runs in inference mode). Only the ``steps - 2`` fractions in
    between are perturbed, per ranking, as one batch of deleted and inserted images.
    """
    model = nnx.merge(graphdef, params, batch_stats)

    def target_of(x):
        logits, _ = model(x, train=False)
        return target_probability(logits, target_kind, index)

    batch, spatial = images.shape[0], tuple(range(1, images.ndim - 1))
    n_rank, steps = saliencies.shape[0], len(fractions)

    def measure(prob, pred):  # (n * B, *spatial) of samples in images' order, n times -> (2, n * B)
        reference = jnp.tile(unperturbed_pred, (prob.shape[0] // batch,) + (1,) * len(spatial))
        return jnp.stack([masked_mean(prob, reference), dice(pred, reference, axis=spatial)])

    unperturbed_prob, unperturbed_pred = target_of(images)  # what the model segments unperturbed
    image_ends = measure(unperturbed_prob, unperturbed_pred)  # (2, B): score and Dice of the image
    base_prob, base_pred = target_of(jnp.full_like(images[:1], baseline))
    baseline_ends = measure(jnp.broadcast_to(base_prob, unperturbed_prob.shape),
                            jnp.broadcast_to(base_pred, unperturbed_pred.shape))  # (2, B)

    keys = jax.random.split(key, n_rank)
    ranks = jax.vmap(pixel_ranks)(saliencies, keys)  # (R, B, *spatial)
    inner_fractions = np.asarray(fractions[1:-1], np.float64)
    counts = jnp.asarray(np.round(inner_fractions * np.prod(images.shape[1:-1])), jnp.int32)  # (steps - 2,)

    def perturbed(rank, count):  # (2B, *spatial, C): deleted, then inserted, top `count` pixels of `rank`
        top = (rank < count)[..., None]  # (B, *spatial, 1): the same pixels in every channel
        return jnp.concatenate([jnp.where(top, baseline, images), jnp.where(top, images, baseline)])

    def one(rank_and_count):  # (2 measures, 2B)
        return measure(*target_of(perturbed(*rank_and_count)))

    pairs = (jnp.repeat(ranks, steps - 2, axis=0), jnp.tile(counts, n_rank))  # (R * (steps - 2), ...)
    if steps == 2:  # only the ends
        inner = jnp.zeros((0, 2, 2 * batch), jnp.float32)
    elif chunk:
        inner = jax.lax.map(one, pairs, batch_size=chunk)  # (pairs, 2 measures, 2B)
    else:  # every perturbed image in one batch (vmapping `one` ran the network 1.3x slower)
        flat = jax.vmap(perturbed)(*pairs).reshape(-1, *images.shape[1:])
        inner = jnp.moveaxis(measure(*target_of(flat)).reshape(2, -1, 2 * batch), 0, 1)
    inner = inner.reshape(n_rank, steps - 2, 2, 2, batch)  # (R, steps - 2, measure, deleted | inserted, B)
    image_ends = jnp.broadcast_to(image_ends, (n_rank, 1, 2, batch))
    baseline_ends = jnp.broadcast_to(baseline_ends, (n_rank, 1, 2, batch))
    deletion = jnp.concatenate([image_ends, inner[:, :, :, 0], baseline_ends], axis=1)  # (R, steps, measure, B)
    insertion = jnp.concatenate([baseline_ends, inner[:, :, :, 1], image_ends], axis=1)
    # CURVES order: deletion_score, insertion_score, deletion_dice, insertion_dice.
    return jnp.stack([deletion[:, :, 0], insertion[:, :, 0], deletion[:, :, 1], insertion[:, :, 1]], axis=2)


def static_fractions(fractions: np.ndarray) -> tuple[float, ...]:
    """``fractions`` as the hashable tuple :func:`_curves` compiles for."""
    return tuple(float(f) for f in fractions)


def faithfulness(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
                 saliency: Any, key: jax.Array, *, steps: int = 21, spacing: str = "linear",
                 channel: int | str = "WT", target_kind: str | TargetKind | None = None,
                 baseline: float = 0.0, chunk: int | None = None) -> dict[str, Any]:
    """Deletion and insertion curves of a saliency map and of a random ranking.

    Args:
      graphdef, params, batch_stats: the model (as for :func:`jaxseg.explain.gradcam.gradcam`).
      images: ``(B, *spatial, C)`` float32.
      saliency: ``(B, *spatial)`` float, larger = more important (a Grad-CAM map, say).
      key: PRNG key for the random ranking and for breaking ties; the result is a pure function
        of the inputs and the key.
      steps: number of fractions.
      spacing: ``"linear"`` (``linspace(0, 1, steps)``) or ``"geometric"``
        (:func:`curve_fractions`).
      channel: the target channel of the tumor score: a region name or an output index (as
        :class:`~jaxseg.explain.gradcam.Target`'s ``channel``).
      target_kind: a ``data.target`` name or :class:`~jaxseg.target.TargetKind`; None infers it
        from the logits.
      baseline: the value deleted pixels take, in every channel.
      chunk: evaluate at most this many (ranking, step) pairs at once; None = all in one vmap.
    Returns:
      ``fractions`` ``(steps,)`` float32 numpy; for the map and (prefixed ``random_``) for the
      random ranking, the curves ``deletion_score``, ``insertion_score``, ``deletion_dice``,
      ``insertion_dice`` ``(steps,)`` float32 numpy (batch means) and their ``<curve>_auc``
      Python floats.
    """
    fractions = curve_fractions(int(steps), spacing)
    images = jnp.asarray(images, jnp.float32)
    saliency = jnp.asarray(saliency, jnp.float32)
    if saliency.shape != images.shape[:-1]:
        raise ValueError(f"saliency has shape {saliency.shape}; the images need {images.shape[:-1]}")
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images)
    index = kind.table_index(channel)
    rank_key, random_key = jax.random.split(key)
    saliencies = jnp.stack([saliency, random_ranking(random_key, saliency.shape)])
    curves = _curves(graphdef, params, batch_stats, images, saliencies, rank_key, jnp.int32(index),
                     jnp.float32(baseline), target_kind=kind, fractions=static_fractions(fractions),
                     chunk=None if chunk is None else int(chunk))
    curves = np.asarray(curves).mean(axis=-1)  # (2, steps, 4)
    result: dict[str, Any] = {"fractions": fractions}
    for prefix, per_ranking in zip(("", "random_"), curves):
        for name, curve in zip(CURVES, per_ranking.T):
            result[prefix + name] = curve.astype(np.float32)
            result[f"{prefix}{name}_auc"] = float(np.trapezoid(curve.astype(np.float64), fractions))
    return result
