"""Which layer explains: Grad-CAM normalised per volume, and measures of a layer's maps.

**Normalisation.** Grad-CAM of a slice model is computed slice by slice; dividing each slice by
its own maximum (what :func:`jaxseg.explain.gradcam.gradcam_volume` does by default) makes a
slice with faint evidence as bright as the tumor's centre, which shows as bands across the
sagittal and coronal views. :func:`normalise_map` divides the raw maps (``normalise=False``) by
one maximum over the whole volume instead (``'volume'``, the default), or per slice
(``'slice'``, today's look). Zero stays "no evidence" either way.

**Measures of a layer** (:func:`layer_quality`), on a volume's brain slices:

- ``mass_inside``: the share of the (volume-normalised) map's mass inside the predicted region,
  pooled over the volume. A map that puts 99 % inside the segmentation restates it; it does not
  say *why*. ``mass_inside_slice_normalised`` is the same for per-slice normalisation (which
  inflates faint slices, so it is usually lower);
- the deletion and insertion AUCs of the tumor score over every tumor slice and the fractions of
  those slices on which the map beats a random ranking
  (:func:`jaxseg.explain.faithfulness_slices.faithfulness_slices`); per-slice rankings do not
  depend on the normalisation;
- ``zero_map``: the map is identically zero (a layer the score's gradient does not reach, or
  whose weighted activations are negative everywhere): such a layer explains nothing.

``benchmarks/explain_layers.py`` prints these per layer on phantoms and, with ``--data``, on the
real validation cases.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from jaxseg.explain.faithfulness_slices import faithfulness_slices, predicted_masks
from jaxseg.explain.gradcam import Target, gradcam_volume, parse_target, resolve_kind
from jaxseg.target import TargetKind

NORMALISATIONS = ("volume", "slice")


def normalise_map(cam: Any, mode: str = "volume", axis: int = 2) -> np.ndarray:
    """Divide a raw map by its maximum over the volume, or over each slice.

    Args:
      cam: ``(X, Y, Z)`` (or ``(Z, S, S)`` with ``axis=0``) float >= 0.
      mode: ``'volume'`` (one maximum) or ``'slice'`` (one per index of ``axis``).
      axis: the slice axis (2 = axial in the canonical grid; 0 for model-space slices).
    Returns:
      float32 of the same shape in [0, 1]; an all-zero volume or slice stays zero.
    """
    if mode not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {mode!r}")
    cam = np.asarray(cam, np.float64)
    if mode == "volume":
        peak = np.asarray(cam.max()) if cam.size else np.asarray(0.0)
    else:
        others = tuple(a for a in range(cam.ndim) if a != axis % cam.ndim)
        peak = cam.max(axis=others, keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def mass_inside(cam: Any, region: Any) -> float:
    """Share of the map's total mass inside ``region`` (bool, same shape), pooled over every
    voxel; 0.0 for an all-zero map."""
    cam = np.asarray(cam, np.float64)
    total = cam.sum()
    return float((cam * np.asarray(region, bool)).sum() / total) if total > 0 else 0.0


def layer_quality(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, slices: Any,
                  key: jax.Array, *, layers: Sequence[str] | None = None, target: Target | str = "mean",
                  channel: int | str | None = None, steps: int = 11, target_kind: str | TargetKind | None = None,
                  batch_size: int = 16, chunk: int | None = None) -> dict[str, dict[str, Any]]:
    """The module docstring's measures for each layer, on one volume's slices.

    Args:
      graphdef, params, batch_stats: a slice model (as for :func:`~jaxseg.explain.gradcam.gradcam`).
      slices: ``(Z, S, S, C)`` float32 model-space slices (a volume's brain slices).
      key: PRNG key; every layer uses the same one, so all face the same random rankings.
      layers: activation names; None = every name of ``model.activation_names``.
      target: the Grad-CAM score (``'mean'``, ``'predicted:TC'``, ...).
      channel: the region whose prediction and tumor score are measured; None = the target's.
      steps: deletion/insertion fractions; batch_size, chunk: as ``faithfulness_slices``.
    Returns:
      ``layer -> {'mass_inside', 'mass_inside_slice_normalised', 'deletion_auc',
      'insertion_auc', 'random_deletion_auc', 'random_insertion_auc', 'deletion_beats_random',
      'insertion_beats_random', 'n', 'zero_map'}`` (floats, int, bool; the AUCs and
      fractions None without tumor slices).
    """
    slices = np.asarray(slices, np.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, slices[:1])
    if layers is None:
        layers = nnx.merge(graphdef, params, batch_stats).activation_names
    channel = parse_target(target).channel if channel is None else channel
    predicted = predicted_masks(graphdef, params, batch_stats, slices, channel=channel, target_kind=kind,
                                batch_size=batch_size)
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        raw = gradcam_volume(graphdef, params, batch_stats, slices, layer, target, target_kind=kind,
                             batch_size=batch_size, normalise=False)
        cam = normalise_map(raw, "volume", axis=0)
        curves = faithfulness_slices(graphdef, params, batch_stats, slices, cam, key, steps=steps,
                                     channel=channel, target_kind=kind, batch_size=batch_size, chunk=chunk)
        found = curves["n"] > 0
        out[layer] = {
            "mass_inside": mass_inside(cam, predicted),
            "mass_inside_slice_normalised": mass_inside(normalise_map(raw, "slice", axis=0), predicted),
            **{name: curves[f"{source}_auc"] if found else None
               for name, source in (("deletion_auc", "deletion_score"), ("insertion_auc", "insertion_score"),
                                    ("random_deletion_auc", "random_deletion_score"),
                                    ("random_insertion_auc", "random_insertion_score"))},
            "deletion_beats_random": curves["deletion_beats_random"],
            "insertion_beats_random": curves["insertion_beats_random"],
            "n": curves["n"], "zero_map": not bool(np.any(raw > 0)),
        }
    return out
