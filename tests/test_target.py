"""Target kinds (jaxseg.target): their conversions against hand-made label maps, numpy and jax
agreeing, and the registry."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import target as T
from jaxseg.errors import JaxsegError

# A hand-made label map: every internal class, 0 background, 1 NCR, 2 ED, 3 ET.
CLASSES = np.array([[0, 1, 2], [3, 2, 0]], np.uint8)
# Its regions, written out by hand: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
WT = np.array([[0, 1, 1], [1, 1, 0]], bool)
TC = np.array([[0, 1, 0], [1, 0, 0]], bool)
ET = np.array([[0, 0, 0], [1, 0, 0]], bool)
KINDS = list(T.TARGET_KINDS.values())


def test_registry_names_channels_and_regions():
    assert set(T.TARGET_KINDS) == {"wt", "regions", "classes"}
    wt, regions, classes = (T.target_kind(n) for n in ("wt", "regions", "classes"))
    assert (wt.channels, regions.channels, classes.channels) == (1, 3, 4)
    assert wt.region_names == ("WT",) and regions.region_names == classes.region_names == ("WT", "TC", "ET")
    assert (wt.activation, regions.activation, classes.activation) == ("sigmoid", "sigmoid", "softmax")
    assert wt.whole_tumor_only and not regions.whole_tumor_only and not classes.whole_tumor_only
    for kind in KINDS:
        assert T.target_for_channels(kind.channels) is kind
        assert kind.accepts_loss(kind.default_loss)
        assert kind.accepts_loss("ce_dice") == (kind.activation == "softmax")


def test_target_for_reads_the_config_and_unknown_names_are_user_errors():
    class Cfg:
        class data:
            target = "regions"
    assert T.target_for(Cfg).name == "regions"
    with pytest.raises(JaxsegError, match="data.target: must be one of wt, regions, classes; got 'tumour'"):
        T.target_kind("tumour")
    with pytest.raises(ValueError):
        T.target_for_channels(2)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_region_masks_from_classes_match_the_hand_made_regions(xp):
    labels = xp.asarray(CLASSES)
    np.testing.assert_array_equal(T.target_kind("wt").region_masks_from_classes(labels), WT[..., None])
    for name in ("regions", "classes"):
        np.testing.assert_array_equal(T.target_kind(name).region_masks_from_classes(labels), np.stack([WT, TC, ET], -1))
    np.testing.assert_array_equal(T.region_masks(labels), np.stack([WT, TC, ET], -1))


def test_encode_gives_the_training_targets():
    np.testing.assert_array_equal(T.target_kind("wt").encode(CLASSES), WT[..., None].astype(np.float32))
    np.testing.assert_array_equal(T.target_kind("regions").encode(CLASSES), np.stack([WT, TC, ET], -1).astype(np.float32))
    onehot = T.target_kind("classes").encode(CLASSES)
    assert onehot.dtype == np.float32 and onehot.shape == CLASSES.shape + (4,)
    np.testing.assert_array_equal(onehot.sum(-1), 1.0)
    np.testing.assert_array_equal(onehot.argmax(-1), CLASSES)


def test_classes_from_output_inverts_the_encoding():
    """regions and classes recover every class; wt can only write 0/1 whole-tumor masks."""
    for name in ("regions", "classes"):
        kind = T.target_kind(name)
        np.testing.assert_array_equal(kind.classes_from_output(kind.encode(CLASSES)), CLASSES)
    wt = T.target_kind("wt")
    np.testing.assert_array_equal(wt.classes_from_output(wt.encode(CLASSES)), WT.astype(np.uint8))
    # Probabilities: thresholded at 0.5 for sigmoid kinds, the BraTS nesting ET > NCR (TC) > ED (WT).
    probs = np.array([[[0.9, 0.2, 0.1], [0.9, 0.8, 0.3], [0.9, 0.8, 0.7], [0.4, 0.1, 0.1]]], np.float32)
    np.testing.assert_array_equal(T.target_kind("regions").classes_from_output(probs), [[2, 1, 3, 0]])
    with pytest.raises(ValueError, match="3 channels"):
        T.target_kind("regions").classes_from_output(probs[..., :1])


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_softmax_regions_are_unions_of_classes(xp):
    logits = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype(np.float32) * 3
    kind = T.target_kind("classes")
    p = softmax(logits.astype(np.float64))
    probs = np.asarray(kind.probabilities(xp.asarray(logits)))
    np.testing.assert_allclose(probs, p, atol=1e-6)
    regions = np.asarray(kind.region_probabilities(xp.asarray(probs)))
    np.testing.assert_allclose(regions, np.stack([p[..., 1] + p[..., 2] + p[..., 3], p[..., 1] + p[..., 3], p[..., 3]], -1),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(kind.whole_tumor_probability(xp.asarray(probs))), 1 - p[..., 0], atol=1e-6)
    # Predicted regions are the regions of the argmax classes.
    np.testing.assert_array_equal(np.asarray(kind.region_masks_from_logits(xp.asarray(logits))),
                                  kind.region_masks_from_classes(logits.argmax(-1)))
    np.testing.assert_array_equal(np.asarray(kind.predictions_from_logits(xp.asarray(logits))).argmax(-1),
                                  logits.argmax(-1))


@pytest.mark.parametrize("name", ["wt", "regions"])
def test_sigmoid_channels_are_the_regions(name):
    kind = T.target_kind(name)
    logits = np.random.default_rng(1).normal(size=(3, 4, kind.channels)).astype(np.float32)
    probs = np.asarray(kind.probabilities(jnp.asarray(logits)))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)
    np.testing.assert_allclose(kind.probabilities(logits), probs, atol=1e-6)
    np.testing.assert_array_equal(kind.region_probabilities(probs), probs)
    np.testing.assert_array_equal(kind.region_masks_from_logits(logits), probs > 0.5)


def test_probability_table_columns_and_their_names():
    logits = np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype(np.float32)
    kind = T.target_kind("classes")
    probs, predicted = (np.asarray(a) for a in kind.probability_table(jnp.asarray(logits)))
    assert kind.table_names == ("WT", "TC", "ET", "background", "NCR", "ED", "ET")
    assert probs.shape[-1] == predicted.shape[-1] == len(kind.table_names)
    p = softmax(logits.astype(np.float64))
    np.testing.assert_allclose(probs[..., kind.table_index("TC")], p[..., 1] + p[..., 3], atol=1e-6)
    np.testing.assert_allclose(probs[..., kind.table_index(2)], p[..., 2], atol=1e-6)  # edema itself
    np.testing.assert_array_equal(predicted[..., kind.table_index(2)], logits.argmax(-1) == 2)
    regions = T.target_kind("regions")
    assert regions.table_names == ("WT", "TC", "ET")
    assert [regions.table_index(c) for c in ("WT", "tc", 2)] == [0, 1, 2]
    with pytest.raises(ValueError, match="not predicted"):
        T.target_kind("wt").table_index("ET")
    with pytest.raises(ValueError, match="out of range"):
        kind.table_index(4)


def test_predictions_from_logits():
    logits = jnp.asarray([[[-1.0, 0.5, 2.0, 0.1]], [[3.0, -2.0, 0.0, -0.5]]])  # (2, 1, 4)
    np.testing.assert_array_equal(T.target_kind("regions").predictions_from_logits(logits[..., :3]),
                                  [[[False, True, True]], [[True, False, False]]])
    np.testing.assert_array_equal(T.target_kind("classes").predictions_from_logits(logits),
                                  [[[False, False, True, False]], [[True, False, False, False]]])


def test_region_masks_agree_between_classes_and_one_hot_predictions():
    rng = np.random.default_rng(4)
    classes = rng.integers(0, 4, (2, 5, 5)).astype(np.uint8)
    expected = np.stack([classes > 0, (classes == 1) | (classes == 3), classes == 3], axis=-1)
    kind = T.target_kind("classes")
    one_hot_logits = jnp.asarray(np.eye(4)[classes] * 5.0)
    np.testing.assert_array_equal(kind.region_masks_from_logits(one_hot_logits), expected)
    np.testing.assert_array_equal(kind.region_masks_from_prediction(np.eye(4, dtype=bool)[classes]), expected)


def test_classes_from_sigmoid_probabilities_nest_et_in_tc_in_wt():
    """Threshold 0.5, then ET wins, then TC (NCR), then WT (ED); ET outside WT is still ET."""
    regions = np.array([[0.9, 0.1, 0.1], [0.9, 0.8, 0.2], [0.9, 0.9, 0.6], [0.4, 0.3, 0.7], [0.3, 0.2, 0.1]])
    np.testing.assert_array_equal(T.target_kind("regions").classes_from_output(regions), [2, 1, 3, 3, 0])
    np.testing.assert_array_equal(T.target_kind("wt").classes_from_output(np.array([[0.2], [0.7]])), [0, 1])
    np.testing.assert_array_equal(T.target_kind("classes").classes_from_output(np.array([[0.1, 0.2, 0.6, 0.1]])), [2])
    for kind in KINDS:
        out = kind.encode(np.zeros((2, 5, 6), np.uint8))
        assert out.shape == (2, 5, 6, kind.channels) and out.dtype == np.float32
