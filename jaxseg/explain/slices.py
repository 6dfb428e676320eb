"""The explain pipeline's space of 2D models: a case as its brain slices (:class:`SliceSpace`).

The model sees the preprocessed axial slices that hold brain (its sampling's
``prepare_input``, :mod:`jaxseg.data.formats.sampling`: :func:`jaxseg.data.preprocess.prepare_volume`); every map is computed on those slices, a batch of the predictor's size at a
time (the last batch zero-padded: one compiled program, :mod:`jaxseg.infer.chunks`), and restored to the canonical volume
with the recorded geometry that prediction uses (0 off the brain).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxseg.data import preprocess
from jaxseg.explain.faithfulness_slices import faithfulness_slices
from jaxseg.explain.gradcam import gradcam_volume
from jaxseg.explain.layer_quality import normalise_map
from jaxseg.explain.maps import Saliency
from jaxseg.explain.model_maps import model_maps_volume
from jaxseg.explain.modality import modality_ablation, modality_attribution_maps, region_slices
from jaxseg.explain.sections import ModalitySection, modality_map_volumes
from jaxseg.explain.mc_shared import mc_dropout_shared
from jaxseg.infer.chunks import map_chunks
from jaxseg.infer.predict import Predictor
from jaxseg.target import target_for

# MC-dropout passes run at once per slice batch (benchmarks/explain.py --only mc, 155 slices of
# 128 px, 16 a batch; NOTES.md sections 10 and 14). All 20 in one vmap: 5.1 GB, 132.7 s (old masks);
# 5 at a time: 47.4 s, 1131 MB above base; 1 at a time: 45.0 s, 708 MB (torch's loop 800 MB).
MC_SLICE_CHUNK = 1
# Tumor slices per deletion/insertion call: each runs all (2 rankings x inner steps) pairs in one vmap.
# The lines below were measured with 21 linear steps (19 inner); the default is now 11 (9 inner).
# 16 slices of 128 px (672 passes at once) ran out of memory (std::bad_alloc, 23 GB machine) on a
# real case; jax.lax.map over 7 pairs at a time fit but took 160 s for 82 slices (lax.map was ~9x
# slower than one vmap here, as it was for integrated gradients), so fewer slices per vmap instead.
FAITHFULNESS_SLICE_BATCH = 2
# Slices per integrated-gradients call (8 steps x 3 regions): on a real case 16.8 ms per slice,
# step and region with 8 slices, 20.7 ms with 16 (the larger call's buffers cost more than they
# save); docs/explain.md, "What it costs".
ATTRIBUTION_BATCH = 8


class SliceSpace:
    """A canonical image ``(X, Y, Z, C)`` as the brain slices a 2D model sees.

    Attributes:
      brain: ``(X, Y, Z)`` bool, canonical.
      slices: ``(N, S, S, C)`` float32, the preprocessed slices holding brain.
      positions: ``(N,)`` int, their axial indices among the prepared slices.
    """

    def __init__(self, predictor: Predictor, image: np.ndarray):
        self.predictor = predictor
        self.target = target_for(predictor.cfg)
        # The predictor's sampling prepares the slices and restores maps (jaxseg.data.formats).
        self.model_input = predictor.sampling.prepare_input(image, predictor.cfg.data)
        self.prepared = self.model_input.prepared  # a preprocess.PreparedVolume
        self.brain = preprocess.brain_mask(image)
        self.positions = np.flatnonzero(self.prepared.brain_slices)
        self.slices = self.model_input.values[self.positions]

    def to_volume(self, per_slice: np.ndarray) -> np.ndarray:
        """``(N, S, S[, K])`` maps of the brain slices -> canonical ``(X, Y, Z[, K])``, 0 off-brain."""
        full = np.zeros((len(self.model_input.values), *per_slice.shape[1:]), np.float32)
        full[self.positions] = per_slice
        restored = self.model_input.restore(full)
        return restored * (self.brain if restored.ndim == 3 else self.brain[..., None])

    def probabilities(self) -> np.ndarray:
        """``(N, S, S, K)`` float32."""
        return self.predictor.slice_probabilities(self.slices)

    def gradcam(self, probabilities: np.ndarray, layer: str, target: str, normalise: str = "volume") -> Saliency:
        """Grad-CAM of every brain slice ``(N, S, S)``, divided by its maximum over the volume
        (``normalise='volume'``: no banding across slices) or over each slice (``'slice'``)."""
        p = self.predictor
        raw = gradcam_volume(p.graphdef, p.params, p.batch_stats, self.slices, layer, target,
                             target_kind=self.target.name, batch_size=p.batch_size, normalise=False)
        return Saliency(normalise_map(raw, normalise, axis=0))

    def model_maps(self) -> dict[str, np.ndarray]:
        """Attention gates / rollout of every brain slice (empty for a plain U-Net): ``(N, S, S)`` each."""
        p = self.predictor
        return model_maps_volume(p.graphdef, p.params, p.batch_stats, self.slices, self.target.name, p.batch_size)

    def modality(self, saliency: Saliency, modalities: tuple[str, ...], steps: int) -> ModalitySection:
        """Modality attribution on the slices where some region is predicted (the others add
        nothing to the shares: :func:`~jaxseg.explain.modality.region_slices`), and modality
        ablation on every brain slice (the fill is each sequence's mean over the volume's brain)."""
        p, kind, regions = self.predictor, self.target.name, list(self.target.region_names)
        model = (p.graphdef, p.params, p.batch_stats)
        chosen = region_slices(*model, self.slices, regions=regions, target_kind=kind, batch_size=p.batch_size)
        attribution, first = modality_attribution_maps(*model, self.slices[chosen], modalities=modalities,
                                                       regions=regions, steps=steps, target_kind=kind,
                                                       batch_size=min(p.batch_size, ATTRIBUTION_BATCH))
        ablation = modality_ablation(*model, self.slices, modalities=modalities, regions=regions, target_kind=kind,
                                     batch_size=p.batch_size)
        per_slice = np.zeros(self.slices.shape, np.float32)  # the attributed slices' maps; 0 on the others
        per_slice[chosen] = first
        return ModalitySection(attribution, ablation, steps=steps, samples=len(chosen),
                               maps=modality_map_volumes(self.to_volume(per_slice), modalities))

    def mc_dropout(self, key: jax.Array, samples: int) -> dict[str, np.ndarray]:
        """MC-dropout statistics of every brain slice (:func:`~jaxseg.explain.mc_shared.mc_dropout_shared`):
        slice batch ``i`` uses ``fold_in(key, i)``, the passes :data:`MC_SLICE_CHUNK` at a time."""
        p = self.predictor
        # The encoder runs once per slice batch, only the decoder per pass (mc_shared).
        return map_chunks(lambda i, padded: mc_dropout_shared(p.graphdef, p.params, p.batch_stats, padded,
                                                              jax.random.fold_in(key, i), samples, self.target.name,
                                                              chunk=MC_SLICE_CHUNK, temperature=p.temperature),
                          self.slices, batch_size=p.batch_size, empty={})

    def faithfulness(self, probabilities: np.ndarray, cam: np.ndarray, saliency: Saliency, key: jax.Array,
                     steps: int, spacing: str, slices: int) -> dict[str, Any] | None:
        """Deletion/insertion on every brain slice with predicted tumor (``slices`` 0), or on the
        ``slices`` with the largest predicted tumor (in canonical ``probabilities``), each slice
        against its own random ranking
        (:func:`~jaxseg.explain.faithfulness_slices.faithfulness_slices`): the mean curves, their
        AUCs, and on which fraction of those slices the map beats random. Slices are ranked by
        the map in model space (``saliency.model_map``), the one Grad-CAM computed. None if no
        slice has predicted tumor."""
        whole_tumor = self.target.whole_tumor_probability(probabilities)
        area = (whole_tumor > 0.5).sum(axis=(0, 1))[self.positions]
        order = np.flatnonzero(area > 0)
        if slices > 0:
            order = np.argsort(-area, kind="stable")[:slices]
            order = np.sort(order[area[order] > 0])
        if not len(order):
            return None
        p = self.predictor
        result = faithfulness_slices(p.graphdef, p.params, p.batch_stats, self.slices[order],
                                     saliency.model_map[order], key, steps=steps, spacing=spacing, channel="WT",
                                     target_kind=self.target.name, batch_size=FAITHFULNESS_SLICE_BATCH)
        if not result["n"]:
            return None
        # The tumor slices as axial indices of the canonical grid (restore follows the prepared slices).
        return {**result, "slices": [int(self.positions[order[i]]) for i in result["slices"]]}

    def segmented_message(self) -> str:
        return "segmented"

    def gradcam_message(self, layer: str, target: str) -> str:
        return f"Grad-CAM of layer {layer} ({target}) on {len(self.positions)} slices"

    def mc_message(self, samples: int) -> str:
        return f"MC dropout: {samples} passes"
