"""Deletion / insertion curves: right at the ends, equal to a hand computation in between, and
Grad-CAM beats a random ranking on phantoms whose tumor is known."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.explain import faithfulness as F
from jaxseg.explain import gradcam as G
from tests.explain.test_gradcam import trained_wt_model


class PixelModel(nnx.Module):
    """Logit = a 1x1 convolution of the image: each pixel's prediction depends on that pixel only,
    so the curves can be written out by hand."""

    def __init__(self, in_channels, rngs):
        self.head = nnx.Conv(in_channels, 1, (1, 1), rngs=rngs)

    def __call__(self, x, *, train=False, dropout_key=None, perturb=None):
        return self.head(x), {}


def pixel_model():
    model = PixelModel(2, nnx.Rngs(0))
    # Tumor where channel 0 is bright: logit = 6 * x0 - 3.
    model.head.kernel[...] = jnp.array([6.0, 0.0]).reshape(1, 1, 2, 1)
    model.head.bias[...] = jnp.array([-3.0])
    return model


def hand_fractions(steps, spacing):
    """0 .. 1 evenly, or 0 then 1/1024 .. 1 at the ratio 1024 ** (1 / (steps - 2))."""
    if spacing == "linear":
        return np.linspace(0, 1, steps)
    return np.array([0.0] + [1024.0 ** (k / (steps - 2) - 1) for k in range(steps - 1)])


def test_curve_fractions():
    np.testing.assert_array_equal(F.curve_fractions(5), np.linspace(0, 1, 5, dtype=np.float32))
    geometric = F.curve_fractions(11, "geometric")
    assert geometric.dtype == np.float32 and geometric[0] == 0 and geometric[-1] == 1
    np.testing.assert_allclose(geometric[1], 1 / 1024)
    np.testing.assert_allclose(geometric[2:] / geometric[1:-1], 1024 ** (1 / 9), rtol=1e-5)  # a constant ratio
    np.testing.assert_array_equal(F.curve_fractions(2, "geometric"), [0, 1])
    with pytest.raises(ValueError, match="at least 2"):
        F.curve_fractions(1)
    with pytest.raises(ValueError, match="unknown fraction spacing 'log'.*geometric"):
        F.curve_fractions(5, "log")


@pytest.mark.parametrize("spacing", ["linear", "geometric"])
def test_curves_equal_a_hand_computation_for_a_pixelwise_model(spacing):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 16, 16, 2)).astype(np.float32)
    saliency = rng.uniform(size=(2, 16, 16)).astype(np.float32)  # no ties: the order is the map's
    graphdef, params, batch_stats = nnx.split(pixel_model(), nnx.Param, nnx.BatchStat)
    out = F.faithfulness(graphdef, params, batch_stats, images, saliency, jax.random.key(0), steps=5,
                         spacing=spacing)
    fractions = hand_fractions(5, spacing)

    probability = lambda x: 1 / (1 + np.exp(-(6.0 * x[..., 0] - 3.0)))  # noqa: E731
    reference = probability(images) > 0.5
    order = np.argsort(-saliency.reshape(2, -1), axis=1)
    expected = {name: [] for name in F.CURVES}
    for fraction in fractions:
        top = np.zeros((2, 256), bool)
        np.put_along_axis(top, order[:, : int(round(fraction * 256))], True, axis=1)
        top = top.reshape(2, 16, 16, 1)
        for mode, x in (("deletion", np.where(top, 0.0, images)), ("insertion", np.where(top, images, 0.0))):
            p = probability(x)
            expected[f"{mode}_score"].append(np.mean([p[b][reference[b]].mean() for b in range(2)]))
            pred = p > 0.5
            dices = [2 * (pred[b] & reference[b]).sum() / (pred[b].sum() + reference[b].sum()) for b in range(2)]
            expected[f"{mode}_dice"].append(np.mean(dices))
    assert reference.any(axis=(1, 2)).all()
    np.testing.assert_allclose(out["fractions"], fractions, rtol=1e-6)
    for name in F.CURVES:
        np.testing.assert_allclose(out[name], expected[name], atol=1e-5, err_msg=name)
        assert out[f"{name}_auc"] == pytest.approx(np.trapezoid(expected[name], fractions), abs=1e-5)
    # Deleting nothing and inserting everything both leave the image as it was.
    assert out["deletion_dice"][0] == out["insertion_dice"][-1] == 1.0
    assert out["random_deletion_score"][0] == pytest.approx(out["deletion_score"][0], abs=1e-6)
    assert out["insertion_score"][-1] == pytest.approx(out["deletion_score"][0], abs=1e-6)


def test_ranks_break_ties_at_random_and_chunking_changes_nothing():
    saliency = jnp.zeros((1, 4, 8)).at[0, 3, 7].set(1.0).at[0, 0, 0].set(0.5)
    ranks = np.asarray(F.pixel_ranks(saliency, jax.random.key(0)))
    assert sorted(ranks.ravel()) == list(range(32))
    assert ranks[0, 3, 7] == 0 and ranks[0, 0, 0] == 1
    # The 30 tied pixels: not in raster order (which would delete the top rows first).
    tied = np.delete(ranks.ravel(), [0, 31])
    assert not np.array_equal(tied, np.sort(tied))
    other = np.asarray(F.pixel_ranks(saliency, jax.random.key(1)))
    assert not np.array_equal(ranks, other)

    rng = np.random.default_rng(1)
    images = rng.uniform(size=(2, 8, 8, 2)).astype(np.float32)
    saliency = rng.uniform(size=(2, 8, 8)).astype(np.float32)
    graphdef, params, batch_stats = nnx.split(pixel_model(), nnx.Param, nnx.BatchStat)
    whole = F.faithfulness(graphdef, params, batch_stats, images, saliency, jax.random.key(5), steps=5)
    chunked = F.faithfulness(graphdef, params, batch_stats, images, saliency, jax.random.key(5), steps=5, chunk=3)
    for name, value in whole.items():
        np.testing.assert_allclose(chunked[name], value, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="saliency"):
        F.faithfulness(graphdef, params, batch_stats, images, saliency[:1], jax.random.key(5))


def test_gradcam_beats_a_random_ranking_on_held_out_phantoms():
    graphdef, params, batch_stats, (images, classes) = trained_wt_model()
    cam = G.gradcam(graphdef, params, batch_stats, images, "dec0", "mean")
    out = F.faithfulness(graphdef, params, batch_stats, images, cam, jax.random.key(0))
    aucs = {k: round(v, 3) for k, v in out.items() if k.endswith("_auc")}
    print("dec0 Grad-CAM faithfulness AUCs:", aucs)
    assert out["fractions"].shape == out["deletion_score"].shape == (21,)
    assert out["deletion_score_auc"] < 0.5 * out["random_deletion_score_auc"]
    assert out["insertion_score_auc"] > 2 * out["random_insertion_score_auc"]
    assert out["deletion_dice_auc"] < out["random_deletion_dice_auc"]
    assert out["insertion_dice_auc"] > out["random_insertion_dice_auc"]
