"""Metrics against independent numpy computations: confusion sums and scores, region masks.
(HD95 and lesion-wise scores: tests/eval/test_surface.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.train import metrics as M


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
    sums = jax.jit(M.confusion_sums)(jnp.asarray(pred), jnp.asarray(ref))
    assert sums["tp"].shape == (3,) and sums["tp"].dtype == jnp.int32
    scores = M.scores_from_sums(sums)
    for k in range(3):
        expected = np_scores(pred[..., k], ref[..., k])
        for name, value in expected.items():
            assert scores[name][k] == pytest.approx(value, rel=1e-12), (name, k)


def test_numpy_inputs_give_the_same_sums():
    pred, ref = random_masks(1)
    from_np = M.confusion_sums(pred, ref)
    from_jax = M.confusion_sums(jnp.asarray(pred), jnp.asarray(ref))
    for key in ("tp", "fp", "fn"):
        assert from_np[key].dtype == np.int64
        np.testing.assert_array_equal(from_np[key], np.asarray(from_jax[key]))


def test_sums_over_batches_equal_the_metric_of_the_concatenation():
    pred, ref = random_masks(2, shape=(9, 6, 6, 2))
    total = None
    for start in range(0, 9, 4):  # batches of 4, 4, 1
        sums = M.confusion_sums(jnp.asarray(pred[start:start + 4]), jnp.asarray(ref[start:start + 4]))
        total = sums if total is None else {k: total[k] + sums[k] for k in total}
    scores = M.scores_from_sums(total)
    for k in range(2):
        assert scores["dice"][k] == pytest.approx(np_scores(pred[..., k], ref[..., k])["dice"])
    # ...which is not the mean of per-batch Dices in general.
    batch_dices = [np_scores(pred[s:s + 4, ..., 0], ref[s:s + 4, ..., 0])["dice"] for s in (0, 4, 8)]
    assert scores["dice"][0] != pytest.approx(np.mean(batch_dices))


def test_valid_mask_ignores_padding():
    pred, ref = random_masks(3)
    valid = np.array([True, False, True, False])
    masked = M.confusion_sums(jnp.asarray(pred), jnp.asarray(ref), jnp.asarray(valid))
    subset = M.confusion_sums(jnp.asarray(pred[valid]), jnp.asarray(ref[valid]))
    for key in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(masked[key], subset[key])


def test_empty_mask_conventions():
    empty = np.zeros((1, 4, 4, 1), bool)
    full = np.ones((1, 4, 4, 1), bool)
    both_empty = M.scores_from_sums(M.confusion_sums(empty, empty))
    assert all(both_empty[name][0] == 1.0 for name in ("dice", "iou", "precision", "recall"))
    for pred, ref in ((empty, full), (full, empty)):
        scores = M.scores_from_sums(M.confusion_sums(pred, ref))
        assert all(scores[name][0] == 0.0 for name in ("dice", "iou", "precision", "recall"))


# --------------------------------------------------------------------------- predictions and regions

def test_predictions_from_logits():
    logits = jnp.asarray([[[-1.0, 0.5, 2.0, 0.1]], [[3.0, -2.0, 0.0, -0.5]]])  # (2, 1, 4)
    np.testing.assert_array_equal(M.predictions_from_logits(logits, "regions"),
                                  [[[False, True, True, True]], [[True, False, False, False]]])
    np.testing.assert_array_equal(M.predictions_from_logits(logits, "classes"),
                                  [[[False, False, True, False]], [[True, False, False, False]]])


def test_region_masks_agree_between_classes_and_one_hot_predictions():
    rng = np.random.default_rng(4)
    classes = rng.integers(0, 4, (2, 5, 5)).astype(np.uint8)
    expected = np.stack([classes > 0, (classes == 1) | (classes == 3), classes == 3], axis=-1)
    np.testing.assert_array_equal(M.region_masks_from_classes(jnp.asarray(classes), "regions"), expected)
    np.testing.assert_array_equal(M.region_masks_from_classes(classes, "classes"), expected)
    np.testing.assert_array_equal(M.region_masks_from_classes(classes, "wt"), (classes > 0)[..., None])
    one_hot_logits = jnp.asarray(np.eye(4)[classes] * 5.0)
    np.testing.assert_array_equal(M.region_masks_from_logits(one_hot_logits, "classes"), expected)
    assert M.region_names("wt") == ("WT",) and M.region_names("classes") == ("WT", "TC", "ET")


def test_unknown_target_kind():
    for fn in (M.region_names, lambda kind: M.predictions_from_logits(np.zeros((1, 3)), kind),
               lambda kind: M.region_masks_from_classes(np.zeros((2, 2), np.uint8), kind)):
        with pytest.raises(ValueError, match="target kind"):
            fn("tissues")
