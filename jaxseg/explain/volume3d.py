"""Explanations of 3D models (``unet3d``) for ``jaxseg explain``: every map of a whole volume.

The 3D model sees the brain box of :func:`jaxseg.data.patches.prepare_volume_3d`, so the maps are
computed there and restored with :func:`~jaxseg.data.patches.restore_box` (0 off the brain), in
the same canonical grid as the 2D path's maps:

- **probabilities** of the whole volume by sliding windows (:mod:`jaxseg.infer.sliding_window`,
  the run's ``[infer]`` settings), exactly as ``jaxseg predict`` computes them;
- **Grad-CAM** (3D, trilinear upsampling) on one window of the training patch size centred on
  the predicted whole tumor (on the brain box's centre when none is predicted). Grad-CAM
  explains one score of one forward pass; blending per-window maps would mix maps normalised
  against different scores, so the map is 0 outside that window (the summary records where it
  is). With a 128^3 window the brain box of a BraTS case is mostly covered;
- **MC dropout** per sliding window: :func:`~jaxseg.explain.uncertainty.mc_dropout` (the N
  passes vmapped over keys, ``chunk`` at a time) on each window batch, with key
  ``fold_in(key, batch number)``; the per-window mean, variance, entropy and mutual information
  are blended with the same window weights as the probabilities (a weighted mean of the
  windows' statistics, not the statistics of pooled samples);
- **deletion/insertion** curves in 3D on the Grad-CAM window (voxels ranked by the 3D map).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxseg import target as target_lib
from jaxseg.data import patches, preprocess
from jaxseg.explain.faithfulness import faithfulness
from jaxseg.explain.gradcam import gradcam
from jaxseg.explain.uncertainty import mc_dropout
from jaxseg.infer import sliding_window
from jaxseg.infer.predict import Predictor

# MC passes and deletion/insertion steps evaluated at once on a window: each holds every
# activation of a 128^3 forward pass, so a handful at a time bounds memory.
MC_CHUNK = 2
FAITHFULNESS_CHUNK = 2


def tumor_window_origin(probs: np.ndarray, target_kind: str | target_lib.TargetKind, size: int) -> np.ndarray:
    """``(3,)`` int64 origin of the ``size``-cube centred on the predicted whole tumor's centroid
    in ``probs (X', Y', Z', K)`` (the box centre without tumor), kept inside the (padded) box as
    :func:`~jaxseg.data.patches.patch_range` allows."""
    shape = probs.shape[:3]
    whole_tumor = target_lib.target_kind(target_kind).whole_tumor_probability(probs) > 0.5
    centre = (np.argwhere(whole_tumor).mean(axis=0).round().astype(np.int64) if whole_tumor.any()
              else np.asarray(shape, np.int64) // 2)
    lo, hi = patches.patch_range(shape, size)
    return np.clip(centre - size // 2, lo, hi)


def paste_window(window_map: np.ndarray, origin: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``window_map (P, P, P)`` placed at ``origin`` in zeros of ``shape (X', Y', Z')`` (the parts
    outside the volume, where the window was zero padding, are dropped)."""
    out = np.zeros(shape, np.float32)
    size = window_map.shape[0]
    dst, src = [], []
    for o, n in zip((int(v) for v in origin), shape):
        a, b = max(o, 0), min(o + size, n)
        dst.append(slice(a, b))
        src.append(slice(a - o, b - o))
    out[tuple(dst)] = window_map[tuple(src)]
    return out


def mc_dropout_windows(predictor: Predictor, volume: np.ndarray, key: jax.Array, n_samples: int
                       ) -> dict[str, np.ndarray]:
    """MC-dropout statistics of a prepared volume ``(X', Y', Z', C)`` by sliding windows.

    Returns ``mean``, ``variance`` ``(X', Y', Z', K)``; ``entropy``, ``mutual_information``
    ``(X', Y', Z', K)`` for sigmoid targets, ``(X', Y', Z')`` for softmax ones; float32.
    """
    cfg, kind = predictor.cfg, predictor.target_kind
    sharding = NamedSharding(predictor.mesh, P("data"))
    batches = iter(range(1 << 30))  # the window batches arrive in a fixed order: batch b gets fold_in(key, b)

    def forward(windows: np.ndarray) -> jax.Array:
        stats = mc_dropout(predictor.graphdef, predictor.params, predictor.batch_stats,
                           jax.device_put(windows, sharding), jax.random.fold_in(key, next(batches)),
                           n_samples, kind, chunk=MC_CHUNK)
        per_class = [stats[k] if stats[k].ndim == 5 else stats[k][..., None]
                     for k in ("mean", "variance", "entropy", "mutual_information")]
        return jnp.concatenate(per_class, axis=-1)

    i = cfg.infer
    stacked = sliding_window.sliding_window_probabilities(
        forward, volume, cfg.data.patch_size, overlap=i.overlap, blend=i.blend,
        window_batch=i.window_batch, batch_multiple=predictor.mesh.size)
    k = kind.channels
    softmax = kind.activation == "softmax"  # one categorical entropy per voxel, not one per channel
    e = 1 if softmax else k
    out = {"mean": stacked[..., :k], "variance": stacked[..., k:2 * k],
           "entropy": stacked[..., 2 * k:2 * k + e], "mutual_information": stacked[..., 2 * k + e:]}
    if softmax:
        out = {name: v[..., 0] if name in ("entropy", "mutual_information") else v for name, v in out.items()}
    return out


def explain_volume(predictor: Predictor, image: np.ndarray, layer: str, target: str, key: jax.Array,
                   mc_samples: int, faithfulness_steps: int, step: Callable[[str], None]) -> dict[str, Any]:
    """Every map of ``image`` (canonical ``(X, Y, Z, C)``) for a 3D model, in the canonical grid.

    ``key`` as in the 2D path: MC dropout uses ``fold_in(key, 1)``, the curves ``fold_in(key, 2)``.
    Returns ``probs (X, Y, Z, K)``, ``classes (X, Y, Z)`` uint8, ``cam (X, Y, Z)``, ``mc`` (dict
    of canonical maps, or None when the model has no dropout or ``mc_samples < 2``), ``curves``
    (or None without predicted tumor) and ``gradcam_window`` (its first voxel and edge in the
    canonical grid).
    """
    cfg, kind = predictor.cfg, predictor.target_kind
    prepared = patches.prepare_volume_3d(image, None, cfg.data)
    brain = preprocess.brain_mask(image)

    def to_volume(box_map: np.ndarray) -> np.ndarray:
        restored = patches.restore_box(np.asarray(box_map, np.float32), prepared.box)
        return restored * (brain if restored.ndim == 3 else brain[..., None])

    probs_box = predictor.volume_probabilities(prepared.image)
    probs = to_volume(probs_box)
    classes = kind.classes_from_output(probs) * brain
    step(f"segmented by sliding windows of {cfg.data.patch_size}^3 (overlap {cfg.infer.overlap}, {cfg.infer.blend})")

    size = cfg.data.patch_size
    origin = tumor_window_origin(probs_box, kind, size)
    window = patches.cut_patch(prepared.image, origin, size)[None]
    cam_window = np.asarray(gradcam(predictor.graphdef, predictor.params, predictor.batch_stats, window,
                                    layer, target, target_kind=kind))[0]
    cam = to_volume(paste_window(cam_window, origin, prepared.box.shape))
    step(f"3D Grad-CAM of layer {layer} ({target}) on the {size}^3 window at the predicted tumor")

    mc = None
    if cfg.model.dropout > 0 and mc_samples > 1:
        stats = mc_dropout_windows(predictor, prepared.image, jax.random.fold_in(key, 1), mc_samples)
        mc = {name: to_volume(value) for name, value in stats.items()}
        mc["entropy_wt"] = mc["entropy"][..., 0] if mc["entropy"].ndim == 4 else mc["entropy"]
        mc["variance_wt"] = mc["variance"][..., 0]
        step(f"MC dropout: {mc_samples} passes per window")
    else:
        step("MC dropout skipped: the model has no dropout (model.dropout = 0)")

    curves = None
    if classes.any():
        curves = faithfulness(predictor.graphdef, predictor.params, predictor.batch_stats, window,
                              cam_window[None], jax.random.fold_in(key, 2), steps=faithfulness_steps,
                              channel="WT", target_kind=kind, chunk=FAITHFULNESS_CHUNK)
    start = (np.asarray(prepared.box.start) + origin).astype(int).tolist()
    return {"probs": probs, "classes": classes, "cam": cam, "mc": mc, "curves": curves,
            "gradcam_window": {"start": start, "size": size}}
