"""Per-volume Grad-CAM normalisation and the measures of a layer, against loops and the
per-slice path they replace."""
import jax
import numpy as np
import pytest
from flax import nnx

from jaxseg.explain import gradcam as G
from jaxseg.explain.faithfulness_slices import faithfulness_slices
from jaxseg.explain.layer_quality import layer_quality, mass_inside, normalise_map
from tests.explain.test_gradcam import TwoLayer

RNG = np.random.default_rng(8)


def test_volume_and_slice_normalisation_equal_loops():
    cam = RNG.uniform(size=(5, 6, 4)) * np.array([1.0, 0.1, 0.0, 3.0])  # slice 2 is all zero
    volume = normalise_map(cam)
    np.testing.assert_allclose(volume, cam / cam.max(), rtol=1e-6)
    per_slice = normalise_map(cam, "slice")
    for z in range(4):
        expected = cam[..., z] / cam[..., z].max() if cam[..., z].max() > 0 else 0 * cam[..., z]
        np.testing.assert_allclose(per_slice[..., z], expected, rtol=1e-6)
    # Per volume keeps the slices' relative strength (no bands); per slice makes each peak 1.
    assert volume[..., 1].max() / volume[..., 3].max() == pytest.approx(cam[..., 1].max() / cam[..., 3].max(), rel=1e-5)
    assert per_slice[..., 1].max() == per_slice[..., 3].max() == 1.0
    np.testing.assert_allclose(normalise_map(np.moveaxis(cam, 2, 0), "slice", axis=0), np.moveaxis(per_slice, 2, 0))
    assert not normalise_map(np.zeros((2, 2, 2))).any()
    with pytest.raises(ValueError, match="normalisation"):
        normalise_map(cam, "case")


def test_mass_inside_is_the_share_of_the_sum():
    cam = RNG.uniform(size=(4, 4, 3))
    region = RNG.uniform(size=cam.shape) < 0.3
    assert mass_inside(cam, region) == pytest.approx(sum(cam[region]) / cam.sum())
    assert mass_inside(np.zeros((2, 2)), np.ones((2, 2), bool)) == 0.0


def test_raw_gradcam_divided_by_its_peak_is_the_normalised_map():
    model = nnx.split(TwoLayer(2, 2, 4, 1, nnx.Rngs(1)), nnx.Param, nnx.BatchStat)
    images = RNG.normal(size=(3, 8, 8, 2)).astype(np.float32)
    raw = np.asarray(G.gradcam(*model, images, "enc0", "mean", target_kind="wt", normalise=False))
    normalised = np.asarray(G.gradcam(*model, images, "enc0", "mean", target_kind="wt"))
    peak = raw.max(axis=(1, 2), keepdims=True)
    assert (peak > 0).all()
    np.testing.assert_allclose(raw / peak, normalised, atol=1e-6)


def test_layer_quality_agrees_with_the_per_slice_path():
    model = nnx.split(TwoLayer(2, 2, 4, 1, nnx.Rngs(2)), nnx.Param, nnx.BatchStat)
    slices = RNG.normal(size=(6, 8, 8, 2)).astype(np.float32)
    key = jax.random.key(4)
    [quality] = layer_quality(*model, slices, key, layers=["enc0"], target_kind="wt", steps=5,
                              batch_size=4).values()
    per_slice_cam = G.gradcam_volume(*model, slices, "enc0", "mean", target_kind="wt", batch_size=4)
    logits = np.asarray(nnx.merge(*model)(slices)[0])[..., 0]
    predicted = logits > 0
    assert predicted.any()
    assert quality["mass_inside_slice_normalised"] == pytest.approx(mass_inside(per_slice_cam, predicted), rel=1e-5)
    # Rankings within a slice do not depend on how the slice is scaled: the same curves.
    curves = faithfulness_slices(*model, slices, per_slice_cam, key, steps=5, target_kind="wt", batch_size=4)
    assert quality["deletion_auc"] == pytest.approx(curves["deletion_score_auc"], abs=1e-6)
    assert quality["insertion_beats_random"] == curves["insertion_beats_random"]
    assert quality["n"] == int(predicted.any(axis=(1, 2)).sum())
    assert quality["zero_map"] is False
