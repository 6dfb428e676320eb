"""Faithfulness over every tumor slice: per-slice curves written out by hand for a pixel-wise
model, only tumor slices counted, and a map that is the model's own evidence beats chance."""
import jax
import numpy as np
import pytest
from flax import nnx

from jaxseg.explain import faithfulness as F
from jaxseg.explain.faithfulness_slices import faithfulness_slices, tumor_slices
from tests.explain.test_faithfulness import hand_fractions, pixel_model

RNG = np.random.default_rng(5)


def probability(x):
    return 1 / (1 + np.exp(-(6.0 * x[..., 0] - 3.0)))


def volume_of_slices():
    """7 slices of 8 x 8; slices 1 and 4 have channel 0 below 0.5 everywhere (no tumor)."""
    x = RNG.uniform(size=(7, 8, 8, 2)).astype(np.float32)
    x[[1, 4], ..., 0] *= 0.4
    return x


def aucs_by_hand(image, ranking, grid):
    """Deletion and insertion AUCs of the tumor score of one slice, ``ranking`` with no ties."""
    reference = probability(image) > 0.5
    order = np.argsort(-ranking.ravel())
    deletion, insertion = [], []
    for fraction in grid:
        top = np.zeros(image.shape[0] * image.shape[1], bool)
        top[order[: int(round(fraction * top.size))]] = True
        top = top.reshape(*image.shape[:2], 1)
        deletion.append(probability(np.where(top, 0.0, image))[reference].mean())
        insertion.append(probability(np.where(top, image, 0.0))[reference].mean())
    return np.trapezoid(deletion, grid), np.trapezoid(insertion, grid)


@pytest.mark.parametrize("spacing", ["linear", "geometric"])
def test_fractions_equal_a_slice_by_slice_hand_computation(spacing):
    slices = volume_of_slices()
    saliency = RNG.uniform(size=slices.shape[:-1]).astype(np.float32)
    noise = RNG.uniform(size=slices.shape[:-1]).astype(np.float32)
    model = nnx.split(pixel_model(), nnx.Param, nnx.BatchStat)
    out = faithfulness_slices(*model, slices, saliency, jax.random.key(0), steps=6, spacing=spacing,
                              target_kind="wt", batch_size=2, random_saliency=noise)
    grid = hand_fractions(6, spacing)
    expected_slices = [z for z in range(7) if (probability(slices[z]) > 0.5).any()]
    assert out["slices"] == expected_slices == [0, 2, 3, 5, 6]
    assert out["n"] == 5
    wins_deletion = wins_insertion = 0
    for i, z in enumerate(expected_slices):
        d_map, i_map = aucs_by_hand(slices[z], saliency[z], grid)
        d_random, i_random = aucs_by_hand(slices[z], noise[z], grid)
        assert out["per_slice_auc"]["deletion_score"][i] == pytest.approx(d_map, abs=1e-5)
        assert out["per_slice_auc"]["random_insertion_score"][i] == pytest.approx(i_random, abs=1e-5)
        wins_deletion += d_map < d_random
        wins_insertion += i_map > i_random
    assert out["deletion_beats_random"] == pytest.approx(wins_deletion / 5)
    assert out["insertion_beats_random"] == pytest.approx(wins_insertion / 5)
    # The mean curves are those of faithfulness() on the tumor slices with the same rankings.
    whole = F._curves(model[0], model[1], model[2], slices[expected_slices],
                      np.stack([saliency[expected_slices], noise[expected_slices]]), jax.random.key(1),
                      0, 0.0, target_kind="wt", fractions=F.static_fractions(F.curve_fractions(6, spacing)),
                      chunk=None)
    np.testing.assert_allclose(out["deletion_score"], np.asarray(whole)[0, :, 0].mean(-1), atol=1e-6)


def test_the_models_own_evidence_beats_chance_everywhere():
    slices = volume_of_slices()
    model = nnx.split(pixel_model(), nnx.Param, nnx.BatchStat)
    evidence = slices[..., 0] + 1e-3 * RNG.uniform(size=slices.shape[:-1])  # what the logit reads
    out = faithfulness_slices(*model, slices, evidence, jax.random.key(2), steps=11, target_kind="wt")
    assert out["deletion_beats_random"] == out["insertion_beats_random"] == 1.0
    against = faithfulness_slices(*model, slices, -evidence, jax.random.key(2), steps=11, target_kind="wt")
    assert against["deletion_beats_random"] == against["insertion_beats_random"] == 0.0


def test_no_tumor_slices():
    slices = volume_of_slices()[[1, 4]]
    model = nnx.split(pixel_model(), nnx.Param, nnx.BatchStat)
    assert len(tumor_slices(*model, slices, target_kind="wt")) == 0
    out = faithfulness_slices(*model, slices, slices[..., 0], jax.random.key(0), target_kind="wt")
    assert out["n"] == 0 and out["deletion_beats_random"] is None
