"""The volume and slice scorers on arrays, against scores written out by hand in numpy."""
import numpy as np
import pytest

from jaxseg.eval import surface, volumes
from jaxseg.eval.slices import SCORES, SliceScorer
from tests.eval.test_surface import brute_force_hd95


def by_hand(pred, ref):
    """Dice, IoU, precision, recall of two bool masks, the empty-vs-empty pair scoring 1."""
    tp, fp, fn = np.sum(pred & ref), np.sum(pred & ~ref), np.sum(~pred & ref)
    if tp + fp + fn == 0:
        return dict.fromkeys(SCORES, 1.0)
    ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
    return {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}


def test_volume_scores_per_region_with_an_empty_enhancing_tumor():
    rng = np.random.default_rng(0)
    shape, spacing = (16, 14, 8), (1.0, 0.5, 2.0)
    ref, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    ref[3:11, 3:10, 2:6] = 2
    ref[5:8, 5:8, 3:5] = 1
    pred[4:12, 3:10, 2:7] = 2
    pred[5:9, 5:8, 3:5] = 1
    pred[rng.random(shape) < 0.02] = 2  # scattered false positives: many small lesions
    rows = volumes.score_classes(pred, ref, spacing, "case_1")
    assert [r["region"] for r in rows] == ["WT", "TC", "ET"] and {r["case"] for r in rows} == {"case_1"}
    regions = {"WT": lambda c: c > 0, "TC": lambda c: (c == 1) | (c == 3), "ET": lambda c: c == 3}
    for row in rows:
        p, r = regions[row["region"]](pred), regions[row["region"]](ref)
        for name, value in by_hand(p, r).items():
            assert row[name] == pytest.approx(value), (row["region"], name)
        expected_hd95 = brute_force_hd95(p, r, spacing) if p.any() and r.any() else (0.0 if not p.any() and not r.any()
                                                                                       else surface.EMPTY_HD95)
        assert row["hd95"] == pytest.approx(expected_hd95)
        assert row["pred_ml"] == pytest.approx(p.sum() * 1.0 / 1000) and row["ref_ml"] == pytest.approx(r.sum() / 1000)
        assert set(row) == {"case", "region", *volumes.METRICS}
    et = rows[2]
    assert (et["dice"], et["hd95"], et["lesion_dice"], et["lesion_hd95"]) == (1.0, 0.0, 1.0, 0.0)  # both empty


def test_slice_scores_per_slice_per_patient_and_pooled():
    rng = np.random.default_rng(1)
    slices = []
    for i in range(7):
        ref = rng.random((9, 8)) < 0.3 if i != 2 else np.zeros((9, 8), bool)
        pred = rng.random((9, 8)) < 0.3 if i not in (2, 5) else np.zeros((9, 8), bool)
        slices.append((f"s{i}", f"p{i % 3}", pred, ref))
    scorer = SliceScorer()
    for case_id, patient, pred, ref in slices:
        scorer.add(case_id, patient, pred, ref)
    for row, (case_id, patient, pred, ref) in zip(scorer.per_slice, slices):
        assert (row["case"], row["patient"]) == (case_id, patient)
        assert (row["pred_pixels"], row["ref_pixels"]) == (pred.sum(), ref.sum())
        for name, value in by_hand(pred, ref).items():
            assert row[name] == pytest.approx(value)
    assert scorer.per_slice[2]["dice"] == 1.0  # empty prediction of an empty mask
    per_patient = scorer.per_patient()
    assert [r["patient"] for r in per_patient] == ["p0", "p1", "p2"]
    for row in per_patient:
        mine = [(p, r) for _, patient, p, r in slices if patient == row["patient"]]
        stacked = np.concatenate([p for p, _ in mine]), np.concatenate([r for _, r in mine])
        assert row["slices"] == len(mine)
        for name, value in by_hand(*stacked).items():
            assert row[name] == pytest.approx(value)
    everything = np.concatenate([p for *_, p, _ in slices]), np.concatenate([r for *_, r in slices])
    assert scorer.dataset() == pytest.approx(by_hand(*everything))
