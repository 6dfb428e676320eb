"""The ResNet-34 U-Net: size, shapes on any input size, dropout, training, explanations, prediction.

Equality with PyTorch is in test_torch_import.py (needs torch); nothing here does.
"""
import math

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg import config as config_lib
from jaxseg.data import phantom
from jaxseg.errors import JaxsegError
from jaxseg.explain.gradcam import gradcam
from jaxseg.explain.uncertainty import mc_dropout
from jaxseg.infer.predict import Predictor, predict
from jaxseg.models.registry import build_model, count_params
from jaxseg.models.resunet import ResUNet, nearest_indices
from jaxseg.train import loop
from jaxseg.train.pretrained import ARCHES
from jaxseg.train.state import create_state, graphdef_of, make_optimizer
from jaxseg.train.step import make_train_step
from tests.train.test_step import phantom_batch

TINY = dict(features=(4, 4, 8, 8, 16), encoder_depths=(1, 1, 1, 1), decoder_features=(8, 8, 4, 4, 4))


def smoke_config(*overrides):
    return config_lib.load("demo", [*config_lib.smoke_overrides("resunet34"), "model.name=resunet34", *overrides])


def abstract(cfg):
    return nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))


def tiny(in_channels=4, out_channels=3, seed=0, **kwargs) -> ResUNet:
    """The tiny model with numpy-drawn values (JAX initialisation would compile per shape)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ResUNet(in_channels, out_channels, **TINY, **kwargs,
                                                               rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-2])  # the variable (the last entry is its .value)
        if len(leaf.shape) == 4:  # He-normal kernels
            return rng.normal(0, math.sqrt(2 / math.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        if "scale" in name or "var" in name:
            return rng.uniform(0.8, 1.2, leaf.shape).astype(np.float32)
        return rng.normal(0, 0.1, leaf.shape).astype(np.float32)  # biases and running means
    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@nnx.jit
def forward(model, x, key=None):
    return model(x, dropout_key=key)


def test_full_size_has_smps_parameter_count():
    # 24,436,369 is segmentation_models_pytorch's Unet('resnet34', in_channels=3, classes=1);
    # test_torch_import counts the torch twin too.
    rgb = config_lib.load_from_dict({}, [*ARCHES["resunet34"], 'data.modalities=["flair"]',
                                         "model.input_mode=pseudo_rgb"])
    assert count_params(abstract(rgb)) == 24_436_369
    # Four modalities and three regions: a wider stem (64 x 7 x 7 per channel) and head (16 x 9 + 1).
    brats = config_lib.load_from_dict({}, [*ARCHES["resunet34"], "data.target=regions"])
    assert count_params(abstract(brats)) == 24_436_369 + 64 * 49 + 2 * (16 * 9 + 1)


@pytest.mark.parametrize("height, width", [(33, 47), (64, 64), (70, 90), (5, 1)])
def test_shapes_follow_torchs_rounding_on_any_size(height, width):
    logits, acts = nnx.eval_shape(lambda: ResUNet(2, 3, **TINY, rngs=nnx.Rngs(0))(jnp.zeros((2, height, width, 2))))
    assert logits.shape == (2, height, width, 3) and logits.dtype == jnp.float32
    for i in range(5):  # stride-2 layers with torch's padding map n to ceil(n / 2)
        assert acts[f"enc{i}"].shape[1:3] == (-(-height // 2 ** (i + 1)), -(-width // 2 ** (i + 1)))
        assert acts[f"dec{i}"].shape[1:3] == (-(-height // 2 ** i), -(-width // 2 ** i))
    assert acts["dec0"].shape[-1] == 4 and acts["enc4"].shape[-1] == 16


def test_bfloat16_computes_in_bfloat16_and_returns_float32_logits():
    logits, acts = nnx.eval_shape(lambda: ResUNet(2, 3, **TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))(
        jnp.zeros((1, 33, 47, 2))))
    assert logits.dtype == jnp.float32
    assert {a.dtype for a in acts.values()} == {jnp.dtype(jnp.bfloat16)}


def test_nearest_upsampling_uses_torchs_legacy_index_rule():
    assert nearest_indices(3, 5).tolist() == [0, 0, 1, 1, 2]  # floor(i * 3 / 5), not nearest-exact's round
    assert nearest_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_indices(4, 7).tolist() == [math.floor(i * 4 / 7) for i in range(7)]


def test_pseudo_rgb_is_the_channel_model_with_summed_stem_weights():
    rgb = tiny(1, 3, input_mode="pseudo_rgb")
    copy = jax.tree.map(np.array, nnx.state(rgb))  # merge would share rgb's variables
    gray = nnx.merge(nnx.split(nnx.eval_shape(lambda: ResUNet(1, 3, **TINY, rngs=nnx.Rngs(0))))[0], copy)
    gray.stem_conv.kernel.set_value(np.asarray(rgb.stem_conv.kernel.get_value()).sum(axis=2, keepdims=True))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 1)), jnp.float32)
    np.testing.assert_allclose(forward(rgb, x)[0], forward(gray, x)[0], rtol=1e-4, atol=1e-4)


def test_dropout_runs_in_the_decoder_only_and_only_with_a_key():
    model = tiny(dropout=0.5)
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 32, 32, 4)), jnp.float32)
    plain, plain_acts = forward(model, x)
    again, _ = forward(model, x)
    np.testing.assert_array_equal(plain, again)
    one, one_acts = forward(model, x, jax.random.key(0))
    two, _ = forward(model, x, jax.random.key(1))
    assert not np.allclose(one, plain) and not np.allclose(one, two)
    for i in range(5):
        np.testing.assert_array_equal(one_acts[f"enc{i}"], plain_acts[f"enc{i}"])


def test_train_steps_learn_a_phantom_batch():
    cfg = smoke_config("data.target=wt", "train.learning_rate=0.01")
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    tx = make_optimizer(cfg, 30)
    state = create_state(cfg, tx, mesh)
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(graphdef_of(cfg), tx, cfg.train.loss, cfg.data.target)
    batch = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in phantom_batch(cfg).items()}
    losses = []
    for i in range(30):
        state, sums = step(state, batch)
        losses.append(float(sums["loss_sum"] / sums["count"]))
        if i == 0:
            changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
            assert all(jax.tree.leaves(changed))
    assert int(state.step) == 30
    assert losses[-1] < 0.8 * losses[0] and np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_gradcam_and_mc_dropout_on_odd_sized_slices():
    model = tiny(dropout=0.3)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images = np.random.default_rng(3).uniform(size=(2, 33, 47, 4)).astype(np.float32)
    for layer in ("dec0", "enc2"):
        cam = np.asarray(gradcam(graphdef, params, batch_stats, images, layer))
        assert cam.shape == (2, 33, 47) and np.isfinite(cam).all()
        assert cam.min() >= 0 and cam.max() == pytest.approx(1)
    out = mc_dropout(graphdef, params, batch_stats, images, jax.random.key(0), n_samples=3)
    assert out["mean"].shape == (2, 33, 47, 3)
    assert np.asarray(out["variance"]).max() > 0


@pytest.fixture(scope="module")
def resunet_run(tmp_path_factory):
    """A smoke-size trained ResNet U-Net run folder."""
    return loop.train(smoke_config(), tmp_path_factory.mktemp("resunet_run"), quiet=True)


def test_predict_a_whole_phantom_volume(resunet_run, tmp_path):
    phantom.write_phantoms(tmp_path / "data", 1, seed=21, shape=(36, 30, 20))
    case = "Phantom_21_000"
    [result] = predict(tmp_path / "data" / case, resunet_run.workdir, tmp_path / "seg.nii.gz", probabilities=True)
    flair = nib.load(tmp_path / "data" / case / f"{case}_flair.nii.gz")
    seg = nib.load(result.segmentation)
    assert seg.shape == flair.shape and np.array_equal(seg.affine, flair.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert Predictor(resunet_run.workdir).model().activation_names[-1] == "dec0"


def test_training_starts_from_model_pretrained(resunet_run, tmp_path):
    # The same settings (so the compiled steps are reused) on A's phantoms, started from A's model.
    # One Adam step moves each parameter by at most the learning rate, so after it the new run
    # is within that of A's parameters; a fresh initialisation would be far away.
    phantoms = f"data.root={resunet_run.workdir / 'phantoms'}"
    cfg = smoke_config(f"model.pretrained={resunet_run.workdir}", phantoms)
    result = loop.train(cfg, tmp_path / "run", max_steps=1, quiet=True)
    assert result.steps == 1
    start = jax.tree.map(np.asarray, resunet_run.state.params)
    end = jax.tree.map(np.asarray, result.state.params)
    moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), start, end)))
    assert 0 < moved <= 1.001 * cfg.train.learning_rate
    with pytest.raises(JaxsegError, match="does not fit"):
        loop.train(smoke_config(f"model.pretrained={resunet_run.workdir}", phantoms,
                                "model.decoder_features=[8, 8, 4, 4, 8]"), tmp_path / "other", quiet=True)
