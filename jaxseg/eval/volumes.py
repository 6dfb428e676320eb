"""The volume scorer: per case and region (WT, TC, ET) Dice, IoU, precision, recall, HD95, BraTS
2023 lesion-wise Dice and HD95, and the predicted and reference volumes, from arrays.

Overlap scores come from confusion sums (:func:`jaxseg.overlap.scores_from_sums`, jaxseg's one
Dice: an empty prediction of an empty region scores 1); surface and lesion scores from :mod:`jaxseg.eval.surface`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxseg import overlap, target
from jaxseg.eval import surface

METRICS = ("dice", "iou", "precision", "recall", "hd95", "lesion_dice", "lesion_hd95", "pred_ml", "ref_ml")
OVERLAP_SCORES = ("dice", "iou", "precision", "recall")


def score_classes(pred_classes: np.ndarray, ref_classes: np.ndarray, spacing: Sequence[float], case: str, *,
                  dilation_iterations: int = 3, min_lesion_voxels: int = 0) -> list[dict]:
    """Rows ``{case, region, <METRICS>}`` for WT, TC and ET of one case.

    Args:
      pred_classes, ref_classes: ``(X, Y, Z)`` uint8 internal classes (0-3) on one grid.
      spacing: voxel sizes in mm in the arrays' axis order.
      dilation_iterations, min_lesion_voxels: lesion-wise settings, see
        :func:`jaxseg.eval.surface.lesion_wise` (defaults: BraTS 2023 GLI/PED dilation, no size
        threshold).
    Returns:
      three dicts (regions in :data:`jaxseg.target.REGIONS` order), every metric a float.
    """
    pred, ref = target.region_masks(pred_classes), target.region_masks(ref_classes)
    scores = overlap.scores_from_sums(overlap.confusion_sums(pred.reshape(1, -1, 3), ref.reshape(1, -1, 3)))
    rows = []
    for k, region in enumerate(target.REGIONS):
        lesions = surface.lesion_wise(pred[..., k], ref[..., k], spacing, dilation_iterations=dilation_iterations,
                                      min_lesion_voxels=min_lesion_voxels)
        rows.append({
            "case": case, "region": region,
            **{name: float(scores[name][k]) for name in OVERLAP_SCORES},
            "hd95": surface.hd95(pred[..., k], ref[..., k], spacing),
            "lesion_dice": lesions["dice"], "lesion_hd95": lesions["hd95"],
            "pred_ml": surface.volume_ml(pred[..., k], spacing), "ref_ml": surface.volume_ml(ref[..., k], spacing),
        })
    return rows
