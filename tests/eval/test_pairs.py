"""Finding and reading prediction/reference pairs: volumes (NIfTI) and 2D slices (PNG masks)."""
import imageio.v3 as iio
import numpy as np
import pytest

from jaxseg.errors import JaxsegError
from jaxseg.eval import pairs
from tests.data.formats2d import tumor_slice, write_figshare_mat, write_image_pair
from tests.test_evaluate import SPACING, labels_2021, write


def test_volume_pairs_by_case_id_skipping_probabilities_and_temporaries(tmp_path):
    write(tmp_path / "ref" / "a" / "A_seg.nii.gz", labels_2021(0))
    write(tmp_path / "ref" / "deep" / "er" / "B-seg.nii.gz", labels_2021(1))
    write(tmp_path / "ref" / "A_flair.nii.gz", labels_2021(0))  # an image, not a reference
    write(tmp_path / "pred" / "A_pred.nii.gz", labels_2021(2))
    write(tmp_path / "pred" / "B.nii", labels_2021(3))
    write(tmp_path / "pred" / "A_prob.nii.gz", labels_2021(2))
    write(tmp_path / "pred" / ".A.nii.gz.tmp.nii.gz", labels_2021(2))
    (tmp_path / "pred" / "notes.txt").write_text("not a prediction")
    assert pairs.find_volume_pairs(tmp_path / "pred", tmp_path / "ref") == [
        ("A", tmp_path / "pred" / "A_pred.nii.gz", tmp_path / "ref" / "a" / "A_seg.nii.gz"),
        ("B", tmp_path / "pred" / "B.nii", tmp_path / "ref" / "deep" / "er" / "B-seg.nii.gz")]


def test_two_references_for_one_case(tmp_path):
    write(tmp_path / "ref" / "x" / "A_seg.nii.gz", labels_2021(0))
    write(tmp_path / "ref" / "y" / "A_seg.nii.gz", labels_2021(0))
    write(tmp_path / "pred" / "A.nii.gz", labels_2021(1))
    with pytest.raises(JaxsegError, match="second reference for case A"):
        pairs.find_volume_pairs(tmp_path / "pred", tmp_path / "ref")


@pytest.mark.parametrize("reference_name,et_label", [("A_seg.nii.gz", 4), ("A-seg.nii.gz", 3)])
def test_a_volume_pair_reads_as_internal_classes_in_ras(tmp_path, reference_name, et_label):
    ref_labels, pred_labels = labels_2021(0), labels_2021(1)
    ref_labels[ref_labels == 4] = et_label
    write(tmp_path / "ref" / reference_name, ref_labels)
    write(tmp_path / "pred" / "A.nii.gz", pred_labels)  # label 4: read as 2021 whatever the naming
    pair = pairs.read_volume_pair("A", tmp_path / "pred" / "A.nii.gz", tmp_path / "ref" / reference_name)
    # The files are LPS (AFFINE flips X and Y): RAS arrays are the labels with X and Y reversed.
    to_ras = lambda labels: labels[::-1, ::-1, :]  # noqa: E731
    internal = lambda labels, et: np.select([labels == 1, labels == 2, labels == et], [1, 2, 3], 0)  # noqa: E731
    np.testing.assert_array_equal(pair.reference, to_ras(internal(ref_labels, et_label)))
    np.testing.assert_array_equal(pair.prediction, to_ras(internal(pred_labels, 4)))
    assert pair.case == "A" and pair.spacing == pytest.approx(SPACING)
    assert pair.reference.dtype == np.uint8


def test_background_is_none_without_an_image(tmp_path):
    ref = write(tmp_path / "A" / "A_seg.nii.gz", labels_2021(0))
    pair = pairs.read_volume_pair("A", ref, ref)
    assert pairs.read_background(ref, pair.properties) == (None, None)


def write_slices(root, shape=(24, 20)):
    """An image folder of two patients, two slices each; returns {case id: mask}."""
    masks = {}
    for p in range(2):
        for s in range(2):
            image, mask = tumor_slice(shape, (10, 8 + s), 4 + p, seed=2 * p + s)
            write_image_pair(root / f"P{p}", f"P{p}_{s}", np.clip(image, 0, 255).astype(np.uint8), mask)
            masks[f"P{p}/P{p}_{s}"] = mask
    return masks


def test_slice_pairs_of_an_image_folder(tmp_path):
    masks = write_slices(tmp_path / "ref")
    for case_id, mask in masks.items():
        (tmp_path / "pred" / case_id).parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(tmp_path / "pred" / f"{case_id}.png", (1 - mask).astype(np.uint8) * 255)
    assert pairs.holds_slice_predictions(tmp_path / "pred")
    found = pairs.find_slice_pairs(tmp_path / "pred", tmp_path / "ref")
    assert [case_id for case_id, _, _ in found] == sorted(masks)
    for case_id, path, record in found:
        assert record.subject == case_id.split("/")[0]
        prediction, reference = pairs.read_slice_pair(case_id, path, record)
        np.testing.assert_array_equal(reference, masks[case_id].astype(bool))
        np.testing.assert_array_equal(prediction, ~masks[case_id].astype(bool))


def test_slice_pairs_of_a_figshare_folder(tmp_path):
    image, mask = tumor_slice((20, 16), (8, 8), 3)
    write_figshare_mat(tmp_path / "ref" / "1.mat", image, mask, pid="P9")
    (tmp_path / "pred").mkdir()
    iio.imwrite(tmp_path / "pred" / "1.png", mask * 255)
    [(case_id, path, record)] = pairs.find_slice_pairs(tmp_path / "pred", tmp_path / "ref")
    assert (case_id, record.subject) == ("1", "P9")
    prediction, reference = pairs.read_slice_pair(case_id, path, record)
    np.testing.assert_array_equal(prediction, mask.astype(bool))
    np.testing.assert_array_equal(reference, mask.astype(bool))


def test_slice_pair_problems_are_user_errors(tmp_path):
    write_slices(tmp_path / "ref")
    (tmp_path / "pred" / "P0").mkdir(parents=True)
    iio.imwrite(tmp_path / "pred" / "P0" / "P0_0.png", np.zeros((10, 10), np.uint8))
    [(case_id, path, record)] = pairs.find_slice_pairs(tmp_path / "pred", tmp_path / "ref")
    with pytest.raises(JaxsegError, match=r"is 10x10 but slice P0/P0_0 is 24x20"):
        pairs.read_slice_pair(case_id, path, record)
    iio.imwrite(tmp_path / "pred" / "P7.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(JaxsegError, match=r"no slice P7 under .*\(1 prediction\(s\) without a reference\)"):
        pairs.find_slice_pairs(tmp_path / "pred", tmp_path / "ref")
    write(tmp_path / "volumes" / "A" / "A_seg.nii.gz", labels_2021(0))
    with pytest.raises(JaxsegError, match="holds NIfTI volumes"):
        pairs.find_slice_pairs(tmp_path / "pred", tmp_path / "volumes")


def test_what_counts_as_a_folder_of_slice_predictions(tmp_path):
    assert not pairs.holds_slice_predictions(tmp_path / "missing")
    (tmp_path / "sub").mkdir()
    iio.imwrite(tmp_path / "sub" / "x.png", np.zeros((4, 4), np.uint8))
    assert pairs.holds_slice_predictions(tmp_path)  # PNGs at any depth
    write(tmp_path / "A.nii.gz", labels_2021(0))
    assert not pairs.holds_slice_predictions(tmp_path)  # a NIfTI beside them: volumes
