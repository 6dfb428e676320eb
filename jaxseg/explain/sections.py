"""The summary sections of `jaxseg explain` (issue #17): each is a JSON entry and a report card.

Every class here satisfies :class:`jaxseg.explain.maps.SummarySection` (``template``,
``report_context()``, ``summary()``): an :class:`~jaxseg.explain.maps.ExplainMaps` field holding
one is written to the JSON summary and shown as ``jaxseg/report/templates/sections/<template>.html.j2``
without further code. They hold plain floats, lists and dicts (already JSON), computed by the
library functions named in each docstring; the report context only formats them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxseg.explain import calibration, captions, review


@dataclasses.dataclass(frozen=True)
class ModalitySection:
    """Which MRI sequence drove each region.

    Attributes:
      attribution: ``{region: {modality: share} | None}``
        (:func:`jaxseg.explain.modality.modality_attribution`, shares summing to 1; None = region
        predicted nowhere).
      ablation: :func:`jaxseg.explain.modality.modality_ablation` (score and Dice drop when a
        sequence is replaced by its brain mean).
      steps: integrated-gradient steps; slices: how many slices (2D) or windows (3D) were attributed.
      maps: ``{modality: (X, Y, Z) float32}`` canonical, the whole tumor's attribution in each
        sequence (:func:`jaxseg.explain.modality.modality_attribution_maps`), on one scale for
        all sequences (so their brightness compares; :func:`modality_map_volumes`); 0 where nothing was
        attributed (slices without predicted tumor, outside the 3D window). Shown in the viewer.
    """
    attribution: Mapping[str, Mapping[str, float] | None]
    ablation: Mapping[str, Any]
    steps: int
    samples: int
    template: str = "modality"
    maps: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def captions(self) -> list[str]:
        """One line per region, ``'enhancing tumor: mainly T1ce (64%)'``."""
        return [captions.modality_caption(region, shares) for region, shares in self.attribution.items()]

    def summary(self) -> dict[str, Any]:
        return {"modality_attribution": dict(self.attribution), "modality_ablation": dict(self.ablation),
                "modality_captions": self.captions()}

    def report_context(self) -> dict[str, Any]:
        rows = []
        for (region, shares), caption in zip(self.attribution.items(), self.captions()):
            ablation = self.ablation.get(region) or {}
            bars = [{"modality": captions.MODALITY_NAMES.get(m, m), "share": share, "percent": f"{share:.0%}",
                     "width": f"{100 * share:.1f}%",
                     "dice_drop": (f"{ablation[m]['dice_drop']:.2f}" if m in ablation else "–")}
                    for m, share in (shares or {}).items()]
            rows.append({"region": region, "long": captions.REGION_NAMES.get(region, region), "caption": caption,
                         "bars": bars})
        return {"regions": rows, "steps": self.steps, "samples": self.samples}


# Attribution maps are spiky (a few voxels hold the largest values): they are shown divided by
# this percentile of the attributed voxels of all sequences, clipped to 1, so the rest is visible.
MODALITY_MAP_PERCENTILE = 99.5


def modality_map_volumes(volume: np.ndarray, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """``(X, Y, Z, C)`` canonical attribution -> ``{modality: (X, Y, Z) float32}`` in [0, 1], all
    divided by one scale, the :data:`MODALITY_MAP_PERCENTILE` th percentile of the nonzero values
    of every sequence, and clipped to 1 (:attr:`ModalitySection.maps`)."""
    volume = np.asarray(volume, np.float32)
    attributed = volume[volume > 0]
    scale = float(np.percentile(attributed, MODALITY_MAP_PERCENTILE)) if attributed.size else 0.0
    scaled = np.minimum(volume / scale, np.float32(1)) if scale > 0 else volume
    return {m: np.ascontiguousarray(scaled[..., c]) for c, m in enumerate(modalities)}


@dataclasses.dataclass(frozen=True)
class ReviewSection:
    """Slices to review first (:func:`jaxseg.explain.review.slices_to_review`): axial slices of the
    canonical grid ranked by MC-dropout entropy mass inside and around the predicted tumor.

    Attributes:
      slices: ``[{'slice': z, 'score': mass, 'share': fraction}]``, best first (may be empty).
      margin: voxels around the predicted tumor that count.
    """
    slices: list[dict[str, Any]]
    margin: int
    template: str = "review"

    def summary(self) -> dict[str, Any]:
        return {"slices_to_review": list(self.slices)}

    def report_context(self) -> dict[str, Any]:
        return {"margin": self.margin,
                "entries": [{"slice": s["slice"], "share": f"{s['share']:.0%}", "score": f"{s['score']:.1f}"}
                          for s in self.slices]}


def review_section(uncertainty: np.ndarray, predicted: np.ndarray, *, margin: int = 3, top: int = 10
                   ) -> ReviewSection:
    """:class:`ReviewSection` of ``uncertainty (X, Y, Z)`` (whole-tumor entropy) near the predicted
    tumor ``predicted (X, Y, Z)`` bool, axial slices (axis 2)."""
    return ReviewSection(review.slices_to_review(uncertainty, predicted, margin=margin, top=top, axis=2), margin)


def _json_bins(bins: Mapping[str, np.ndarray]) -> dict[str, list]:
    """Reliability bins as JSON lists (NaN of an empty bin -> None)."""
    return {name: [None if not np.isfinite(v) else (int(v) if name == "count" else float(v)) for v in values]
            for name, values in bins.items()}


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class CalibrationSection:
    """How far the predicted probabilities can be trusted, against the ground truth.

    Attributes:
      regions: ``{region: {'ece', 'ece_relevant', 'bins', 'bins_relevant'}}``
        (:func:`~jaxseg.explain.calibration.expected_calibration_error` over the brain and over
        :func:`~jaxseg.explain.calibration.relevant_mask`; bins of
        :func:`~jaxseg.explain.calibration.reliability_bins`, JSON lists, None for empty bins).
      error_auroc: ``{region: AUROC | None}`` of the voxel uncertainty as a detector of voxel
        errors (:func:`~jaxseg.explain.calibration.error_detection_auroc`); empty without MC dropout.
      source: ``'mc_mean'`` (MC-dropout mean probabilities) or ``'single_pass'``.
    """
    regions: Mapping[str, Mapping[str, Any]]
    error_auroc: Mapping[str, float | None]
    source: str
    template: str = "calibration"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"calibration": {"source": self.source, **self.regions}}
        if self.error_auroc:
            out["uncertainty_error_auroc"] = dict(self.error_auroc)
        return out

    def report_context(self) -> dict[str, Any]:
        size, pad = 160, 18  # the SVG reliability diagram: [0, 1]^2 in a size x size box
        rows = []
        for region, entry in self.regions.items():
            bins = entry["bins_relevant"]
            points = [{"x": f"{pad + c * size:.1f}", "y": f"{pad + (1 - a) * size:.1f}", "count": n,
                       "r": f"{1.5 + 3.5 * (n / max(max(bins['count']), 1)) ** 0.5:.1f}"}
                      for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n]
            fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
            rows.append({"region": region, "long": captions.REGION_NAMES.get(region, region),
                         "ece": fmt(entry["ece"]), "ece_relevant": fmt(entry["ece_relevant"]),
                         "auroc": fmt(self.error_auroc.get(region)) if self.error_auroc else "–",
                         "points": points, "polyline": " ".join(f"{p['x']},{p['y']}" for p in points)})
        return {"rows": rows, "size": size, "pad": pad, "box": size + 2 * pad,
                "source": "MC-dropout mean" if self.source == "mc_mean" else "single-pass",
                "with_auroc": bool(self.error_auroc)}


def calibration_section(probabilities: np.ndarray, truth_regions: np.ndarray, predicted_regions: np.ndarray,
                        brain: np.ndarray, region_names: Sequence[str], uncertainty: np.ndarray | None,
                        source: str, n_bins: int = 15) -> CalibrationSection:
    """:class:`CalibrationSection` of one case.

    Args:
      probabilities: ``(X, Y, Z, R)`` region probabilities (MC mean, or the single pass).
      truth_regions, predicted_regions: ``(X, Y, Z, R)`` bool region masks.
      brain: ``(X, Y, Z)`` bool, the voxels scored.
      region_names: R names.
      uncertainty: ``(X, Y, Z, R)`` per-region uncertainty (or ``(X, Y, Z)`` one for all), or None.
      source: ``'mc_mean'`` or ``'single_pass'``.
    """
    regions: dict[str, dict[str, Any]] = {}
    aurocs: dict[str, float | None] = {}
    for r, name in enumerate(region_names):
        p, y = probabilities[..., r], truth_regions[..., r]
        relevant = calibration.relevant_mask(p, y, within=brain)
        regions[name] = {
            "ece": _finite_or_none(calibration.expected_calibration_error(p, y, brain, n_bins)),
            "ece_relevant": _finite_or_none(calibration.expected_calibration_error(p, y, relevant, n_bins)),
            "relevant_voxels": int(relevant.sum()),
            "bins": _json_bins(calibration.reliability_bins(p, y, brain, n_bins)),
            "bins_relevant": _json_bins(calibration.reliability_bins(p, y, relevant, n_bins))}
        if uncertainty is not None:
            u = uncertainty if uncertainty.ndim == 3 else uncertainty[..., r]
            aurocs[name] = _finite_or_none(calibration.error_detection_auroc(u, predicted_regions[..., r] != y, brain))
    return CalibrationSection(regions, aurocs, source)


@dataclasses.dataclass(frozen=True)
class FaithfulnessSlicesSection:
    """On how many tumor slices the saliency map beats a random ranking
    (:func:`jaxseg.explain.faithfulness_slices.faithfulness_slices`).

    Attributes:
      deletion_beats_random, insertion_beats_random: fractions of the ``n`` tumor slices (None if 0).
      n: tumor slices scored; slices: their indices (model-space order, see the space).
    """
    deletion_beats_random: float | None
    insertion_beats_random: float | None
    n: int
    slices: list[int]
    template: str = "faithfulness_slices"

    def summary(self) -> dict[str, Any]:
        return {"faithfulness_slices": {"deletion_beats_random": self.deletion_beats_random,
                                        "insertion_beats_random": self.insertion_beats_random, "n": self.n}}

    def report_context(self) -> dict[str, Any]:
        fmt = lambda v: "–" if v is None else f"{v:.0%}"  # noqa: E731
        return {"deletion": fmt(self.deletion_beats_random), "insertion": fmt(self.insertion_beats_random),
                "n": self.n}


# The per-slice entries of faithfulness_slices' result that are not curves.
PER_SLICE_KEYS = ("deletion_beats_random", "insertion_beats_random", "n", "slices", "per_slice_auc")


def split_faithfulness(result: Mapping[str, Any] | None
                       ) -> tuple[dict[str, Any] | None, FaithfulnessSlicesSection | None]:
    """The curves of a faithfulness result (the keys of
    :func:`jaxseg.explain.faithfulness.faithfulness`) and, when it is per tumor slice, its
    :class:`FaithfulnessSlicesSection`."""
    if result is None:
        return None, None
    curves = {k: v for k, v in result.items() if k not in PER_SLICE_KEYS}
    if "n" not in result:
        return curves, None
    return curves, FaithfulnessSlicesSection(result["deletion_beats_random"], result["insertion_beats_random"],
                                             int(result["n"]), list(result["slices"]))
