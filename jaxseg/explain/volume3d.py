"""The explain pipeline's space of 3D models (``unet3d``): a case as its brain box, seen through
sliding windows (:class:`WindowSpace`).

The 3D model sees the brain box of :func:`jaxseg.data.patches.prepare_volume_3d`, so the maps are
computed there and restored with :func:`~jaxseg.data.patches.restore_box` (0 off the brain), in
the same canonical grid as the 2D space's maps (:mod:`jaxseg.explain.slices`):

- **probabilities** of the whole volume by sliding windows (:mod:`jaxseg.infer.sliding_window`,
  the run's ``[infer]`` settings), exactly as ``jaxseg predict`` computes them;
- **Grad-CAM** (3D, trilinear upsampling) on one window of the training patch size centred on
  the predicted whole tumor (on the brain box's centre when none is predicted). Grad-CAM
  explains one score of one forward pass; blending per-window maps would mix maps normalised
  against different scores, so the map is 0 outside that window (the summary records where it
  is). With a 128^3 window the brain box of a BraTS case is mostly covered;
- **MC dropout** per sliding window: :func:`~jaxseg.explain.mc_shared.mc_dropout_shared` (the N
  passes vmapped over keys, ``chunk`` at a time) on each window batch, with key
  ``fold_in(key, batch number)`` (the number passed by
  :func:`~jaxseg.infer.sliding_window.sliding_window_mean`); the per-window mean, variance, entropy and mutual information
  are blended with the same window weights as the probabilities (a weighted mean of the
  windows' statistics, not the statistics of pooled samples);
- **deletion/insertion** curves in 3D on the Grad-CAM window (voxels ranked by the 3D map).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxseg.data import patches, preprocess
from jaxseg.explain.faithfulness import faithfulness
from jaxseg.explain.gradcam import gradcam
from jaxseg.explain.layer_quality import normalise_map
from jaxseg.explain.maps import Saliency
from jaxseg.explain.modality import modality_ablation, modality_attribution_maps
from jaxseg.explain.sections import ModalitySection, modality_map_volumes
from jaxseg.explain.mc_shared import mc_dropout_shared
from jaxseg.infer import sliding_window
from jaxseg.infer.predict import Predictor
from jaxseg import target as target_lib

# MC passes and deletion/insertion steps evaluated at once on a window: each holds every
# activation of a 128^3 forward pass, so a handful at a time bounds memory.
MC_CHUNK = 2
FAITHFULNESS_CHUNK = 2


def tumor_window_origin(probs: np.ndarray, target_kind: str, size: int) -> np.ndarray:
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
    """MC-dropout statistics of a prepared volume ``(X', Y', Z', C)`` by sliding windows; window
    batch ``b`` uses ``fold_in(key, b)``.

    Returns ``mean``, ``variance`` ``(X', Y', Z', K)``; ``entropy``, ``mutual_information``
    ``(X', Y', Z', K)`` for sigmoid targets, ``(X', Y', Z')`` for softmax ones; float32.
    """
    cfg, target = predictor.cfg, target_lib.target_for(predictor.cfg)
    sharding = NamedSharding(predictor.mesh, P("data"))

    def forward(windows: np.ndarray, batch_number: int) -> jax.Array:
        stats = mc_dropout_shared(predictor.graphdef, predictor.params, predictor.batch_stats,
                                  jax.device_put(windows, sharding), jax.random.fold_in(key, batch_number),
                                  n_samples, target.name, chunk=MC_CHUNK, temperature=predictor.temperature)
        per_class = [stats[k] if stats[k].ndim == 5 else stats[k][..., None]
                     for k in ("mean", "variance", "entropy", "mutual_information")]
        return jnp.concatenate(per_class, axis=-1)

    i = cfg.infer
    stacked = sliding_window.sliding_window_mean(
        forward, volume, cfg.data.patch_size, overlap=i.overlap, blend=i.blend,
        window_batch=i.window_batch, batch_multiple=predictor.mesh.size)
    k = target.channels
    softmax = target.activation == "softmax"  # one entropy over all classes, not one per channel
    e = 1 if softmax else k
    out = {"mean": stacked[..., :k], "variance": stacked[..., k:2 * k],
           "entropy": stacked[..., 2 * k:2 * k + e], "mutual_information": stacked[..., 2 * k + e:]}
    if softmax:
        out = {name: v[..., 0] if name in ("entropy", "mutual_information") else v for name, v in out.items()}
    return out


class WindowSpace:
    """A canonical image ``(X, Y, Z, C)`` as the brain box a 3D model sees by sliding windows.

    Attributes:
      brain: ``(X, Y, Z)`` bool, canonical.
      model_input: the brain box ``(X', Y', Z', C)`` (:func:`~jaxseg.data.patches.prepare_volume_3d`
        by the predictor's sampling) and the way back.
    """

    def __init__(self, predictor: Predictor, image: np.ndarray):
        self.predictor = predictor
        self.target = target_lib.target_for(predictor.cfg)
        # The predictor's sampling cuts the brain box and restores maps (jaxseg.data.formats).
        self.model_input = predictor.sampling.prepare_input(image, predictor.cfg.data)
        self.prepared = self.model_input.prepared  # a patches.PreparedVolume3D
        self.brain = preprocess.brain_mask(image)
        self.size = predictor.cfg.data.patch_size

    def to_volume(self, box_map: np.ndarray) -> np.ndarray:
        """``(X', Y', Z'[, K])`` maps of the box -> canonical ``(X, Y, Z[, K])``, 0 off-brain."""
        restored = self.model_input.restore(np.asarray(box_map, np.float32))
        return restored * (self.brain if restored.ndim == 3 else self.brain[..., None])

    def probabilities(self) -> np.ndarray:
        """``(X', Y', Z', K)`` float32 by sliding windows (the run's ``[infer]`` settings)."""
        return self.predictor.volume_probabilities(self.model_input.values)

    def gradcam(self, probabilities: np.ndarray, layer: str, target: str, normalise: str = "volume") -> Saliency:
        """3D Grad-CAM of the window centred on the predicted tumor in ``probabilities`` (the
        box's), pasted into zeros of the box; divided by its maximum over the window
        (``normalise='volume'``) or over each axial slice of it (``'slice'``)."""
        p = self.predictor
        origin = tumor_window_origin(probabilities, self.target.name, self.size)
        window = patches.cut_patch(self.model_input.values, origin, self.size)[None]
        cam_window = np.asarray(gradcam(p.graphdef, p.params, p.batch_stats, window, layer, target,
                                        target_kind=self.target.name, normalise=False))[0]
        cam_window = normalise_map(cam_window, normalise, axis=2)
        start = (np.asarray(self.prepared.box.start) + origin).astype(int).tolist()
        return Saliency(paste_window(cam_window, origin, self.prepared.box.shape), images=window,
                        maps=cam_window[None], notes={"gradcam_window": {"start": start, "size": self.size}})

    def model_maps(self) -> dict[str, np.ndarray]:
        """None yet: the 3D models carry no attention maps."""
        return {}

    def modality(self, saliency: Saliency, modalities: tuple[str, ...], steps: int) -> ModalitySection:
        """Modality attribution and ablation on the Grad-CAM window (the one at the predicted
        tumor): integrated gradients of a 128^3 window per region cost ``steps`` forward and
        backward passes each, the whole box by windows would cost that per window."""
        p, kind, regions = self.predictor, self.target.name, list(self.target.region_names)
        model = (p.graphdef, p.params, p.batch_stats)
        attribution, first = modality_attribution_maps(*model, saliency.images, modalities=modalities,
                                                       regions=regions, steps=steps, target_kind=kind, batch_size=1,
                                                       chunk=FAITHFULNESS_CHUNK)
        ablation = modality_ablation(*model, saliency.images, modalities=modalities, regions=regions,
                                     target_kind=kind, batch_size=1)
        # The window's maps at its place in the box (0 elsewhere), then on the canonical grid.
        origin = np.asarray(saliency.notes["gradcam_window"]["start"]) - np.asarray(self.prepared.box.start)
        box = paste_window(first[0], origin, (*self.prepared.box.shape, first.shape[-1]))
        return ModalitySection(attribution, ablation, steps=steps, samples=1,
                               maps=modality_map_volumes(self.to_volume(box), modalities))

    def mc_dropout(self, key: jax.Array, samples: int) -> dict[str, np.ndarray]:
        """:func:`mc_dropout_windows` of the box."""
        return mc_dropout_windows(self.predictor, self.model_input.values, key, samples)

    def faithfulness(self, probabilities: np.ndarray, cam: np.ndarray, saliency: Saliency, key: jax.Array,
                     steps: int, spacing: str, slices: int) -> dict[str, Any] | None:
        """Deletion/insertion in 3D on the Grad-CAM window, voxels ranked by its 3D map; None
        without predicted tumor in the canonical ``probabilities``. ``cam`` and ``slices``
        are not needed here."""
        if not self.target.classes_from_output(probabilities).any():
            return None
        p = self.predictor
        return faithfulness(p.graphdef, p.params, p.batch_stats, saliency.images, saliency.maps, key, steps=steps,
                            spacing=spacing, channel="WT", target_kind=self.target.name, chunk=FAITHFULNESS_CHUNK)

    def segmented_message(self) -> str:
        i = self.predictor.cfg.infer
        return f"segmented by sliding windows of {self.size}^3 (overlap {i.overlap}, {i.blend})"

    def gradcam_message(self, layer: str, target: str) -> str:
        return f"3D Grad-CAM of layer {layer} ({target}) on the {self.size}^3 window at the predicted tumor"

    def mc_message(self, samples: int) -> str:
        return f"MC dropout: {samples} passes per window"
