"""`jaxseg evaluate` with probability maps (<case>_prob.nii.gz): per-region ECE on a phantom, checked
against a loop-over-bins numpy ECE of the same voxels."""
import json
import shutil

import numpy as np
import pytest
from rich.console import Console

from jaxseg import target
from jaxseg.data import brats, nifti, phantom
from jaxseg.eval.run import evaluate_folders
from tests.explain.test_calibrate import _numpy_ece


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    return brats.case_from_path(phantom.write_phantoms(tmp_path_factory.mktemp("ph"), 1, seed=5, shape=(40, 36, 24))[0])


def _prediction_with_probabilities(case, pred_dir, seed=0):
    """The reference as the label map and noisy region probabilities beside it; returns
    (probs (X, Y, Z, 3) RAS, internal classes, brain)."""
    labels, props = nifti.read_label_volume(case.seg)
    pred_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(case.seg, pred_dir / f"{case.case_id}.nii.gz")
    classes = brats.to_internal(labels, case.naming, case.seg)
    truth = target.region_masks(classes)
    rng = np.random.default_rng(seed)
    probs = np.clip(np.where(truth, 0.75, 0.05) + rng.normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)
    nifti.write_volume(probs, props, pred_dir / f"{case.case_id}_prob.nii.gz", dtype=np.float32)
    image, _ = nifti.read_volume(case.images["flair"])
    return probs, classes, image != 0


def test_evaluate_scores_the_calibration_of_probability_maps(phantom_case, tmp_path):
    probs, classes, brain = _prediction_with_probabilities(phantom_case, tmp_path / "pred")
    summary = evaluate_folders(tmp_path / "pred", phantom_case.folder, tmp_path / "out", figures=True)
    written = json.loads((tmp_path / "out" / "calibration.json").read_text())
    truth = target.region_masks(classes)
    rows = {(r["region"], r["metric"]): r for r in summary.summary}
    for k, region in enumerate(target.REGIONS):
        p, y = probs[..., k][brain].astype(np.float64), truth[..., k][brain]
        relevant = (p > 0.01) | y
        expected = {"all_brain": _numpy_ece(p, y), "relevant": _numpy_ece(p[relevant], y[relevant])}
        for selection, value in expected.items():
            assert written["pooled"][region][selection]["ece"] == pytest.approx(value, abs=1e-6)
            assert written["per_case"][phantom_case.case_id][region][selection] == pytest.approx(value, abs=1e-6)
            assert rows[(region, f"ece_{selection}")]["mean"] == pytest.approx(value, abs=1e-6)
        assert sum(written["pooled"][region]["all_brain"]["count"]) == brain.sum()
    assert (tmp_path / "out" / "reliability.png").stat().st_size > 0
    console = Console(record=True, width=200)
    console.print(summary.render())
    assert "ece_relevant" in console.export_text()


def test_without_probability_maps_there_is_no_calibration_output(phantom_case, tmp_path):
    (tmp_path / "pred").mkdir()
    shutil.copy(phantom_case.seg, tmp_path / "pred" / f"{phantom_case.case_id}.nii.gz")
    summary = evaluate_folders(tmp_path / "pred", phantom_case.folder, tmp_path / "out", figures=False)
    assert not (tmp_path / "out" / "calibration.json").exists()
    assert not any(r["metric"].startswith("ece_") for r in summary.summary)


def test_a_probability_map_on_another_grid_is_refused(phantom_case, tmp_path):
    _prediction_with_probabilities(phantom_case, tmp_path / "pred")
    labels, props = nifti.read_label_volume(phantom_case.seg)
    bad = np.zeros((*labels.shape[:2], labels.shape[2] - 1, 3), np.float32)
    import nibabel as nib
    nib.save(nib.Nifti1Image(bad, props.affine), str(tmp_path / "pred" / f"{phantom_case.case_id}_prob.nii.gz"))
    with pytest.raises(Exception, match="shape|grid"):
        evaluate_folders(tmp_path / "pred", phantom_case.folder, tmp_path / "out", figures=False)
