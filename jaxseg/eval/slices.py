"""The slice scorer for 2D sources: Dice, IoU, precision and recall per slice, per patient (the
confusion sums pooled over the patient's slices) and over the dataset (pooled over every slice, as
validation in training), from arrays.

An empty prediction of an empty mask scores 1 (:func:`jaxseg.overlap.scores_from_sums`, jaxseg's
one Dice).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jaxseg import overlap

SCORES = ("dice", "iou", "precision", "recall")


def scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Dice, IoU, precision and recall of one set of confusion counts."""
    sums = {"tp": np.array([tp]), "fp": np.array([fp]), "fn": np.array([fn])}
    return {k: float(v[0]) for k, v in overlap.scores_from_sums(sums).items()}


@dataclass
class SliceScorer:
    """Scores slices one at a time (:meth:`add`) and keeps each patient's pooled counts, so a
    dataset of any size is held as one row per slice and three counts per patient."""
    per_slice: list[dict] = field(default_factory=list)
    _pooled: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, case_id: str, patient: str, prediction: np.ndarray, reference: np.ndarray) -> dict:
        """Score one slice: ``prediction``, ``reference`` ``(H, W)`` bool. Returns (and keeps) its
        row ``{case, patient, <SCORES>, pred_pixels, ref_pixels}``."""
        pred, ref = np.asarray(prediction, bool), np.asarray(reference, bool)
        tp, fp, fn = int((pred & ref).sum()), int((pred & ~ref).sum()), int((~pred & ref).sum())
        totals = self._pooled.setdefault(patient, np.zeros(3, np.int64))
        totals += (tp, fp, fn)
        row = {"case": case_id, "patient": patient, **scores(tp, fp, fn),
               "pred_pixels": int(pred.sum()), "ref_pixels": int(ref.sum())}
        self.per_slice.append(row)
        return row

    def per_patient(self) -> list[dict]:
        """One row per patient (sorted): ``{patient, <SCORES>, slices}`` of the pooled counts."""
        return [{"patient": patient, **scores(*map(int, totals)),
                 "slices": sum(r["patient"] == patient for r in self.per_slice)}
                for patient, totals in sorted(self._pooled.items())]

    def dataset(self) -> dict[str, float]:
        """The scores of the counts pooled over every slice added."""
        return scores(*map(int, np.sum(list(self._pooled.values()), axis=0)))
