"""Prediction writes labels in each input's own geometry and convention."""
import nibabel as nib
import numpy as np
import pytest

from jaxseg.data import phantom
from jaxseg.errors import JaxsegError
from jaxseg.infer.predict import Predictor, predict


def test_a_folder_of_cases_gives_one_file_per_case(smoke_run, tmp_path):
    data = tmp_path / "data"
    phantom.write_phantoms(data, 2, seed=11, shape=(32, 32, 20))
    out = tmp_path / "preds"
    results = predict(data, smoke_run, out)
    assert sorted(p.segmentation.name for p in results) == ["Phantom_11_000.nii.gz", "Phantom_11_001.nii.gz"]
    for result in results:
        flair = nib.load(data / result.case_id / f"{result.case_id}_flair.nii.gz")
        seg = nib.load(result.segmentation)
        assert seg.shape == flair.shape and np.array_equal(seg.affine, flair.affine)
        assert seg.get_data_dtype() == np.uint8
        assert set(result.volumes_ml) == {"WT", "TC", "ET"}
    with pytest.raises(JaxsegError, match="--out must be a folder"):
        predict(data, smoke_run, tmp_path / "one.nii.gz")


def test_orientation_does_not_change_the_prediction(smoke_run, tmp_path):
    """The same phantom stored LPS and RAS: identical predictions in the patient's frame."""
    lps, ras = tmp_path / "lps", tmp_path / "ras"
    phantom.write_phantoms(lps, 1, seed=5, shape=(32, 32, 20), orientation="LPS")
    phantom.write_phantoms(ras, 1, seed=5, shape=(32, 32, 20), orientation="RAS")
    predictor = Predictor(smoke_run)
    case = "Phantom_5_000"
    outputs = {}
    for name, root in (("lps", lps), ("ras", ras)):
        [result] = predict(root / case, smoke_run, tmp_path / f"{name}.nii.gz", probabilities=True)
        probs = nib.as_closest_canonical(nib.load(result.probabilities)).get_fdata()  # independent of jaxseg
        stored = nib.load(result.segmentation)
        assert nib.aff2axcodes(stored.affine) == (("L", "P", "S") if name == "lps" else ("R", "A", "S"))
        outputs[name] = probs
    assert predictor.cfg.data.target == "regions"
    np.testing.assert_allclose(outputs["lps"], outputs["ras"], atol=1e-5)
    assert outputs["lps"].max() > 0  # the maps are not trivially empty


def test_predict_on_a_real_case_keeps_shape_affine_and_labels(smoke_run, real_data, tmp_path):
    case = real_data / "brats2018" / "Brats18_2013_11_1"
    out = tmp_path / "seg.nii.gz"
    [result] = predict(case, smoke_run, out)
    flair = nib.load(case / "Brats18_2013_11_1_flair.nii.gz")
    seg = nib.load(out)
    assert seg.shape == (240, 240, 155) == flair.shape
    np.testing.assert_array_equal(seg.affine, flair.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert result.case_id == "Brats18_2013_11_1"


def test_predict_on_2023_naming_writes_2023_labels(smoke_run, real_data, tmp_path):
    case = real_data / "brats2023-example" / "BraTS-GLI-00001-000"
    [result] = predict(case, smoke_run, tmp_path)
    assert result.segmentation.name == "BraTS-GLI-00001-000.nii.gz"
    labels = set(np.unique(np.asarray(nib.load(result.segmentation).dataobj)).tolist())
    assert labels <= {0, 1, 2, 3}


def test_remove_small_components_keeps_only_large_tumor():
    from jaxseg.infer.predict import remove_small_components
    classes = np.zeros((20, 20, 20), np.uint8)
    classes[2:10, 2:10, 2:10] = 2  # 512 voxels = 0.512 mL at 1 mm
    classes[4:6, 4:6, 4:6] = 3
    classes[15:17, 15:17, 15:17] = 1  # 8 voxels: a speck
    out = remove_small_components(classes, (1.0, 1.0, 1.0), min_ml=0.1)
    assert out[15:17, 15:17, 15:17].max() == 0
    np.testing.assert_array_equal(out[:12, :12, :12], classes[:12, :12, :12])
    # at 2 mm the speck is 64 mm^3 = 0.064 mL: still removed at 0.1 mL, kept at 0.05 mL
    assert remove_small_components(classes, (2.0, 2.0, 2.0), 0.05)[15, 15, 15] == 1
    assert remove_small_components(classes, (1.0, 1.0, 1.0), 0.0) is classes


def test_relabel_small_enhancing_turns_little_total_et_into_necrosis():
    from jaxseg.infer.predict import relabel_small_enhancing
    classes = np.zeros((20, 20, 20), np.uint8)
    classes[2:10, 2:10, 2:10] = 2
    classes[4:6, 4:6, 4:6] = 3  # 8 voxels of ET = 0.008 mL at 1 mm
    out = relabel_small_enhancing(classes, (1.0, 1.0, 1.0), min_ml=0.01)
    assert (out == 3).sum() == 0 and (out[4:6, 4:6, 4:6] == 1).all()
    np.testing.assert_array_equal(out > 0, classes > 0)  # WT untouched
    # The rule is on the total ET volume: 8 voxels at 2 mm are 0.064 mL, kept at 0.05 mL.
    np.testing.assert_array_equal(relabel_small_enhancing(classes, (2.0, 2.0, 2.0), 0.05), classes)
    assert relabel_small_enhancing(classes, (1.0, 1.0, 1.0), 0.0) is classes
    assert (classes == 3).sum() == 8  # the input is not modified


def test_flip_tta_on_slices_is_the_mean_over_the_four_in_plane_flips(smoke_run, tmp_path):
    """``infer.tta_flips`` for a 2D model: each slice's probabilities are the mean of the plain
    predictions of its four (H, W) flips, each flipped back (computed here one flip at a time)."""
    import shutil
    run = tmp_path / "tta_run"
    shutil.copytree(smoke_run, run)
    config = (run / "config.toml").read_text()
    assert "tta_flips = false" in config
    (run / "config.toml").write_text(config.replace("tta_flips = false", "tta_flips = true"))
    plain, tta = Predictor(smoke_run), Predictor(run)
    size = plain.cfg.data.image_size
    slices = np.random.default_rng(0).normal(size=(5, size, size, plain.cfg.in_channels)).astype(np.float32)
    expected = np.mean([np.flip(plain.slice_probabilities(np.flip(slices, axes).copy()), axes)
                        for axes in [(), (1,), (2,), (1, 2)]], axis=0)
    got = tta.slice_probabilities(slices)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, plain.slice_probabilities(slices), atol=1e-4)  # the flips changed it


def test_predictors_of_the_same_model_share_one_compilation(smoke_run):
    """The forward pass is one module-level jitted function keyed on the (static) graphdef: a
    second Predictor of the run compiles nothing new, and gives the same probabilities."""
    from jaxseg.infer import predict as predict_module
    first = Predictor(smoke_run, batch_size=4)
    size = first.cfg.data.image_size
    slices = np.random.default_rng(0).standard_normal((5, size, size, len(first.modalities))).astype(np.float32)
    probs = first.slice_probabilities(slices)
    compiled = predict_module.probabilities._cache_size()
    second = Predictor(smoke_run, batch_size=4)
    assert second.graphdef == first.graphdef and second.graphdef is not first.graphdef
    np.testing.assert_array_equal(second.slice_probabilities(slices), probs)
    assert predict_module.probabilities._cache_size() == compiled
