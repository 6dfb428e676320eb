"""`jaxseg evaluate` (evaluate_folders) on tiny synthetic NIfTIs, checked against direct numpy computations."""
import csv
import gzip

import nibabel as nib
import numpy as np
import pytest
from rich.console import Console

from jaxseg.errors import JaxsegError
from jaxseg.eval import surface
from jaxseg.eval.pairs import case_id_of
from jaxseg.eval.run import evaluate_folders
from jaxseg.eval.volumes import METRICS
from tests.eval.test_surface import brute_force_hd95

SHAPE = (28, 18, 10)
AFFINE = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS like BraTS, 2 mm slices
SPACING = (1.0, 1.0, 2.0)


def write(path, labels, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(path))
    return path


def labels_2021(seed):
    """Random blobs with BraTS 2021 labels: ED around a core of NCR and ET (label 4)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    x, y, z = rng.integers(3, 8, 3)
    labels[x:x + 9, y:y + 8, z:z + 4] = 2
    labels[x + 2:x + 6, y + 2:y + 6, z + 1:z + 3] = 1
    labels[x + 3:x + 5, y + 3:y + 7, z + 1:z + 3] = 4
    return labels


def regions_of(labels, et_label):
    return {"WT": labels > 0, "TC": (labels == 1) | (labels == et_label), "ET": labels == et_label}


@pytest.fixture
def folders(tmp_path):
    """Two cases: a 2021-named one (labels 0,1,2,4) and a 2023-named one (0,1,2,3)."""
    ref_a, pred_a = labels_2021(0), labels_2021(1)
    ref_b, pred_b = labels_2021(2), labels_2021(3)
    ref_b[ref_b == 4], pred_b[pred_b == 4] = 3, 3
    pred_b[:, :, :] = np.where(np.arange(SHAPE[0])[:, None, None] >= 24, 2, pred_b)  # a far false positive
    write(tmp_path / "ref" / "Case_A" / "Case_A_seg.nii.gz", ref_a)
    write(tmp_path / "ref" / "sub" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz", ref_b)
    write(tmp_path / "ref" / "Unused" / "Unused_seg.nii.gz", ref_a)  # a reference with no prediction
    write(tmp_path / "pred" / "Case_A.nii.gz", pred_a)
    write(tmp_path / "pred" / "BraTS-GLI-00001-000_seg.nii.gz", pred_b)
    truth = {"Case_A": (regions_of(pred_a, 4), regions_of(ref_a, 4)),
             "BraTS-GLI-00001-000": (regions_of(pred_b, 3), regions_of(ref_b, 3))}
    return tmp_path, truth


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_folders_against_numpy(folders):
    root, truth = folders
    summary = evaluate_folders(root / "pred", root / "ref", root / "out", figures=False)
    assert summary.cases == ("BraTS-GLI-00001-000", "Case_A")
    rows = read_csv(root / "out" / "per_case.csv")
    assert list(rows[0]) == ["case", "region", *METRICS]
    assert len(rows) == 2 * 3
    for row in rows:
        pred, ref = (regions[row["region"]] for regions in truth[row["case"]])
        inter = np.sum(pred & ref)
        expected = {
            "dice": 2 * inter / (pred.sum() + ref.sum()), "iou": inter / np.sum(pred | ref),
            "precision": inter / pred.sum(), "recall": inter / ref.sum(),
            "hd95": brute_force_hd95(pred, ref, SPACING),
            "pred_ml": pred.sum() * 2.0 / 1000, "ref_ml": ref.sum() * 2.0 / 1000,
        }
        for name, value in expected.items():
            assert float(row[name]) == pytest.approx(value, rel=1e-5, abs=1e-9), (row["case"], row["region"], name)
        lesions = surface.lesion_wise(pred, ref, SPACING)
        assert float(row["lesion_dice"]) == pytest.approx(lesions["dice"], rel=1e-5)
        assert float(row["lesion_hd95"]) == pytest.approx(lesions["hd95"], rel=1e-5)
    # The slab is a separate, unmatched predicted WT lesion in the 2023 case: lesion-wise Dice is
    # the blob's Dice over (1 GT lesion + 1 false positive), HD95 the mean with 374.
    pred, ref = (regions["WT"] for regions in truth["BraTS-GLI-00001-000"])
    blob = pred & (np.arange(SHAPE[0])[:, None, None] < 24)
    blob_dice = 2 * np.sum(blob & ref) / (blob.sum() + ref.sum())
    wt_b = next(r for r in summary.per_case if r["case"] == "BraTS-GLI-00001-000" and r["region"] == "WT")
    assert wt_b["lesion_dice"] == pytest.approx(blob_dice / 2)
    assert wt_b["lesion_hd95"] == pytest.approx((brute_force_hd95(blob, ref, SPACING) + 374) / 2)

    stats = read_csv(root / "out" / "summary.csv")
    assert len(stats) == 3 * len(METRICS)
    for row in stats:
        values = [r[row["metric"]] for r in summary.per_case if r["region"] == row["region"]]
        assert float(row["mean"]) == pytest.approx(np.mean(values), rel=1e-5, abs=1e-9)
        assert float(row["std"]) == pytest.approx(np.std(values), rel=1e-5, abs=1e-9)
        assert float(row["median"]) == pytest.approx(np.median(values), rel=1e-5, abs=1e-9)
        assert row["n"] == "2"

    console = Console(record=True, width=120)
    console.print(summary.render())
    text = console.export_text()
    assert "WT" in text and "lesion_dice" in text and "2 case(s)" in text


def test_case_ids_from_file_names(tmp_path):
    for name, case in [("BraTS2021_00001.nii.gz", "BraTS2021_00001"), ("x_seg.nii.gz", "x"),
                       ("BraTS-PED-00002-000-seg.nii.gz", "BraTS-PED-00002-000"), ("y_pred.nii", "y")]:
        assert case_id_of(tmp_path / name, ("_seg", "-seg", "_pred", "-pred")) == case
    assert case_id_of(tmp_path / "notes.txt", ()) is None


def test_no_predictions(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    with pytest.raises(JaxsegError, match="no predictions"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")


def test_predictions_without_reference_are_listed(folders):
    root, _ = folders
    write(root / "pred" / "Lost_1.nii.gz", labels_2021(5))
    write(root / "pred" / "Lost_2_seg.nii.gz", labels_2021(6))
    with pytest.raises(JaxsegError, match="2 prediction.*Lost_1.nii.gz, Lost_2_seg.nii.gz"):
        evaluate_folders(root / "pred", root / "ref", root / "out")
    assert not (root / "out" / "per_case.csv").exists()


def test_unreadable_file_names_the_file(folders):
    root, _ = folders
    bad = root / "pred" / "Case_A.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all")[:20])  # truncated gzip
    with pytest.raises(JaxsegError) as info:
        evaluate_folders(root / "pred", root / "ref", root / "out")
    message = str(info.value)
    assert message.startswith(str(bad)) and "\n" not in message


def test_geometry_mismatch_names_both_files(folders):
    root, _ = folders
    write(root / "pred" / "Case_A.nii.gz", labels_2021(1), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(JaxsegError, match="Case_A.nii.gz.*Case_A_seg.nii.gz"):
        evaluate_folders(root / "pred", root / "ref", root / "out")
    write(root / "pred" / "Case_A.nii.gz", labels_2021(1)[:, :, :8])
    with pytest.raises(JaxsegError, match="shape"):
        evaluate_folders(root / "pred", root / "ref", root / "out")


def test_label_conventions(folders):
    root, _ = folders
    # Label 3 in a 2021-named case (Case_A_seg.nii.gz) is not a BraTS 2017-2021 label.
    labels = labels_2021(1)
    labels[labels == 4] = 3
    write(root / "pred" / "Case_A.nii.gz", labels)
    with pytest.raises(JaxsegError, match=r"Case_A.nii.gz: label values \[3\] are not brats2021"):
        evaluate_folders(root / "pred", root / "ref", root / "out")
    # A 2023-named (-seg) file that uses label 4 is read with the 2021 convention.
    ref = labels_2021(2)
    write(root / "pred" / "Case_A.nii.gz", labels_2021(1))
    write(root / "ref" / "sub" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz", ref)
    write(root / "pred" / "BraTS-GLI-00001-000_seg.nii.gz", ref)
    summary = evaluate_folders(root / "pred", root / "ref", root / "out", figures=False)
    assert all(r["dice"] == 1.0 for r in summary.per_case if r["case"] == "BraTS-GLI-00001-000")


def test_duplicate_predictions_for_one_case(folders):
    root, _ = folders
    write(root / "pred" / "Case_A_seg.nii.gz", labels_2021(1))
    with pytest.raises(JaxsegError, match="second prediction for case Case_A"):
        evaluate_folders(root / "pred", root / "ref", root / "out")


def test_float_label_maps_and_trailing_axis(folders):
    root, truth = folders
    labels = labels_2021(1).astype(np.float32)[..., None]
    nib.save(nib.Nifti1Image(labels, AFFINE), str(root / "pred" / "Case_A.nii.gz"))
    summary = evaluate_folders(root / "pred", root / "ref", root / "out", figures=False)
    pred, ref = truth["Case_A"]
    row = next(r for r in summary.per_case if r["case"] == "Case_A" and r["region"] == "ET")
    assert row["dice"] == pytest.approx(2 * np.sum(pred["ET"] & ref["ET"]) / (pred["ET"].sum() + ref["ET"].sum()))
    bad = labels.copy()
    bad[0, 0, 0] = 0.5
    nib.save(nib.Nifti1Image(bad, AFFINE), str(root / "pred" / "Case_A.nii.gz"))
    with pytest.raises(JaxsegError, match="whole-number"):
        evaluate_folders(root / "pred", root / "ref", root / "out")




def test_probability_maps_are_not_predictions(folders):
    root, _ = folders
    probs = np.zeros(SHAPE + (3,), np.float32)
    nib.save(nib.Nifti1Image(probs, AFFINE), str(root / "pred" / "Case_A_prob.nii.gz"))
    assert evaluate_folders(root / "pred", root / "ref", root / "out", figures=False).cases == ("BraTS-GLI-00001-000", "Case_A")


def test_missing_folder(tmp_path):
    with pytest.raises(JaxsegError, match="not a folder"):
        evaluate_folders(tmp_path / "nope", tmp_path, tmp_path / "out")


def test_evaluate_writes_the_figures(folders):
    root, _ = folders
    evaluate_folders(root / "pred", root / "ref", root / "out")
    written = [root / "out" / "gallery.png", root / "out" / "panels" / "Case_A.png",
               root / "out" / "panels" / "BraTS-GLI-00001-000.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    evaluate_folders(root / "pred", root / "ref", root / "plain", figures=False)
    assert sorted(p.name for p in (root / "plain").iterdir()) == ["per_case.csv", "summary.csv"]


def test_figures_use_the_flair_beside_the_reference(folders):
    from jaxseg.data import nifti
    from jaxseg.eval.pairs import read_background as background_image
    root, _ = folders
    ref = root / "ref" / "Case_A" / "Case_A_seg.nii.gz"
    assert background_image(ref, nifti.read_label_volume(ref)[1]) == (None, None)  # no image: black
    flair = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(flair, AFFINE), str(root / "ref" / "Case_A" / "Case_A_t2.nii.gz"))
    image, name = background_image(ref, nifti.read_label_volume(ref)[1])
    assert name == "t2"  # no flair: the case's first image
    nib.save(nib.Nifti1Image(flair, AFFINE), str(root / "ref" / "Case_A" / "Case_A_flair.nii.gz"))
    image, name = background_image(ref, nifti.read_label_volume(ref)[1])
    assert name == "flair"
    np.testing.assert_array_equal(image, flair[::-1, ::-1, :])  # LPS file -> RAS array
    nib.save(nib.Nifti1Image(flair[:-1], AFFINE), str(root / "ref" / "Case_A" / "Case_A_flair.nii.gz"))
    with pytest.warns(UserWarning, match="no background image"):
        assert background_image(ref, nifti.read_label_volume(ref)[1]) == (None, None)
