"""Calibration in ``jaxseg evaluate``: the ECE of predicted probability maps against the references.

When ``jaxseg predict --probabilities`` wrote ``<name>_prob.nii.gz`` (float32 ``(X, Y, Z, K)``,
the prediction's geometry) beside a label map ``<name>.nii.gz``, each region's probabilities are
binned against the reference (15 equal-width bins, :func:`jaxseg.explain.calibration.reliability_bins`)
over two voxel selections: ``all_brain`` (the case's image nonzero, else every voxel) and
``relevant`` (:func:`jaxseg.explain.calibration.relevant_mask`: p > 0.01 or inside the reference
region, within the brain). Bins are kept as sums (count, sum of p, sum of outcomes) and added
over cases, so the pooled ECE is that of all voxels of all cases, not a mean of per-case ECEs;
the per-case ECEs are kept too. Softmax outputs (K = 4) become region probabilities first.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from jaxseg import target as target_lib
from jaxseg.errors import file_error
from jaxseg.explain import calibration
from jaxseg.files import atomic_path

N_BINS = 15
SELECTIONS = ("all_brain", "relevant")


def probability_path(pred_path: Path) -> Path | None:
    """``<name>_prob.nii.gz`` beside the label map ``<name>.nii.gz`` (as predict writes it), or None."""
    name = pred_path.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else pred_path.stem
    path = pred_path.with_name(f"{stem}_prob.nii.gz")
    return path if path.is_file() else None


class CalibrationScorer:
    """Reliability bins of every case's probability maps, added up per region and selection."""

    def __init__(self) -> None:
        self.per_case: dict[str, dict[str, dict[str, float | None]]] = {}
        self._sums: dict[str, dict[str, np.ndarray]] = {}  # region -> selection -> (3, N_BINS)

    def add(self, case: str, probs: np.ndarray, reference: np.ndarray, brain: np.ndarray | None,
            prob_path: Path | None = None) -> dict[str, dict[str, float | None]]:
        """Score one case; returns ``{region: {all_brain, relevant}}`` ECEs (None: no voxel).

        Args:
          probs: ``(X, Y, Z, K)`` float probabilities (K = 1 wt, 3 WT/TC/ET, 4 softmax classes).
          reference: ``(X, Y, Z)`` uint8 internal classes on the same grid.
          brain: ``(X, Y, Z)`` bool, or None for every voxel.
          prob_path: for the error message of a map of the wrong shape.
        """
        if probs.ndim != 4 or probs.shape[:3] != reference.shape:
            raise file_error(prob_path or Path(case), f"probability map of shape {probs.shape} does not fit "
                                                      f"the reference grid {reference.shape} (+ channels)")
        try:
            kind = target_lib.target_for_channels(probs.shape[-1])
        except ValueError as e:
            raise file_error(prob_path or Path(case), str(e)) from None
        region_probs = np.asarray(kind.region_probabilities(np.asarray(probs, np.float32)))
        truth = kind.region_masks_from_classes(reference)
        within = np.ones(reference.shape, bool) if brain is None else brain
        scores = {}
        for k, region in enumerate(kind.region_names):
            p, y = region_probs[..., k], truth[..., k]
            masks = {"all_brain": within, "relevant": calibration.relevant_mask(p, y, within=within)}
            scores[region] = {}
            for selection, mask in masks.items():
                bins = calibration.reliability_bins(p, y, mask, N_BINS)
                count = bins["count"].astype(np.float64)
                sums = np.stack([count, np.nan_to_num(bins["confidence"]) * count,
                                 np.nan_to_num(bins["accuracy"]) * count])
                region_sums = self._sums.setdefault(region, {})
                region_sums[selection] = region_sums.get(selection, 0) + sums
                scores[region][selection] = _ece_of_sums(sums)
        self.per_case[case] = scores
        return scores

    def pooled(self) -> dict[str, dict[str, dict]]:
        """``{region: {selection: {"ece", "count", "confidence", "accuracy"}}}`` over every case
        added (lists per bin; NaN bins as None)."""
        out = {}
        for region, selections in self._sums.items():
            out[region] = {}
            for selection, (count, total_p, total_y) in selections.items():
                with np.errstate(invalid="ignore", divide="ignore"):
                    confidence, accuracy = total_p / count, total_y / count
                out[region][selection] = {
                    "ece": _ece_of_sums(np.stack([count, total_p, total_y])), "count": count.astype(int).tolist(),
                    "confidence": _floats(confidence), "accuracy": _floats(accuracy)}
        return out

    def write(self, out_dir: Path, figure: bool = True) -> Path:
        """``<out_dir>/calibration.json`` (pooled and per case) and, with ``figure``,
        ``reliability.png``; returns the JSON's path."""
        pooled = self.pooled()
        path = Path(out_dir) / "calibration.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"n_bins": N_BINS, "selections": {
                "all_brain": "the case's image nonzero (every voxel without an image)",
                "relevant": "p > 0.01 or inside the reference region, within the brain"},
                "pooled": pooled, "per_case": self.per_case}, indent=2) + "\n")
        if figure:
            from jaxseg.report.figures import reliability_diagram
            def arrays(b: dict) -> dict:
                return {"count": np.asarray(b["count"]), "ece": b["ece"],
                        **{k: np.asarray([np.nan if v is None else v for v in b[k]], float)
                           for k in ("confidence", "accuracy")}}
            reliability_diagram({r: {s: arrays(b) for s, b in sel.items()} for r, sel in pooled.items()},
                                Path(out_dir) / "reliability.png",
                                title=f"reliability of the predicted probabilities ({len(self.per_case)} cases)")
        return path

    def summary_rows(self) -> list[dict]:
        """``{region, metric: ece_<selection>, mean, std, median, n}`` over the per-case ECEs (the
        rows summary.csv gains)."""
        rows = []
        regions = list(self._sums)
        for region in regions:
            for selection in SELECTIONS:
                values = [c[region][selection] for c in self.per_case.values() if c[region][selection] is not None]
                if values:
                    v = np.asarray(values, np.float64)
                    rows.append({"region": region, "metric": f"ece_{selection}", "mean": float(v.mean()),
                                 "std": float(v.std()), "median": float(np.median(v)), "n": len(v)})
        return rows


def _ece_of_sums(sums: np.ndarray) -> float | None:
    count, total_p, total_y = sums
    if count.sum() == 0:
        return None
    full = count > 0
    return float(np.abs(total_y[full] - total_p[full]).sum() / count.sum())


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values]
