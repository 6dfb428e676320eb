"""Model-carried maps: attention rollout against hand-built cases, gate maps, and both in
`jaxseg explain` (NIfTI in the input's geometry and an overlay in the report)."""
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from flax import nnx

from jaxseg.data import phantom
from jaxseg.explain.model_maps import (attention_rollout, gate_maps, map_names, model_maps,
                                       rollout_map)
from jaxseg.explain.run import ExplainSettings, explain
from jaxseg.models.attention_unet import AttentionUNet
from jaxseg.models.registry import TINY_FEATURES
from jaxseg.models.transunet import TransUNet
from jaxseg.models.unet import UNet
from tests.models.tiny import numpy_init, smoke_run_of

# Only the model maps are checked here: no modality attribution, no further Grad-CAM layers.
QUICK = ExplainSettings(mc_samples=3, faithfulness_slices=1, faithfulness_steps=3, attribution_steps=0,
                        compare_layers=())


def to_token_0(tokens: int) -> np.ndarray:
    """Every query attends only to token 0."""
    a = np.zeros((tokens, tokens), np.float32)
    a[:, 0] = 1
    return a


def test_rollout_rows_sum_to_one_and_are_non_negative():
    logits = jax.random.normal(jax.random.key(0), (3, 2, 4, 6, 6))  # layers, B, heads, T, T
    layers = [jax.nn.softmax(logits[i], axis=-1) for i in range(3)]
    rollout = np.asarray(attention_rollout(layers))
    assert rollout.shape == (2, 6, 6) and rollout.min() >= 0
    np.testing.assert_allclose(rollout.sum(-1), 1.0, rtol=1e-5)
    # Identity attention (every token attends to itself) rolls out to the identity.
    eye = jnp.broadcast_to(jnp.eye(6), (2, 4, 6, 6))
    np.testing.assert_allclose(attention_rollout([eye, eye]), np.broadcast_to(np.eye(6), (2, 6, 6)), atol=1e-7)


def test_rollout_of_a_hand_built_attention():
    t = 4
    a = to_token_0(t)
    # One layer, one head "all to token 0", one head identity: the head mean is A/2 + I/2, and
    # with the residual identity the layer is A/4 + 3I/4.
    one = jnp.asarray(np.stack([a, np.eye(t, dtype=np.float32)])[None])
    np.testing.assert_allclose(attention_rollout([one])[0], 0.25 * a + 0.75 * np.eye(t), atol=1e-7)
    # Two layers "all to token 0": (A/2 + I/2)^2 = A/4 + A/2 + I/4 since A @ A = A, so each row i > 0
    # keeps 1/4 on itself and 3/4 on token 0, and row 0 is all on token 0.
    two = jnp.asarray(np.stack([a, a])[None])
    expected = 0.75 * a + 0.25 * np.eye(t)
    np.testing.assert_allclose(attention_rollout([two, two])[0], expected, atol=1e-7)
    # The map over all queries (grid = image, no resize): token 0 gets (1 + 3/4 (t-1)) / t, the
    # others 1/(4t), divided by the maximum.
    image = np.asarray(rollout_map([two, two], (2, 2), (2, 2)))[0].ravel()
    peak = (1 + 0.75 * (t - 1)) / t
    np.testing.assert_allclose(image, [1.0] + [0.25 / t / peak] * (t - 1), rtol=1e-6)
    # Query weights on token 2 alone: its row, 3/4 on token 0 and 1/4 on itself.
    weighted = np.asarray(rollout_map([two, two], (2, 2), (2, 2), jnp.asarray([[0.0, 0.0, 5.0, 0.0]])))[0]
    np.testing.assert_allclose(weighted.ravel(), [1.0, 0.0, 1 / 3, 0.0], atol=1e-7)
    # All-zero weights fall back to every query.
    fallback = np.asarray(rollout_map([two, two], (2, 2), (2, 2), jnp.zeros((1, 4))))[0]
    np.testing.assert_allclose(fallback, image.reshape(2, 2), rtol=1e-6)


def test_rollout_map_upsamples_to_the_image():
    logits = jax.random.normal(jax.random.key(1), (2, 3, 16, 16))
    image = np.asarray(rollout_map([jax.nn.softmax(logits, -1)], (4, 4), (32, 32)))
    assert image.shape == (2, 32, 32) and image.min() >= 0 and np.allclose(image.max(axis=(1, 2)), 1.0)
    with pytest.raises(ValueError, match="do not fill"):
        rollout_map([jax.nn.softmax(logits, -1)], (4, 3), (32, 32))


def test_gate_maps_keep_values_and_resize():
    full = jnp.full((2, 8, 8, 1), 0.25)
    coarse = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4, 4, 1)), jnp.float32)
    maps = gate_maps({"att0": full, "att1": coarse, "dec0": full}, ("att1", "att0"), (8, 8))
    assert set(maps) == {"att0", "att1"}
    np.testing.assert_array_equal(maps["att0"], 0.25)
    assert maps["att1"].shape == (2, 8, 8)
    assert float(maps["att1"].min()) >= float(coarse.min()) - 1e-6
    assert float(maps["att1"].max()) <= float(coarse.max()) + 1e-6


def test_model_maps_of_each_model():
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 2))
    att = numpy_init(nnx.eval_shape(lambda: AttentionUNet(2, 3, TINY_FEATURES, rngs=nnx.Rngs(0))))
    trans = numpy_init(nnx.eval_shape(lambda: TransUNet(2, 3, TINY_FEATURES, image_size=32, layers=2, heads=2,
                                                        dim=16, mlp_dim=32, rngs=nnx.Rngs(0))))
    unet = nnx.eval_shape(lambda: UNet(2, 3, TINY_FEATURES, rngs=nnx.Rngs(0)))
    assert map_names(att) == ("att0",) and map_names(trans) == ("rollout",) and map_names(unet) == ()

    maps = model_maps(*nnx.split(att, nnx.Param, nnx.BatchStat), x)
    _, acts = att(x)
    np.testing.assert_allclose(maps["att0"], np.asarray(acts["att0"])[..., 0], rtol=1e-5, atol=1e-6)

    maps = model_maps(*nnx.split(trans, nnx.Param, nnx.BatchStat), x)
    rollout = np.asarray(maps["rollout"])
    assert rollout.shape == (2, 32, 32) and rollout.min() >= 0 and np.allclose(rollout.max(axis=(1, 2)), 1.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_maps_data")
    phantom.write_phantoms(root, 1, seed=22, shape=(32, 32, 20))
    return root / "Phantom_22_000"


@pytest.mark.parametrize("model_name, names, titles", [
    ("attention_unet", ("att0",), ("Attention gate 0",)),
    ("transunet", ("rollout",), ("Attention rollout",)),
])
def test_explain_writes_the_model_maps(model_name, names, titles, case, tmp_path_factory, tmp_path):
    run = smoke_run_of(model_name, tmp_path_factory)
    result = explain(case, run, tmp_path / "out", QUICK)
    flair = nib.load(case / "Phantom_22_000_flair.nii.gz")
    for name in names:
        img = nib.load(result.files[name])
        assert img.shape == flair.shape and np.array_equal(img.affine, flair.affine), name
        values = np.asarray(img.dataobj)
        assert values.min() >= 0 and values.max() <= 1 + 1e-6 and values.max() > 0, name
    assert result.summary["settings"]["layer"] == "dec0"
    html = result.report.read_text()
    for title in titles:
        assert title in html
