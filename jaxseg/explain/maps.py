"""The explain pipeline, once for 2D-slice and 3D-volume models: every map of a case as one value.

:func:`compute_maps` runs the same steps for every model: probabilities, internal classes,
Grad-CAM, the maps the model carries itself, MC-dropout uncertainty, deletion/insertion curves.
Where a model sees the case (the brain slices of a 2D model, the brain box of a 3D model cut
into sliding windows) and how its maps come back to the canonical grid is the one thing that
differs: a :class:`ModelSpace` decides it (:class:`jaxseg.explain.slices.SliceSpace`,
:class:`jaxseg.explain.volume3d.WindowSpace`; ``jaxseg.explain.run.SPACES`` picks one by the
model's spatial rank). The result, :class:`ExplainMaps`, is what the JSON summary, the NIfTI files and the report
are written from.

Keys: MC dropout uses ``fold_in(key, 1)``, the curves ``fold_in(key, 2)``; each space passes
sub-keys on explicitly (per slice batch or per window batch), so the maps are a pure function
of the case, the model and ``key``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import jax
import numpy as np

from jaxseg.errors import JaxsegError
from jaxseg.explain.captions import MODALITY_NAMES
from jaxseg.explain.sections import (CalibrationSection, FaithfulnessSlicesSection, ModalitySection, ReviewSection,
                                     calibration_section, review_section, split_faithfulness)
from jaxseg.target import TargetKind


@dataclasses.dataclass(frozen=True)
class Uncertainty:
    """MC-dropout statistics in the canonical grid (:func:`jaxseg.explain.uncertainty.mc_dropout`).

    Attributes:
      mean, variance: ``(X, Y, Z, K)`` float32 over the passes.
      entropy, mutual_information: ``(X, Y, Z, K)`` for sigmoid targets, ``(X, Y, Z)`` for
        softmax ones (over all classes), float32 nats.
      samples: the number of passes.
    """
    mean: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    samples: int

    @property
    def whole_tumor_entropy(self) -> np.ndarray:
        """``(X, Y, Z)``: channel 0 is WT for sigmoid targets; a softmax model's entropy is over
        all classes already. The uncertainty the captions and the report show."""
        return self.entropy[..., 0] if self.entropy.ndim == 4 else self.entropy

    @property
    def whole_tumor_variance(self) -> np.ndarray:
        """``(X, Y, Z)`` variance of channel 0 (WT; for softmax the background, whose variance is
        that of 1 - p_background)."""
        return self.variance[..., 0]

    def volumes(self) -> dict[str, np.ndarray]:
        """The four statistics by name (``mean``, ``variance``, ``entropy``, ``mutual_information``)."""
        return {"mean": self.mean, "variance": self.variance, "entropy": self.entropy,
                "mutual_information": self.mutual_information}


@dataclasses.dataclass(frozen=True)
class Saliency:
    """A Grad-CAM map and what the faithfulness curves of a space need to perturb it.

    Attributes:
      model_map: the map in the space's own grid (2D ``(N, S, S)`` per brain slice, 3D the box
        ``(X', Y', Z')``), restored by :meth:`ModelSpace.to_volume`.
      images, maps: the model inputs ``(B, *spatial, C)`` it was computed on and their maps
        ``(B, *spatial)``, when the curves perturb exactly those (3D: the one window); None when
        the space derives them from the canonical map (2D).
      notes: summary entries of this space (3D: ``gradcam_window``).
    """
    model_map: np.ndarray
    images: np.ndarray | None = None
    maps: np.ndarray | None = None
    notes: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class ModelSpace(Protocol):
    """A case as one kind of model sees it, and the way back to the canonical grid.

    Every method's arrays are in the space's own grid unless it says canonical; ``to_volume``
    restores one to canonical ``(X, Y, Z[, K])`` float32, 0 off the brain.
    """
    brain: np.ndarray  # (X, Y, Z) bool, canonical

    def to_volume(self, model_map: np.ndarray) -> np.ndarray: ...
    def probabilities(self) -> np.ndarray: ...
    def gradcam(self, probabilities: np.ndarray, layer: str, target: str, normalise: str = "volume") -> Saliency: ...
    def model_maps(self) -> dict[str, np.ndarray]: ...
    def modality(self, saliency: Saliency, modalities: tuple[str, ...], steps: int) -> ModalitySection: ...
    def mc_dropout(self, key: jax.Array, samples: int) -> dict[str, np.ndarray]: ...
    def faithfulness(self, probabilities: np.ndarray, cam: np.ndarray, saliency: Saliency, key: jax.Array,
                     steps: int, spacing: str, slices: int) -> dict[str, Any] | None: ...
    # What the progress messages say about this space.
    def segmented_message(self) -> str: ...
    def gradcam_message(self, layer: str, target: str) -> str: ...
    def mc_message(self, samples: int) -> str: ...


@runtime_checkable
class SummarySection(Protocol):
    """A value that is a card of the report and an entry of the JSON summary (e.g. a calibration
    table): an :class:`ExplainMaps` field holding one is shown and written without further code.

    Attributes:
      template: the card's template, ``jaxseg/report/templates/sections/<template>.html.j2``
        (it reads ``section.context``).
    """
    template: str

    def report_context(self) -> Mapping[str, Any]: ...  # what the template shows
    def summary(self) -> Mapping[str, Any]: ...  # keys merged into the JSON summary


@dataclasses.dataclass(frozen=True)
class ExplainMaps:
    """Every map of one case, canonical ``(X, Y, Z[, K])`` (docs/architecture.md), 0 off the brain.

    Attributes:
      target: the model's target kind (channels, regions, conversions).
      probabilities: ``(X, Y, Z, K)`` float32.
      classes: ``(X, Y, Z)`` uint8 internal classes (0 bg, 1 NCR, 2 ED, 3 ET).
      brain: ``(X, Y, Z)`` bool.
      layer, gradcam_target: what Grad-CAM explains (a layer name, a
        :func:`~jaxseg.explain.gradcam.parse_target` string).
      gradcam: ``(X, Y, Z)`` float32 in [0, 1] (normalised per volume or per slice).
      layer_maps: Grad-CAM of further layers to compare (``{layer: (X, Y, Z)}``, same target and
        normalisation; a layer whose map is identically zero is left out and named in
        ``notes['gradcam_zero_layers']``).
      review: slices to review first (with MC dropout); calibration: against the ground truth
        (when the case has one). Both summary sections.
      faithfulness_slices: the fractions of tumor slices on which the map beats random (2D).
      model_maps: maps the model carries (``att0``..., ``rollout``), ``(X, Y, Z)`` float32 each.
      uncertainty: MC dropout, or None (no dropout in the model, or fewer than 2 passes).
      curves: the :func:`~jaxseg.explain.faithfulness.faithfulness` result, or None (no tumor).
      notes: summary entries of the model's space (3D: ``gradcam_window``).
      modality: modality attribution and ablation (a summary section), None when not computed
        (``attribution_steps`` 0).

    Adding a map: one field here (computed in :func:`compute_maps`), one line in
    :meth:`nifti_volumes` to write it and one in :meth:`overlays` to show it. Adding a summary
    section: one field here whose value is a :class:`SummarySection`, and its template.
    """
    target: TargetKind
    probabilities: np.ndarray
    classes: np.ndarray
    brain: np.ndarray
    layer: str
    gradcam_target: str
    gradcam: np.ndarray
    model_maps: Mapping[str, np.ndarray]
    uncertainty: Uncertainty | None
    curves: Mapping[str, Any] | None
    notes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    modality: ModalitySection | None = None
    layer_maps: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    review: ReviewSection | None = None
    calibration: CalibrationSection | None = None
    faithfulness_slices: FaithfulnessSlicesSection | None = None

    @property
    def whole_tumor_uncertainty(self) -> np.ndarray | None:
        """``(X, Y, Z)`` entropy of the whole tumor, or None without MC dropout (captions use it)."""
        return None if self.uncertainty is None else self.uncertainty.whole_tumor_entropy

    def sections(self) -> list[SummarySection]:
        """The fields that are summary sections (set, not None), in field order."""
        return [value for f in dataclasses.fields(self)
                if isinstance(value := getattr(self, f.name), SummarySection)]

    def nifti_volumes(self) -> dict[str, np.ndarray]:
        """What ``explain`` writes as float32 NIfTI beside the segmentation, by file key
        (``<case>_<key>.nii.gz``; ``probabilities`` is ``_prob``, ``gradcam`` ``_gradcam``)."""
        out = {"probabilities": self.probabilities, "gradcam": self.gradcam}
        if self.uncertainty is not None:
            out.update({f"mc_{name}": volume for name, volume in self.uncertainty.volumes().items()})
        out.update(self.model_maps)  # att0.., rollout
        if self.modality is not None:  # the whole tumor's attribution in each sequence
            out.update({f"ig_{name}": volume for name, volume in self.modality.maps.items()})
        return out

    def overlays(self, truth: np.ndarray | None) -> dict[str, np.ndarray]:
        """The report's map overlays, in sidebar order: label -> ``(X, Y, Z)`` float32."""
        out = {"Grad-CAM": self.gradcam}
        if truth is not None:  # the map restricted to the annotated tumor
            out["Grad-CAM x GT"] = self.gradcam * (truth > 0)
        for name, volume in self.layer_maps.items():  # the viewer switches among these layers
            out[f"Grad-CAM {name}"] = volume
        for name, volume in self.model_maps.items():
            out["Attention rollout" if name == "rollout" else f"Attention gate {name[3:]}"] = volume
        if self.uncertainty is not None:
            out["MC variance"] = self.uncertainty.whole_tumor_variance
            out["Entropy"] = self.uncertainty.whole_tumor_entropy
        if self.modality is not None:  # which sequence drove the whole tumor, where
            for name, volume in self.modality.maps.items():
                out[f"WT attribution: {MODALITY_NAMES.get(name, name)}"] = volume
        regions = self.target.region_probabilities(self.probabilities)
        for i, region in enumerate(self.target.region_names):
            out[f"P({region})"] = regions[..., i]
        return out


def compute_maps(space: ModelSpace, target: TargetKind, *, layer: str, gradcam_target: str, key: jax.Array,
                 mc_samples: int, with_dropout: bool, faithfulness_steps: int, faithfulness_slices: int,
                 faithfulness_spacing: str = "linear",
                 modalities: tuple[str, ...] = (), attribution_steps: int = 0, normalise: str = "volume",
                 compare_layers: tuple[str, ...] = (), truth: np.ndarray | None = None,
                 step: Callable[[str], None] = lambda message: None) -> ExplainMaps:
    """Every map of the case ``space`` holds, the same steps for every kind of model.

    Args:
      space: the case in the model's own grid (``jaxseg.explain.run.SPACES``).
      target: the model's target kind.
      layer, gradcam_target: the Grad-CAM layer and score (``'mean'``, ``'predicted:TC'``...).
      key: the PRNG key; MC dropout gets ``fold_in(key, 1)``, the curves ``fold_in(key, 2)``.
      mc_samples: MC-dropout passes; skipped unless ``with_dropout`` and ``mc_samples > 1``.
      faithfulness_steps, faithfulness_spacing: the fractions of each deletion/insertion curve
        (:func:`~jaxseg.explain.faithfulness.curve_fractions`).
      faithfulness_slices: 2D: 0 = the curves use every slice with predicted tumor, N = only the
        N with the largest predicted tumor.
      modalities: the input channels' names; attribution_steps: integrated-gradient steps of the
        modality attribution (0: not computed).
      normalise: Grad-CAM divided by its maximum over the ``'volume'`` or each ``'slice'``.
      compare_layers: further Grad-CAM layers the report offers (``layer_maps``).
      truth: ``(X, Y, Z)`` uint8 internal classes of the ground truth (canonical), or None: with
        it, the calibration of the (MC-mean) probabilities and the uncertainty-error AUROC.
      step: hears one line per step.
    Returns:
      the :class:`ExplainMaps` of the case.
    """
    probabilities_model = space.probabilities()
    probabilities = space.to_volume(probabilities_model)
    classes = target.classes_from_output(probabilities) * space.brain
    step(space.segmented_message())

    saliency = space.gradcam(probabilities_model, layer, gradcam_target, normalise)
    if not np.any(saliency.model_map > 0):
        raise JaxsegError(f"--layer {layer}: its Grad-CAM ({gradcam_target}) is identically zero on this case (the "
                          f"score's gradient does not reach it, or it only lowers the score); choose another layer")
    cam = space.to_volume(saliency.model_map)
    step(space.gradcam_message(layer, gradcam_target))
    layer_maps, zero_layers = {}, []
    for other in (name for name in compare_layers if name != layer):
        other_map = space.gradcam(probabilities_model, other, gradcam_target, normalise).model_map
        if np.any(other_map > 0):
            layer_maps[other] = space.to_volume(other_map)
        else:
            zero_layers.append(other)
    if layer_maps:
        step(f"Grad-CAM of {', '.join(layer_maps)} to compare")
    # Maps the model carries itself: attention-gate coefficients, transformer attention rollout.
    model_maps = {name: space.to_volume(value) for name, value in space.model_maps().items()}
    if model_maps:
        step(f"model maps: {', '.join(model_maps)}")

    modality = None
    if attribution_steps > 0:
        modality = space.modality(saliency, tuple(modalities), attribution_steps)
        step(f"modality attribution: {'; '.join(modality.captions())}")

    uncertainty = None
    if with_dropout and mc_samples > 1:
        stats = {name: space.to_volume(value) for name, value in space.mc_dropout(jax.random.fold_in(key, 1), mc_samples).items()}
        uncertainty = Uncertainty(**stats, samples=mc_samples)
        step(space.mc_message(mc_samples))
    else:
        step("MC dropout skipped: the model has no dropout (model.dropout = 0)")

    review = None
    if uncertainty is not None and classes.shape[2] > 1:  # a one-slice image (2D source) has nothing to rank
        review = review_section(uncertainty.whole_tumor_entropy, classes > 0)
        step(f"slices to review first: {', '.join(str(s['slice']) for s in review.slices[:5]) or 'none'}")
    calibration = None
    if truth is not None:
        source = probabilities if uncertainty is None else uncertainty.mean
        entropy = None if uncertainty is None else uncertainty.entropy
        calibration = calibration_section(
            target.region_probabilities(source), target.region_masks_from_classes(truth),
            target.region_masks_from_classes(classes), space.brain, target.region_names,
            entropy,  # sigmoid: one per channel = per region; softmax: one over the classes
            "single_pass" if uncertainty is None else "mc_mean")
        step("calibration against the ground truth: ECE (relevant voxels) " + ", ".join(
            f"{r} {v['ece_relevant']:.3f}" for r, v in calibration.regions.items() if v["ece_relevant"] is not None))

    curves, per_slice = split_faithfulness(space.faithfulness(
        probabilities, cam, saliency, jax.random.fold_in(key, 2), faithfulness_steps, faithfulness_spacing,
        faithfulness_slices))
    if per_slice is not None:
        step(f"saliency beats random on {per_slice.n} tumor slices: deletion {per_slice.deletion_beats_random:.0%}, "
             f"insertion {per_slice.insertion_beats_random:.0%}")
    step("deletion/insertion curves" if curves else "no tumor predicted: no deletion/insertion curves")
    return ExplainMaps(target=target, probabilities=probabilities, classes=classes, brain=space.brain, layer=layer,
                       gradcam_target=gradcam_target, gradcam=cam, model_maps=model_maps, uncertainty=uncertainty,
                       curves=curves, notes={**saliency.notes, **({"gradcam_zero_layers": zero_layers} if zero_layers else {})},
                       modality=modality, layer_maps=layer_maps, review=review, calibration=calibration,
                       faithfulness_slices=per_slice)
