"""`predict` with a 3D checkpoint: sliding windows over the whole volume, written in the input's geometry."""
import nibabel as nib
import numpy as np

from jaxseg.data import brats, patches, phantom
from jaxseg.infer.predict import Predictor, predict


def test_predict_with_a_3d_run_keeps_shape_affine_and_labels(smoke_run_3d, tmp_path):
    data = tmp_path / "data"
    phantom.write_phantoms(data, 1, seed=7, shape=(32, 32, 20), orientation="LPS")
    case = data / "Phantom_7_000"
    [result] = predict(case, smoke_run_3d, tmp_path / "seg.nii.gz", probabilities=True)
    flair = nib.load(case / "Phantom_7_000_flair.nii.gz")
    seg = nib.load(result.segmentation)
    assert seg.shape == flair.shape and np.array_equal(seg.affine, flair.affine)
    assert nib.aff2axcodes(seg.affine) == ("L", "P", "S")
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}  # 2017-2021 labels
    probs = nib.load(result.probabilities)
    assert probs.shape == flair.shape + (3,)  # WT, TC, ET
    p = np.asarray(probs.dataobj)
    assert 0 <= p.min() and p.max() <= 1 and p.max() > 0
    assert set(result.volumes_ml) == {"WT", "TC", "ET"}


def test_volume_probabilities_cover_the_brain_box_by_windows(smoke_run_3d):
    """The whole prepared volume, larger than one window, gets probabilities; off-brain is 0."""
    predictor = Predictor(smoke_run_3d)
    assert predictor.volumetric
    case = brats.case_from_path(_phantom(smoke_run_3d))
    image, _, _ = brats.load_case(case, predictor.modalities)
    prepared = patches.prepare_volume_3d(image, None, predictor.cfg.data)
    assert max(prepared.image.shape[:3]) > predictor.cfg.data.patch_size  # really several windows
    box_probs = predictor.volume_probabilities(prepared.image)
    assert box_probs.shape == prepared.image.shape[:3] + (3,)
    probs, classes = predictor.predict_image(image)
    assert probs.shape == image.shape[:3] + (3,) and classes.shape == image.shape[:3]
    outside = np.ones(image.shape[:3], bool)
    outside[tuple(slice(a, b) for a, b in zip(prepared.box.start, prepared.box.stop))] = False
    assert probs[outside].max(initial=0) == 0 and classes[outside].max(initial=0) == 0


def _phantom(run):
    return sorted((run / "phantoms").iterdir())[0]
