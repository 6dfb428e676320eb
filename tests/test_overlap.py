"""The one Dice (jaxseg.overlap) against an independent set computation, in both forms (masks
and sums), numpy and jax, and its empty-mask convention (both empty: 1.0; one empty: 0.0)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import overlap


def set_dice(pred, ref):
    """Dice of two masks from the sets of their foreground positions (plain Python)."""
    p, r = set(np.flatnonzero(np.ravel(pred))), set(np.flatnonzero(np.ravel(ref)))
    if not p and not r:
        return 1.0  # the BraTS convention: a correct "no tumor"
    return 2 * len(p & r) / (len(p) + len(r))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_of_whole_masks_matches_the_set_computation(seed):
    pred, ref = random_masks(seed, (6, 7, 5))
    score = overlap.dice(pred, ref)
    assert isinstance(score, float)
    assert score == pytest.approx(set_dice(pred, ref), rel=1e-12)
    assert float(overlap.dice(jnp.asarray(pred), jnp.asarray(ref))) == pytest.approx(set_dice(pred, ref), rel=1e-6)


def test_dice_per_slice_and_per_sample_keeps_the_other_axes():
    pred, ref = random_masks(3, (5, 6, 4), p=0.2)
    pred[..., 1] = False  # a slice empty in both masks
    ref[..., 1] = False
    pred[..., 2] = False  # a slice empty in the prediction only
    ref[..., 2] |= np.eye(5, 6, dtype=bool)
    per_z = overlap.dice(pred, ref, axis=(0, 1))
    expected = [set_dice(pred[..., z], ref[..., z]) for z in range(4)]
    np.testing.assert_allclose(per_z, expected, rtol=1e-12)
    assert per_z[1] == 1.0 and per_z[2] == 0.0
    per_sample = jax.jit(lambda a, b: overlap.dice(a, b, axis=(1, 2)))(jnp.asarray(pred), jnp.asarray(ref))
    np.testing.assert_allclose(per_sample, [set_dice(pred[i], ref[i]) for i in range(5)], rtol=1e-6)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_empty_cases(xp):
    empty = xp.zeros((4, 4), bool)
    some = xp.asarray(np.eye(4, dtype=bool))
    assert float(overlap.dice(empty, empty)) == 1.0
    assert float(overlap.dice(empty, some)) == 0.0
    assert float(overlap.dice(some, empty)) == 0.0
    assert float(overlap.dice(some, some)) == 1.0


def test_dice_from_counts_is_the_rule_of_both_forms():
    counts = np.array([0, 3, 0]), np.array([0, 10, 4])
    np.testing.assert_array_equal(overlap.dice_from_counts(*counts), [1.0, 0.6, 0.0])
    np.testing.assert_allclose(overlap.dice_from_counts(*(jnp.asarray(c) for c in counts)), [1.0, 0.6, 0.0])


def test_sums_form_agrees_with_the_mask_form_over_batches():
    """Confusion sums added over batches give the Dice of the concatenated masks, with the same
    empty convention (channel 2 is empty in both)."""
    pred, ref = random_masks(4, (6, 5, 5, 3))
    pred[..., 2] = ref[..., 2] = False
    total = {"tp": 0, "fp": 0, "fn": 0}
    for start in (0, 2, 4):
        sums = jax.jit(overlap.confusion_sums)(jnp.asarray(pred[start:start + 2]), jnp.asarray(ref[start:start + 2]))
        total = {k: total[k] + np.asarray(sums[k], np.int64) for k in total}
    scores = overlap.scores_from_sums(total)
    np.testing.assert_allclose(scores["dice"], [set_dice(pred[..., k], ref[..., k]) for k in range(3)], rtol=1e-12)
    np.testing.assert_allclose(scores["dice"], overlap.dice(pred, ref, axis=(0, 1, 2)), rtol=1e-12)
    assert scores["iou"][2] == scores["precision"][2] == scores["recall"][2] == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        overlap.dice(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


# --------------------------------------------------------------------------- sums and scores

def np_scores(pred, ref):
    """Dice, IoU, precision, recall of one channel, computed directly."""
    pred, ref = pred.astype(bool).ravel(), ref.astype(bool).ravel()
    inter = np.sum(pred & ref)
    if not pred.any() and not ref.any():
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {"dice": 2 * inter / (pred.sum() + ref.sum()), "iou": inter / np.sum(pred | ref),
            "precision": inter / pred.sum() if pred.any() else 0.0,
            "recall": inter / ref.sum() if ref.any() else 0.0}


def random_masks(seed, shape=(4, 8, 8, 3), p=0.3):
    rng = np.random.default_rng(seed)
    return rng.random(shape) < p, rng.random(shape) < p


def test_scores_match_numpy_per_channel():
    pred, ref = random_masks(0)
    sums = jax.jit(overlap.confusion_sums)(jnp.asarray(pred), jnp.asarray(ref))
    assert sums["tp"].shape == (3,) and sums["tp"].dtype == jnp.int32
    scores = overlap.scores_from_sums(sums)
    for k in range(3):
        expected = np_scores(pred[..., k], ref[..., k])
        for name, value in expected.items():
            assert scores[name][k] == pytest.approx(value, rel=1e-12), (name, k)


def test_numpy_inputs_give_the_same_sums():
    pred, ref = random_masks(1)
    from_np = overlap.confusion_sums(pred, ref)
    from_jax = overlap.confusion_sums(jnp.asarray(pred), jnp.asarray(ref))
    for key in ("tp", "fp", "fn"):
        assert from_np[key].dtype == np.int64
        np.testing.assert_array_equal(from_np[key], np.asarray(from_jax[key]))


def test_sums_over_batches_equal_the_metric_of_the_concatenation():
    pred, ref = random_masks(2, shape=(9, 6, 6, 2))
    total = None
    for start in range(0, 9, 4):  # batches of 4, 4, 1
        sums = overlap.confusion_sums(jnp.asarray(pred[start:start + 4]), jnp.asarray(ref[start:start + 4]))
        total = sums if total is None else {k: total[k] + sums[k] for k in total}
    scores = overlap.scores_from_sums(total)
    for k in range(2):
        assert scores["dice"][k] == pytest.approx(np_scores(pred[..., k], ref[..., k])["dice"])
    # ...which is not the mean of per-batch Dices in general.
    batch_dices = [np_scores(pred[s:s + 4, ..., 0], ref[s:s + 4, ..., 0])["dice"] for s in (0, 4, 8)]
    assert scores["dice"][0] != pytest.approx(np.mean(batch_dices))


def test_valid_mask_ignores_padding():
    pred, ref = random_masks(3)
    valid = np.array([True, False, True, False])
    masked = overlap.confusion_sums(jnp.asarray(pred), jnp.asarray(ref), jnp.asarray(valid))
    subset = overlap.confusion_sums(jnp.asarray(pred[valid]), jnp.asarray(ref[valid]))
    for key in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(masked[key], subset[key])


def test_empty_mask_conventions():
    empty = np.zeros((1, 4, 4, 1), bool)
    full = np.ones((1, 4, 4, 1), bool)
    both_empty = overlap.scores_from_sums(overlap.confusion_sums(empty, empty))
    assert all(both_empty[name][0] == 1.0 for name in ("dice", "iou", "precision", "recall"))
    for pred, ref in ((empty, full), (full, empty)):
        scores = overlap.scores_from_sums(overlap.confusion_sums(pred, ref))
        assert all(scores[name][0] == 0.0 for name in ("dice", "iou", "precision", "recall"))
