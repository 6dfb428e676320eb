"""Faithfulness over every tumor slice: on how many slices does the saliency map beat chance?

:func:`jaxseg.explain.faithfulness.faithfulness` averages the deletion/insertion curves of a
few slices; a mean can hide a map that wins big on two slices and loses on ten. Here every slice
on which the model predicts the target region (the *tumor slices*) gets its own curves, from
the same per-sample curve function (batch norm in inference mode, so a batch of slices is the
slices side by side: the model runs vmapped over (ranking, step) pairs on ``batch_size`` slices
at a time), for the map and for a random ranking of the same slice. Per slice the AUCs of the
**tumor score** curves decide:

- deletion: the map beats random iff its deletion AUC is *lower* (strictly);
- insertion: the map beats random iff its insertion AUC is *higher* (strictly).

The result's ``deletion_beats_random`` and ``insertion_beats_random`` are the fractions of tumor
slices where it does, ``n`` their number (the JSON ``faithfulness_slices``); the mean curves over
the tumor slices come with them, in the format of ``faithfulness`` ("the curves as today").
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The per-sample curves of faithfulness.py, shared rather than written twice.
from jaxseg.explain.faithfulness import CURVES, _curves, curve_fractions, random_ranking, static_fractions
from jaxseg.explain.gradcam import resolve_kind, target_probability
from jaxseg.infer import chunks
from jaxseg.target import TargetKind


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind"))
def _predicted(graphdef, params, batch_stats, images, index, *, target_kind):
    logits, _ = nnx.merge(graphdef, params, batch_stats)(images, train=False)
    return target_probability(logits, target_kind, index)[1]


def predicted_masks(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, slices: Any, *,
                    channel: int | str = "WT", target_kind: str | TargetKind | None = None, batch_size: int = 16) -> np.ndarray:
    """Where the model predicts ``channel``: ``(Z, *spatial)`` bool for ``slices (Z, *spatial, C)``
    (``batch_size`` at a time, the last batch zero-padded)."""
    slices = np.asarray(slices, np.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, slices[:1])
    index = jnp.int32(kind.table_index(channel))
    return chunks.map_chunks(lambda _, chunk: _predicted(graphdef, params, batch_stats, chunk, index, target_kind=kind),
                             slices, batch_size=batch_size, empty=np.zeros(slices.shape[:-1], bool))


def tumor_slices(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, slices: Any, *,
                 channel: int | str = "WT", target_kind: str | TargetKind | None = None, batch_size: int = 16) -> np.ndarray:
    """Indices ``(n,)`` int64 of the slices ``(Z, *spatial, C)`` on which the model predicts
    ``channel`` somewhere."""
    masks = predicted_masks(graphdef, params, batch_stats, slices, channel=channel, target_kind=target_kind,
                            batch_size=batch_size)
    return np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))


def faithfulness_slices(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, slices: Any,
                        saliency: Any, key: jax.Array, *, steps: int = 21, spacing: str = "linear",
                        channel: int | str = "WT",
                        target_kind: str | TargetKind | None = None, baseline: float = 0.0, batch_size: int = 16,
                        chunk: int | None = None, random_saliency: Any = None) -> dict[str, Any]:
    """Per-slice deletion/insertion against a random ranking, over every tumor slice.

    Args:
      graphdef, params, batch_stats: the model (as for :func:`jaxseg.explain.gradcam.gradcam`).
      slices: ``(Z, *spatial, C)`` float32 (a volume's brain slices in model space).
      saliency: ``(Z, *spatial)`` float, larger = more important (Grad-CAM per slice).
      key: PRNG key: batch ``i`` of tumor slices uses ``fold_in(key, i)`` (split into the tie
        key and the random ranking's key); the result is a pure function of it.
      steps, spacing, channel, target_kind, baseline, chunk: as
        :func:`~jaxseg.explain.faithfulness.faithfulness`.
      batch_size: tumor slices per call (the last batch zero-padded: one compiled program,
        :func:`jaxseg.infer.chunks.map_chunks`).
      random_saliency: ``(Z, *spatial)`` the random maps to use instead of drawing them
        (a test's hand computation needs them).
    Returns:
      ``deletion_beats_random``, ``insertion_beats_random`` (float in [0, 1], None when ``n`` is
      0), ``n`` (int), ``slices`` (the tumor slice indices, list of int), ``fractions`` ``(steps,)``
      and, for the map and (prefixed ``random_``) the random ranking, each curve of
      :data:`~jaxseg.explain.faithfulness.CURVES` averaged over the tumor slices ``(steps,)``
      float32 with its ``<curve>_auc``; ``per_slice_auc``: ``{deletion_score, insertion_score,
      random_deletion_score, random_insertion_score}`` lists of floats, one per tumor slice.
    """
    fractions = curve_fractions(int(steps), spacing)
    slices = np.asarray(slices, np.float32)
    saliency = np.asarray(saliency, np.float32)
    if saliency.shape != slices.shape[:-1]:
        raise ValueError(f"saliency has shape {saliency.shape}; the slices need {slices.shape[:-1]}")
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, slices[:1])
    index = kind.table_index(channel)
    chosen = tumor_slices(graphdef, params, batch_stats, slices, channel=channel, target_kind=kind,
                          batch_size=batch_size)

    def per_slice_curves(i, images, maps, noise):
        rank_key, random_key = jax.random.split(jax.random.fold_in(key, i))
        noise = random_ranking(random_key, maps.shape) if noise is None else jnp.asarray(noise)
        curves = _curves(graphdef, params, batch_stats, jnp.asarray(images), jnp.stack([jnp.asarray(maps), noise]),
                         rank_key, jnp.int32(index), jnp.float32(baseline), target_kind=kind,
                         fractions=static_fractions(fractions),
                         chunk=None if chunk is None else int(chunk))
        return jnp.moveaxis(curves, -1, 0)  # (slices, 2 rankings, steps, 4 curves): rows first

    noise = None if random_saliency is None else np.asarray(random_saliency, np.float32)[chosen]
    curves = chunks.map_chunks(per_slice_curves, slices[chosen], saliency[chosen], noise, batch_size=batch_size)
    result: dict[str, Any] = {"n": int(len(chosen)), "slices": [int(z) for z in chosen], "fractions": fractions}
    if curves is None:
        return {**result, "deletion_beats_random": None, "insertion_beats_random": None, "per_slice_auc": {}}
    curves = np.moveaxis(curves, 0, -1).astype(np.float64)  # (2 rankings, steps, 4 curves, slices)
    aucs = np.trapezoid(curves, fractions.astype(np.float64), axis=1)  # (2, 4, slices)
    deletion, insertion = CURVES.index("deletion_score"), CURVES.index("insertion_score")
    result["deletion_beats_random"] = float(np.mean(aucs[0, deletion] < aucs[1, deletion]))
    result["insertion_beats_random"] = float(np.mean(aucs[0, insertion] > aucs[1, insertion]))
    result["per_slice_auc"] = {prefix + name: aucs[r, CURVES.index(name)].tolist()
                               for r, prefix in enumerate(("", "random_"))
                               for name in ("deletion_score", "insertion_score")}
    mean = curves.mean(axis=-1)  # (2, steps, 4)
    for r, prefix in enumerate(("", "random_")):
        for c, name in enumerate(CURVES):
            result[prefix + name] = mean[r, :, c].astype(np.float32)
            result[f"{prefix}{name}_auc"] = float(np.trapezoid(mean[r, :, c], fractions.astype(np.float64)))
    return result
