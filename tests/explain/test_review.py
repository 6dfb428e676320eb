"""Slices to review first: the uncertainty mass near the predicted tumor, per slice, against
scipy's dilation and a loop over slices."""
import numpy as np
import pytest
from scipy import ndimage

from jaxseg.explain import review


@pytest.mark.parametrize("margin", [0, 1, 3])
def test_dilation_equals_scipy_with_a_cube(margin):
    rng = np.random.default_rng(margin)
    mask = rng.uniform(size=(9, 11, 7)) < 0.03
    expected = ndimage.binary_dilation(mask, np.ones((2 * margin + 1,) * 3, bool)) if margin else mask
    np.testing.assert_array_equal(review.dilate(mask, margin), expected)


def test_ranking_equals_a_loop_over_slices():
    rng = np.random.default_rng(0)
    uncertainty = rng.uniform(size=(16, 16, 12))
    predicted = np.zeros((16, 16, 12), bool)
    predicted[5:9, 6:10, 3:6] = True
    predicted[2, 2, 9] = True
    ranked = review.slices_to_review(uncertainty, predicted, margin=2, top=5)
    near = ndimage.binary_dilation(predicted, np.ones((5, 5, 5), bool))
    scores = [uncertainty[:, :, z][near[:, :, z]].sum() for z in range(12)]
    expected = sorted((z for z in range(12) if scores[z] > 0), key=lambda z: (-scores[z], z))[:5]
    assert [r["slice"] for r in ranked] == expected
    for r in ranked:
        assert r["score"] == pytest.approx(scores[r["slice"]])
        assert r["share"] == pytest.approx(scores[r["slice"]] / sum(scores))
    # Slices 0 and 11 are more than 2 voxels from any tumor: never listed.
    everything = review.slices_to_review(uncertainty, predicted, margin=2, top=12)
    assert {r["slice"] for r in everything} == {z for z in range(12) if near[:, :, z].any()}


def test_no_tumor_no_slices():
    assert review.slices_to_review(np.ones((4, 4, 4)), np.zeros((4, 4, 4), bool)) == []
