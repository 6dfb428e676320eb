"""Occlusion sensitivity and integrated gradients: equal to hand computations, complete, and
generic over spatial dimensions."""
import itertools

import numpy as np
import pytest
from flax import nnx

from jaxseg.explain import attribution as A
from tests.explain.test_faithfulness import pixel_model
from tests.explain.test_gradcam import TwoLayer

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(size=(2, 8, 8, 2)).astype(np.float32)


def split(model):
    return nnx.split(model, nnx.Param, nnx.BatchStat)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def pixel_score(x):
    """The pixel model's 'mean' WT score per sample, in float64: mean sigmoid(6 x0 - 3)."""
    return sigmoid(6.0 * np.asarray(x, np.float64)[..., 0] - 3.0).mean(axis=(1, 2))


def test_occlusion_equals_a_loop_over_patches():
    sensitivity = A.occlusion(*split(pixel_model()), IMAGES, "mean", patch=3, stride=2, target_kind="wt")
    total, count = np.zeros((2, 8, 8)), np.zeros((8, 8))
    starts = [0, 2, 4, 5]  # every 2, plus one flush with the edge
    np.testing.assert_array_equal(A.patch_starts(8, 3, 2), starts)
    for i, j in itertools.product(starts, starts):
        occluded = IMAGES.copy()
        occluded[:, i:i + 3, j:j + 3] = 0.0
        total[:, i:i + 3, j:j + 3] += (pixel_score(IMAGES) - pixel_score(occluded))[:, None, None]
        count[i:i + 3, j:j + 3] += 1
    assert sensitivity.shape == (2, 8, 8)
    np.testing.assert_allclose(np.asarray(sensitivity), total / count, atol=1e-6)


def test_occlusion_in_3d_and_in_chunks():
    model = TwoLayer(3, 2, 4, 1, nnx.Rngs(0))
    images = RNG.normal(size=(2, 4, 8, 8, 2)).astype(np.float32)
    whole = A.occlusion(*split(model), images, "mean", patch=4, target_kind="wt")
    chunked = A.occlusion(*split(model), images, "mean", patch=4, target_kind="wt", chunk=3)
    assert whole.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-6)
    # Patches of 4 with stride 4 tile the volume: each 4x4x4 block holds one value.
    blocks = np.asarray(whole).reshape(2, 1, 4, 2, 4, 2, 4)
    np.testing.assert_allclose(blocks, blocks[:, :, :1, :, :1, :, :1].repeat(4, 2).repeat(4, 4).repeat(4, 6),
                               atol=1e-7)


def test_integrated_gradients_equal_the_closed_form_of_a_pixelwise_model():
    attributions = A.integrated_gradients(*split(pixel_model()), IMAGES, "mean", steps=9, target_kind="wt")
    x0 = IMAGES[..., 0].astype(np.float64)
    alphas = np.linspace(0, 1, 9)
    weights = np.full(9, 1 / 8)
    weights[[0, -1]] = 1 / 16
    # d score / d x0 = 6 sigmoid'(6 x0 - 3) / pixels, along the straight path from 0.
    slopes = [6 * sigmoid(6 * a * x0 - 3) * (1 - sigmoid(6 * a * x0 - 3)) / 64 for a in alphas]
    expected = x0 * sum(w * s for w, s in zip(weights, slopes))
    assert attributions.shape == (2, 8, 8, 2)
    np.testing.assert_allclose(np.asarray(attributions[..., 0]), expected, atol=1e-7)
    assert not np.asarray(attributions[..., 1]).any()  # the model ignores channel 1


@pytest.mark.parametrize("target", ["mean:TC", "predicted:WT"])
def test_integrated_gradients_are_complete(target):
    model = TwoLayer(2, 2, 6, 3, nnx.Rngs(4))
    images = RNG.normal(size=(2, 16, 16, 2)).astype(np.float32)
    attributions = A.integrated_gradients(*split(model), images, target, steps=64, target_kind="regions", chunk=16)
    logits_at = lambda x: np.asarray(model(x)[0], np.float64)  # noqa: E731
    channel = 1 if target == "mean:TC" else 0
    pixels = np.ones((2, 16, 16), bool) if target == "mean:TC" else logits_at(images)[..., 0] > 0
    assert pixels.any(axis=(1, 2)).all()

    def score(x):
        p = sigmoid(logits_at(x)[..., channel])
        return (p * pixels).sum(axis=(1, 2)) / pixels.sum(axis=(1, 2))

    difference = score(images) - score(np.zeros_like(images))
    total = np.asarray(attributions, np.float64).sum(axis=(1, 2, 3))
    assert np.abs(difference).min() > 1e-3
    np.testing.assert_allclose(total, difference, rtol=0.02, atol=1e-5)


def test_integrated_gradients_of_several_regions_at_once():
    """One forward pass per step, one backward pass per region: each row equals the region's own
    integrated gradients, and each is complete (sums to its score's change from the baseline)."""
    model = TwoLayer(2, 2, 6, 3, nnx.Rngs(5))
    images = RNG.normal(size=(3, 16, 16, 2)).astype(np.float32)
    together = np.asarray(A.integrated_gradients_regions(*split(model), images, ["WT", "TC", "ET"], steps=64,
                                                          target_kind="regions"))
    assert together.shape == (3, 3, 16, 16, 2)
    logits = np.asarray(model(images)[0], np.float64)
    for r, region in enumerate(("WT", "TC", "ET")):
        alone = np.asarray(A.integrated_gradients(*split(model), images, f"predicted:{region}", steps=64,
                                                  target_kind="regions"))
        np.testing.assert_allclose(together[r], alone, rtol=1e-5, atol=1e-8)
        pixels = logits[..., r] > 0

        def score(x, r=r, pixels=pixels):
            p = sigmoid(np.asarray(model(x)[0], np.float64)[..., r])
            return np.where(pixels.any(axis=(1, 2)), (p * pixels).sum(axis=(1, 2)) / np.maximum(pixels.sum(axis=(1, 2)), 1),
                            p.mean(axis=(1, 2)))

        difference = score(images) - score(np.zeros_like(images))
        np.testing.assert_allclose(together[r].sum(axis=(1, 2, 3)), difference, rtol=0.03, atol=2e-5)
