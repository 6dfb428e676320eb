"""TransUNet: shapes and names, size, the attention against a hand computation, position
embeddings at another input size, dropout only in the MLP, training, Grad-CAM, MC dropout and
whole-volume prediction at the tiny size."""
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from flax import nnx

from jaxseg.data import phantom
from jaxseg.explain.gradcam import gradcam
from jaxseg.explain.uncertainty import mc_dropout
from jaxseg.infer.predict import Predictor, predict
from jaxseg.models.registry import TINY_FEATURES, build_model, count_params
from jaxseg.models.transunet import TransUNet
from tests.models.tiny import numpy_init, smoke_run_of, train_losses, zoo_config

SIZE = 32
HEADS, DIM = 2, 16


def tiny(dropout=0.0, seed=0, layers=1) -> TransUNet:
    return numpy_init(nnx.eval_shape(lambda: TransUNet(
        2, 3, TINY_FEATURES, dropout, image_size=SIZE, layers=layers, heads=HEADS, dim=DIM, mlp_dim=32,
        rngs=nnx.Rngs(0))), seed)


def images(batch=2, channels=2, seed=1, size=SIZE):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, channels), jnp.float32)


@nnx.jit(static_argnames=("train",))
def forward(model, x, key=None, perturb=None, train=False):
    return model(x, train=train, dropout_key=key, perturb=perturb)


def test_shapes_and_named_activations():
    def make():
        return TransUNet(4, 3, (4, 8, 16), image_size=SIZE, layers=2, heads=2, dim=16, mlp_dim=32,
                         dtype=jnp.bfloat16, rngs=nnx.Rngs(0))

    model = nnx.eval_shape(make)
    logits, acts = nnx.eval_shape(lambda m: m(jnp.zeros((3, SIZE, SIZE, 4))), model)
    assert logits.shape == (3, SIZE, SIZE, 3) and logits.dtype == jnp.float32
    assert model.activation_names == ("enc0", "enc1", "enc2", "attn0", "attn1", "vit", "dec1", "dec0")
    assert model.attention_names == ("attn0", "attn1")
    assert set(acts) == set(model.activation_names)
    tokens = (SIZE // 4) ** 2
    for name, shape in [("enc0", (32, 32, 4)), ("enc2", (8, 8, 16)), ("attn0", (2, tokens, tokens)),
                        ("attn1", (2, tokens, tokens)), ("vit", (8, 8, 16)), ("dec1", (16, 16, 8)),
                        ("dec0", (32, 32, 4))]:
        assert acts[name].shape == (3, *shape), name
    assert acts["attn0"].dtype == jnp.float32 and acts["dec0"].dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_default_size_is_the_unet_plus_the_transformer():
    model = nnx.eval_shape(lambda: TransUNet(1, 1, rngs=nnx.Rngs(0)))
    dim, mlp, layers, bottleneck, tokens = 256, 1024, 4, 512, (128 // 16) ** 2
    block = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
    transformer = ((bottleneck * dim + dim) + tokens * dim + layers * block + 2 * dim
                   + 9 * dim * bottleneck + 2 * bottleneck)  # embed, positions, blocks, norm, conv_more + BN
    assert count_params(model) == 7_762_465 + transformer == 12_250_401


def test_attention_matches_a_hand_computation():
    model = tiny()
    _, acts = forward(model, images())
    probs = np.asarray(acts["attn0"], np.float64)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert probs.min() >= 0

    def p(module, name):
        return np.asarray(getattr(module, name)[...], np.float64)

    t = np.asarray(acts["enc1"], np.float64).reshape(2, 256, 8)
    t = t @ p(model.embed, "kernel") + p(model.embed, "bias") + p(model, "position")
    block = model.blocks[0]
    mean, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
    normed = (t - mean) / np.sqrt(var + 1e-6) * p(block.norm1, "scale") + p(block.norm1, "bias")
    qkv = (normed @ p(block.qkv, "kernel") + p(block.qkv, "bias")).reshape(2, 256, 3, HEADS, DIM // HEADS)
    q, k = qkv[:, :, 0].transpose(0, 2, 1, 3), qkv[:, :, 1].transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(DIM // HEADS)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-3, atol=1e-6)


def test_position_embeddings_at_another_input_size():
    model = tiny()
    np.testing.assert_array_equal(model.position_embeddings(16, 16), model.position[...])
    constant = nnx.clone(model)
    constant.position[...] = jnp.full_like(model.position[...], 0.3)
    resized = np.asarray(constant.position_embeddings(32, 24))
    assert resized.shape == (1, 32 * 24, DIM)
    np.testing.assert_allclose(resized, 0.3, rtol=1e-6)
    logits, acts = forward(model, images(size=64))
    assert logits.shape == (2, 64, 64, 3) and acts["attn0"].shape == (2, HEADS, 1024, 1024)
    assert np.all(np.isfinite(logits))


def test_dropout_only_with_a_key_and_only_in_the_mlp():
    model = tiny(dropout=0.5)
    x = images()
    plain, plain_acts = forward(model, x)
    again, _ = forward(model, x)
    np.testing.assert_array_equal(plain, again)
    a, acts_a = forward(model, x, jax.random.key(1))
    b, _ = forward(model, x, jax.random.key(2))
    assert not np.allclose(a, plain) and not np.allclose(a, b)
    # Before the first MLP nothing is dropped: the CNN encoder and the first attention.
    np.testing.assert_array_equal(acts_a["enc1"], plain_acts["enc1"])
    np.testing.assert_array_equal(acts_a["attn0"], plain_acts["attn0"])
    assert not np.allclose(acts_a["vit"], plain_acts["vit"])


def test_registry_builds_it_from_a_config():
    cfg = zoo_config("transunet")
    model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    assert isinstance(model, TransUNet) and model.features == (4, 8)
    assert (len(model.blocks), model.blocks[0].heads, model.transformer_dim) == (1, 2, 16)
    assert model.grid == 16 and model.position.shape == (1, 256, 16)


def test_loss_decreases_over_training_steps():
    cfg = zoo_config("transunet", "model.features=[8, 16]", "train.learning_rate=0.01", "model.dropout=0.0")
    losses = train_losses(cfg, 30)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_gradcam_and_mc_dropout_run():
    model = tiny(dropout=0.3)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = images()
    for layer in ("dec0", "vit"):
        cam = np.asarray(gradcam(graphdef, params, stats, x, layer, "mean:WT"))
        assert cam.shape == (2, SIZE, SIZE) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    mc = mc_dropout(graphdef, params, stats, x, jax.random.key(0), n_samples=4)
    assert mc["mean"].shape == (2, SIZE, SIZE, 3)
    assert float(np.asarray(mc["variance"]).max()) > 0


def test_predict_a_whole_phantom_volume(tmp_path_factory, tmp_path):
    run = smoke_run_of("transunet", tmp_path_factory)
    data = tmp_path / "data"
    phantom.write_phantoms(data, 1, seed=4, shape=(32, 32, 20), orientation="RAS")
    assert isinstance(Predictor(run).model(), TransUNet)
    [result] = predict(data / "Phantom_4_000", run, tmp_path / "seg.nii.gz", probabilities=True)
    flair = nib.load(data / "Phantom_4_000" / "Phantom_4_000_flair.nii.gz")
    seg = nib.load(result.segmentation)
    assert seg.shape == flair.shape and np.array_equal(seg.affine, flair.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    probs = np.asarray(nib.load(result.probabilities).dataobj)
    assert probs.shape == (*flair.shape, 3) and 0 <= probs.min() and probs.max() <= 1 and probs.max() > 0
