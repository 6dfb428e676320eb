"""Which MRI sequence drove each region: modality attribution and modality ablation.

**Attribution.** For each region ``r`` (WT/TC/ET, or a model output channel), integrated
gradients (:func:`jaxseg.explain.attribution.integrated_gradients`, all-``baseline`` start) of
the score ``predicted:r`` (the mean probability of ``r`` over the pixels the model puts in it)
give a ``(B, *spatial, C)`` attribution. Per input channel ``c`` its **mass** is

    mass[r, c] = sum over the pixels predicted in r of |IG_r[..., c]|

and the channel's **share** is ``mass[r, c] / sum_c' mass[r, c']`` (shares sum to 1 over the
channels, for any number of channels 1..N).

Convention chosen here: the *absolute* attribution (``sign='abs'``, the default), not its
positive part. A sequence that raises the region's probability on the rim and lowers it in the
centre is used by the model either way; signed IG lets those cancel and the sequence would look
unused, and a positive part alone would drop the evidence *against* tumor that a sequence
contributes (T1 darkness that keeps edema out of the core, say). ``sign='positive'`` (only
evidence for the region) is available for comparison. A channel the model ignores has zero
gradient, so both give it a share of exactly 0.

Pixels outside the predicted region are not counted: their attributions explain why the
region's pixels are what they are only through the receptive field, and the question asked is
"what makes this region look like tumor". A region predicted nowhere has no share (None).

**Ablation** (the check of the attribution, as the issue asks): replace channel ``c`` inside
the brain by its mean over the brain (over every sample passed, i.e. over the volume when the
caller passes its slices) and measure, per region, the drop of the **score** (mean probability
over the pixels predicted on the unperturbed image) and the **Dice** of the perturbed prediction
against the unperturbed one (pooled over the samples; 1 when both are empty, as
:func:`jaxseg.explain.faithfulness.dice`).

Both run ``batch_size`` samples at a time (the last chunk zero-padded, one compiled program);
sums are pooled over the chunks before dividing (CONTRIBUTING.md, habit 6).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseg.explain.attribution import integrated_gradients_regions
from jaxseg.explain.gradcam import resolve_kind
from jaxseg.infer import chunks
from jaxseg.overlap import dice_from_counts
from jaxseg.target import TargetKind

SIGNS = ("abs", "positive")


def _regions(regions: Sequence[int | str] | None, kind: str) -> list[int | str]:
    return list(kind.region_names if regions is None else regions)


def _modality_names(modalities: Sequence[str] | None, channels: int) -> list[str]:
    names = [f"channel{c}" for c in range(channels)] if modalities is None else [str(m) for m in modalities]
    if len(names) != channels:
        raise ValueError(f"{len(names)} modality names for {channels} input channels")
    return names


def _padded(array: np.ndarray, batch_size: int) -> np.ndarray:
    pad = batch_size - len(array)
    return np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)]) if pad else array


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind"))
def _predicted(graphdef, params, batch_stats, images, *, target_kind):
    logits, _ = nnx.merge(graphdef, params, batch_stats)(images, train=False)
    return target_kind.probability_table(logits.astype(jnp.float32))


def _region_attributions(graphdef, params, batch_stats, images, regions, sign, steps, baseline, target_kind,
                         batch_size, chunk, only_predicted=True):
    """Yield ``(rows, region number, attribution (n, *spatial, C) float64 after the sign
    convention, predicted (n, *spatial) bool)`` per chunk of at most ``batch_size`` samples and
    region; ``rows`` are the chunk's sample indices.

    Every region of a chunk comes from one call of
    :func:`~jaxseg.explain.attribution.integrated_gradients_regions` (one forward pass per step,
    one backward pass per region), equal to attributing each region on its own.

    ``only_predicted``: attribute only the samples where some region is predicted, and yield
    each region only on the samples where it is predicted. A region's mass sums over its
    predicted pixels, so the others add exactly 0 to it (per-sample scores: inference batch
    norm); on a volume the tumor is on a fraction of the slices, and this skips the rest.
    False: every sample and region, for maps at every pixel (:func:`modality_maps`)."""
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    specs = _regions(regions, target_kind)
    indices = [target_kind.table_index(r) for r in specs]
    if not len(images):
        return
    predicted = np.concatenate([chunks.call_padded(
        lambda x: _predicted(graphdef, params, batch_stats, x, target_kind=target_kind)[1], batch_size,
        images[start:start + batch_size]) for start in range(0, len(images), batch_size)])[..., indices]
    present = predicted.reshape(len(images), -1, len(specs)).any(axis=1)  # (B, R): region r on sample b
    if not only_predicted:
        present[:] = True
    candidates = np.flatnonzero(present.any(axis=1))
    for start in range(0, len(candidates), batch_size):
        rows = candidates[start:start + batch_size]
        # (n, R, *spatial, C); the regions are traced, so one compiled program serves every chunk.
        ig = chunks.call_padded(
            lambda x: jnp.moveaxis(integrated_gradients_regions(
                graphdef, params, batch_stats, x, specs, steps=steps, baseline=baseline, target_kind=target_kind,
                chunk=chunk), 0, 1), batch_size, images[rows]).astype(np.float64)
        ig = np.abs(ig) if sign == "abs" else np.maximum(ig, 0.0)
        for r in range(len(specs)):
            keep = present[rows, r]
            if keep.any():
                yield rows[keep], r, ig[keep, r], predicted[rows[keep], ..., r]


def attribution_mass(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any, *,
                     regions: Sequence[int | str] | None = None, sign: str = "abs", steps: int = 16,
                     baseline: float = 0.0, target_kind: str | TargetKind | None = None, batch_size: int = 16,
                     chunk: int | None = None) -> np.ndarray:
    """Per region and input channel, the integrated-gradient mass inside the predicted region.

    Args:
      graphdef, params, batch_stats: the model (as for :func:`jaxseg.explain.gradcam.gradcam`).
      images: ``(B, *spatial, C)`` float32, e.g. the brain slices of a volume.
      regions: region names or output indices (:meth:`~jaxseg.target.TargetKind.table_index`);
        None = every region of the target kind (``TargetKind.region_names``).
      sign: ``'abs'`` (|IG|) or ``'positive'`` (max(IG, 0)); module docstring.
      steps, baseline, chunk: as :func:`~jaxseg.explain.attribution.integrated_gradients`.
      batch_size: samples per call.
    Returns:
      ``(R, C)`` float64 numpy masses (sums, so masses of several batches add up).
    """
    images = np.asarray(images, np.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images[:1])
    mass = np.zeros((len(_regions(regions, kind)), images.shape[-1]), np.float64)
    for _, r, attribution, predicted in _region_attributions(graphdef, params, batch_stats, images, regions, sign,
                                                             steps, baseline, kind, batch_size, chunk):
        mass[r] += (attribution * predicted[..., None]).reshape(-1, attribution.shape[-1]).sum(axis=0)
    return mass


def modality_maps(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any, *,
                  regions: Sequence[int | str] | None = None, sign: str = "abs", steps: int = 16,
                  baseline: float = 0.0, target_kind: str | TargetKind | None = None, batch_size: int = 16,
                  chunk: int | None = None) -> dict[str, np.ndarray]:
    """The per-modality maps behind the shares, for a viewer: ``{region: (B, *spatial, C)
    float32}``, the attribution of each channel (after the ``sign`` convention) at every pixel,
    not restricted to the predicted region and not normalised. Its sum over the predicted pixels
    is :func:`attribution_mass`. Arguments as :func:`attribution_mass`."""
    images = np.asarray(images, np.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images[:1])
    names = [str(r) for r in _regions(regions, kind)]
    maps = {name: np.zeros(images.shape, np.float32) for name in names}
    for rows, r, attribution, _ in _region_attributions(graphdef, params, batch_stats, images, regions, sign,
                                                        steps, baseline, kind, batch_size, chunk, only_predicted=False):
        maps[names[r]][rows] = attribution
    return maps


def shares_from_mass(mass: np.ndarray, region_names: Sequence[str], modalities: Sequence[str]
                     ) -> dict[str, dict[str, float] | None]:
    """``{region: {modality: share}}`` from ``mass (R, C)``; shares sum to 1 per region, None
    for a region with no mass (predicted nowhere)."""
    out: dict[str, dict[str, float] | None] = {}
    for name, row in zip(region_names, np.asarray(mass, np.float64)):
        total = row.sum()
        out[name] = None if total <= 0 else {m: float(v / total) for m, v in zip(modalities, row)}
    return out


def modality_attribution_maps(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any, *,
                              modalities: Sequence[str] | None = None, regions: Sequence[int | str] | None = None,
                              sign: str = "abs", steps: int = 16, baseline: float = 0.0,
                              target_kind: str | TargetKind | None = None, batch_size: int = 16,
                              chunk: int | None = None) -> tuple[dict[str, dict[str, float] | None], np.ndarray]:
    """:func:`modality_attribution` and, from the same integrated gradients (no second pass), the
    per-modality map of the *first* region (WT for every target kind): ``(B, *spatial, C)``
    float32, each channel's attribution after the ``sign`` convention at every pixel of the
    samples where that region is predicted (0 on the others, which add nothing to its shares;
    not normalised; :func:`modality_maps` for any region on every sample).
    Arguments as :func:`modality_attribution`."""
    images = np.asarray(images, np.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images[:1])
    names = [str(r) for r in _regions(regions, kind)]
    mass = np.zeros((len(names), images.shape[-1]), np.float64)
    first = np.zeros(images.shape, np.float32)
    for rows, r, attribution, predicted in _region_attributions(graphdef, params, batch_stats, images, regions, sign,
                                                                steps, baseline, kind, batch_size, chunk):
        mass[r] += (attribution * predicted[..., None]).reshape(-1, attribution.shape[-1]).sum(axis=0)
        if r == 0:
            first[rows] = attribution
    return shares_from_mass(mass, names, _modality_names(modalities, images.shape[-1])), first


def modality_attribution(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any, *,
                         modalities: Sequence[str] | None = None, regions: Sequence[int | str] | None = None,
                         sign: str = "abs", steps: int = 16, baseline: float = 0.0,
                         target_kind: str | TargetKind | None = None, batch_size: int = 16,
                         chunk: int | None = None) -> dict[str, dict[str, float] | None]:
    """The share of each input sequence in each region (module docstring), the JSON value of
    ``modality_attribution``.

    Args:
      images: ``(B, *spatial, C)`` float32.
      modalities: C names (``Predictor.modalities``); None = ``channel0 ..``.
      Others as :func:`attribution_mass`.
    Returns:
      ``{region: {modality: share}}``, shares float summing to 1; None for a region predicted
      nowhere in ``images``.
    """
    images = np.asarray(images, np.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images[:1])
    names = [str(r) for r in _regions(regions, kind)]
    mass = attribution_mass(graphdef, params, batch_stats, images, regions=regions, sign=sign, steps=steps,
                            baseline=baseline, target_kind=kind, batch_size=batch_size, chunk=chunk)
    return shares_from_mass(mass, names, _modality_names(modalities, images.shape[-1]))


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind"))
def _ablation_sums(graphdef, params, batch_stats, images, brain, valid, fill, indices, *, target_kind):
    """Per ablation (none, then each channel) and region: ``(C + 1, R, 4)`` float32 sums of
    (probability over the reference pixels, reference pixels, overlap, perturbed + reference
    sizes). The unperturbed batch runs once (it is the reference and the first row); the C
    ablated copies of it run as one batch."""
    model = nnx.merge(graphdef, params, batch_stats)
    channels = images.shape[-1]

    def table(x):
        probs, predicted = target_kind.probability_table(model(x, train=False)[0].astype(jnp.float32))
        return jnp.take(probs, indices, axis=-1), jnp.take(predicted, indices, axis=-1)

    # Padding rows (valid False) count nowhere.
    keep = valid.reshape((-1,) + (1,) * (images.ndim - 1))
    probs, reference = table(images)  # (B, *spatial, R)
    reference = reference & keep
    lead = (1,) * (brain.ndim + 1)
    replace = brain[None, ..., None] & jnp.eye(channels, dtype=bool).reshape(
        (channels,) + (1,) * brain.ndim + (channels,))  # (C, B, *spatial, C): channel c inside the brain
    ablated = jnp.where(replace, fill.reshape(lead + (channels,)), images[None])
    ablated_probs, ablated_predicted = table(ablated.reshape(-1, *images.shape[1:]))
    probs = jnp.concatenate([probs[None], ablated_probs.reshape(channels, *probs.shape)])  # (C + 1, B, *spatial, R)
    predicted = jnp.concatenate([reference[None], ablated_predicted.reshape(channels, *reference.shape) & keep[None]])
    ref = reference.astype(jnp.float32)
    axes = tuple(range(1, probs.ndim - 1))  # the batch and the spatial axes of (C + 1, B, *spatial, R)
    ref_count = jnp.broadcast_to(ref.sum(tuple(range(ref.ndim - 1))), probs.shape[:1] + ref.shape[-1:])  # (C + 1, R)
    return jnp.stack([(probs * ref[None]).sum(axes), ref_count, (predicted & reference[None]).sum(axes),
                      predicted.sum(axes) + ref_count], axis=-1).astype(jnp.float32)


def modality_ablation(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
                      brain: Any = None, *, modalities: Sequence[str] | None = None,
                      regions: Sequence[int | str] | None = None, target_kind: str | TargetKind | None = None,
                      batch_size: int = 16) -> dict[str, dict[str, Any] | None]:
    """What each sequence is worth to each region: replace it by its brain mean, re-segment.

    Args:
      images: ``(B, *spatial, C)`` float32.
      brain: ``(B, *spatial)`` bool; None = any channel nonzero (skull-stripped background is 0).
      modalities, regions, target_kind, batch_size: as :func:`modality_attribution`.
    Returns:
      ``{region: {'score': s, modality: {'score', 'score_drop', 'dice', 'dice_drop'}}}``
      (floats; ``score_drop = s - score``, ``dice`` against the unperturbed prediction,
      ``dice_drop = 1 - dice``); None for a region predicted nowhere.
    """
    images = np.asarray(images, np.float32)
    brain = np.any(images != 0, axis=-1) if brain is None else np.asarray(brain, bool)
    if brain.shape != images.shape[:-1]:
        raise ValueError(f"brain mask has shape {brain.shape}; the images need {images.shape[:-1]}")
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images[:1])
    specs = _regions(regions, kind)
    names, indices = [str(r) for r in specs], [kind.table_index(r) for r in specs]
    mods = _modality_names(modalities, images.shape[-1])
    # The fill is each channel's mean over the brain of every sample (the volume), not per chunk.
    fill = np.asarray([images[..., c][brain].mean() if brain.any() else 0.0
                       for c in range(images.shape[-1])], np.float32)
    total = np.zeros((images.shape[-1] + 1, len(indices), 4), np.float64)
    for start in range(0, len(images), batch_size):
        # Sums, not rows: the padding rows are excluded inside the sums (valid False), not stripped.
        n = len(images[start:start + batch_size])
        chunk_sums = _ablation_sums(graphdef, params, batch_stats, _padded(images[start:start + n], batch_size),
                                    _padded(brain[start:start + n], batch_size), _padded(np.ones(n, bool), batch_size),
                                    jnp.asarray(fill), jnp.asarray(indices, jnp.int32), target_kind=kind)
        total += np.asarray(chunk_sums, np.float64)
    out: dict[str, dict[str, Any] | None] = {}
    for r, name in enumerate(names):
        prob_sum, count, overlap, sizes = total[0, r]
        if count == 0:
            out[name] = None
            continue
        score = prob_sum / count
        entry: dict[str, Any] = {"score": float(score)}
        for c, modality in enumerate(mods):
            p, n, o, s = total[c + 1, r]
            dice = float(dice_from_counts(o, s))
            entry[modality] = {"score": float(p / n), "score_drop": float(score - p / n),
                               "dice": float(dice), "dice_drop": float(1.0 - dice)}
        out[name] = entry
    return out


def region_slices(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any, *,
                  regions: Sequence[int | str] | None = None, target_kind: str | TargetKind | None = None,
                  batch_size: int = 16) -> np.ndarray:
    """Indices ``(n,)`` int64 of the samples of ``images (B, *spatial, C)`` on which some region
    is predicted. The attribution masses count predicted pixels only, so
    :func:`modality_attribution` of ``images[region_slices(...)]`` equals that of ``images``
    (the other samples add 0) at a fraction of the cost."""
    images = np.asarray(images, np.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images[:1])
    indices = np.asarray([kind.table_index(r) for r in _regions(regions, kind)])
    any_region = chunks.map_chunks(
        lambda _, x: _predicted(graphdef, params, batch_stats, x, target_kind=kind)[1][..., indices].any(axis=-1),
        images, batch_size=batch_size, empty=np.zeros(images.shape[:-1], bool))
    return np.flatnonzero(np.asarray(any_region).reshape(len(images), -1).any(axis=1))
