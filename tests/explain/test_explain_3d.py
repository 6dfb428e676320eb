"""Explanations of the 3D U-Net: 3D Grad-CAM and MC dropout on volumes, and `explain` with a 3D run."""
import json

import jax
import nibabel as nib
import numpy as np
import pytest
from flax import nnx

from jaxseg.data import phantom
from jaxseg.explain import volume3d
from jaxseg.explain.gradcam import gradcam
from jaxseg.explain.run import ExplainSettings, explain
from jaxseg.explain.uncertainty import mc_dropout
from jaxseg.infer.predict import Predictor
from tests.models.test_unet3d import build_tiny, volumes


def parts(model):
    return nnx.split(model, nnx.Param, nnx.BatchStat)


@pytest.mark.parametrize("layer", ["enc0", "enc1", "dec0"])
def test_gradcam_of_every_3d_layer_is_a_normalised_volume(layer):
    graphdef, params, stats = parts(build_tiny(4, 3))
    x = volumes(channels=4)
    cam = np.asarray(gradcam(graphdef, params, stats, x, layer, "mean", target_kind="regions"))
    assert cam.shape == (2, 16, 16, 16) and cam.dtype == np.float32
    assert cam.min() >= 0 and np.allclose(cam.max(axis=(1, 2, 3)), 1.0)
    other = np.asarray(gradcam(graphdef, params, stats, x, layer, "mean:ET", target_kind="regions"))
    assert not np.allclose(cam, other)  # the target matters


def test_mc_dropout_on_volumes_spreads_only_with_dropout():
    x = volumes(channels=2)
    key = jax.random.key(3)
    with_dropout = mc_dropout(*parts(build_tiny(2, 4, dropout=0.3)), x, key, 4, "classes")
    assert with_dropout["mean"].shape == (2, 16, 16, 16, 4) and with_dropout["entropy"].shape == (2, 16, 16, 16)
    assert float(with_dropout["variance"].max()) > 0 and float(with_dropout["mutual_information"].min()) > -1e-5
    np.testing.assert_allclose(np.asarray(with_dropout["mean"]).sum(-1), 1.0, rtol=1e-5)
    without = mc_dropout(*parts(build_tiny(2, 4, dropout=0.0)), x, key, 4, "classes")
    assert float(without["variance"].max()) == 0.0


def test_tumor_window_is_centred_on_the_predicted_tumor_and_stays_in_the_box():
    probs = np.zeros((40, 30, 20, 3), np.float32)
    probs[30:34, 4:8, 2:6, 0] = 0.9  # a whole-tumor blob near a corner; centroid (31.5, 5.5, 3.5)
    origin = volume3d.tumor_window_origin(probs, "regions", 16)
    np.testing.assert_array_equal(origin, [24, 0, 0])  # centred (32-8, 6-8, 4-8), clipped into the box
    np.testing.assert_array_equal(volume3d.tumor_window_origin(np.zeros_like(probs), "regions", 16),
                                  [12, 7, 2])  # no tumor: the box centre
    small = np.zeros((10, 30, 20, 4), np.float32)
    small[..., 0] = 1.0  # softmax: all background
    assert volume3d.tumor_window_origin(small, "classes", 16)[0] == -3  # padded axis: centred padding


def test_paste_window_drops_what_lies_outside_the_volume():
    window = np.arange(8 ** 3, dtype=np.float32).reshape(8, 8, 8)
    out = volume3d.paste_window(window, np.array([-2, 3, 0]), (10, 9, 8))
    assert out.shape == (10, 9, 8)
    np.testing.assert_array_equal(out[0:6, 3:9, :], window[2:8, 0:6, :])
    assert out[6:].max() == 0 and out[:, :3].max() == 0


def test_mc_dropout_windows_cover_the_volume_and_are_a_function_of_the_key(smoke_run_3d):
    predictor = Predictor(smoke_run_3d)
    volume = np.random.default_rng(0).normal(size=(20, 24, 18, 4)).astype(np.float32)
    a = volume3d.mc_dropout_windows(predictor, volume, jax.random.key(1), 2)
    b = volume3d.mc_dropout_windows(predictor, volume, jax.random.key(1), 2)
    assert a["mean"].shape == a["variance"].shape == a["entropy"].shape == (20, 24, 18, 3)
    assert a["variance"].min() >= 0 and a["variance"].max() > 0 and a["entropy"].min() >= 0
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_explain_with_a_3d_run_writes_every_map_in_the_input_geometry(smoke_run_3d, tmp_path):
    data = tmp_path / "data"
    phantom.write_phantoms(data, 1, seed=21, shape=(32, 32, 20))
    case = data / "Phantom_21_000"
    result = explain(case, smoke_run_3d, tmp_path / "out", ExplainSettings(mc_samples=2, faithfulness_steps=3))
    flair = nib.load(case / "Phantom_21_000_flair.nii.gz")
    # ig_<modality>: the whole tumor's attribution in each sequence, from the Grad-CAM window.
    assert {"segmentation", "probabilities", "gradcam", "mc_mean", "mc_variance", "mc_entropy",
            "mc_mutual_information", "summary", "ig_flair", "ig_t1", "ig_t1ce", "ig_t2"} == set(result.files)
    for name, path in result.files.items():
        if name != "summary":
            img = nib.load(path)
            assert img.shape[:3] == flair.shape and np.array_equal(img.affine, flair.affine), name
    summary = json.loads(result.files["summary"].read_text())
    window = summary["gradcam_window"]
    assert window["size"] == 16 and summary["model"]["name"] == "unet3d"
    # Grad-CAM lives in its window (canonical = stored RAS here), 0 elsewhere
    cam = np.asarray(nib.load(result.files["gradcam"]).dataobj)
    inside = np.zeros(cam.shape, bool)
    inside[tuple(slice(max(s, 0), s + 16) for s in window["start"])] = True
    assert cam[~inside].max(initial=0) == 0 and 0 < cam.max() <= 1
    assert np.asarray(nib.load(result.files["mc_variance"]).dataobj).max() > 0
    html = result.report.read_text()
    assert "MC variance" in html and "Phantom_21_000" in html
