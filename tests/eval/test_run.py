"""One `jaxseg evaluate` for both kinds of prediction folder: PNG masks of 2D slices are scored per
slice, per patient and pooled; NIfTI volumes per case (tests/test_evaluate.py)."""
import csv

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from jaxseg import cli
from jaxseg.eval.run import evaluate_folders
from jaxseg.eval.slices import SCORES
from tests.eval.test_pairs import write_slices
from tests.eval.test_scorers import by_hand


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def slice_folders(tmp_path):
    masks = write_slices(tmp_path / "ref")
    predictions = {}
    for i, (case_id, mask) in enumerate(sorted(masks.items())):
        prediction = np.roll(mask, i, axis=1).astype(bool) if i != 3 else np.zeros_like(mask, bool)
        (tmp_path / "pred" / case_id).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(tmp_path / "pred" / f"{case_id}.png", prediction.astype(np.uint8) * 255)
        predictions[case_id] = prediction, mask.astype(bool)
    return tmp_path, predictions


def test_png_predictions_are_scored_per_slice_patient_and_dataset(slice_folders):
    root, truth = slice_folders
    result = evaluate_folders(root / "pred", root / "ref", root / "out", figures=True)
    assert sorted(p.name for p in (root / "out").iterdir()) == ["per_patient.csv", "per_slice.csv", "summary.csv"]
    per_slice = read_csv(root / "out" / "per_slice.csv")
    assert list(per_slice[0]) == ["case", "patient", *SCORES, "pred_pixels", "ref_pixels"]
    assert [r["case"] for r in per_slice] == sorted(truth) == [r["case"] for r in result.per_slice]
    for row in per_slice:
        expected = by_hand(*truth[row["case"]])
        assert {k: float(row[k]) for k in SCORES} == pytest.approx(expected, rel=1e-5)
    per_patient = read_csv(root / "out" / "per_patient.csv")
    assert [(r["patient"], r["slices"]) for r in per_patient] == [("P0", "2"), ("P1", "2")]
    for row in per_patient:
        mine = [truth[c] for c in truth if c.startswith(row["patient"] + "/")]
        expected = by_hand(np.concatenate([p for p, _ in mine]), np.concatenate([r for _, r in mine]))
        assert {k: float(row[k]) for k in SCORES} == pytest.approx(expected, rel=1e-5)
    summary = {(r["level"], r["metric"]): r for r in read_csv(root / "out" / "summary.csv")}
    pooled = by_hand(np.concatenate([p for p, _ in truth.values()]), np.concatenate([r for _, r in truth.values()]))
    assert float(summary[("dataset", "dice")]["mean"]) == pytest.approx(pooled["dice"], rel=1e-5)
    dices = [float(r["dice"]) for r in per_slice]
    assert float(summary[("slice", "dice")]["std"]) == pytest.approx(np.std(dices), rel=1e-5, abs=1e-9)
    assert result.per_case_csv == root / "out" / "per_slice.csv"


def test_the_cli_evaluates_slices_in_one_command(slice_folders):
    root, _ = slice_folders
    out = CliRunner().invoke(cli.app, ["evaluate", "--pred", str(root / "pred"), "--ref", str(root / "ref"),
                                       "--out", str(root / "cli")])
    assert out.exit_code == 0, out.output
    assert "Evaluation of 4 slice(s) of 2 patient(s)" in out.output
    assert (root / "cli" / "per_patient.csv").is_file()
