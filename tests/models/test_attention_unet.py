"""The attention U-Net: shapes and names, size, the gate against a hand computation, dropout,
training, Grad-CAM, MC dropout and whole-volume prediction at the tiny size."""
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
from jaxseg.models.attention_unet import AttentionUNet
from jaxseg.models.registry import TINY_FEATURES, build_model, count_params
from jaxseg.models.unet import UNet
from tests.models.tiny import numpy_init, smoke_run_of, train_losses, zoo_config

SIZE = 32


def tiny(dropout=0.0, seed=0) -> AttentionUNet:
    return numpy_init(nnx.eval_shape(lambda: AttentionUNet(2, 3, TINY_FEATURES, dropout, rngs=nnx.Rngs(0))), seed)


def images(batch=2, channels=2, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, SIZE, SIZE, channels), jnp.float32)


@nnx.jit(static_argnames=("train",))
def forward(model, x, key=None, perturb=None, train=False):
    return model(x, train=train, dropout_key=key, perturb=perturb)


def test_shapes_and_named_activations():
    def run():
        return AttentionUNet(4, 3, (4, 8, 16), rngs=nnx.Rngs(0))(jnp.zeros((3, SIZE, SIZE, 4)))

    model = nnx.eval_shape(lambda: AttentionUNet(4, 3, (4, 8, 16), rngs=nnx.Rngs(0)))
    logits, acts = nnx.eval_shape(run)
    assert logits.shape == (3, SIZE, SIZE, 3) and logits.dtype == jnp.float32
    assert model.activation_names == ("enc0", "enc1", "enc2", "att1", "dec1", "att0", "dec0")
    assert model.explanation_maps == ("att1", "att0")
    assert set(acts) == set(model.activation_names)
    for name, shape in [("enc0", (32, 32, 4)), ("enc1", (16, 16, 8)), ("enc2", (8, 8, 16)),
                        ("att1", (16, 16, 1)), ("dec1", (16, 16, 8)), ("att0", (32, 32, 1)),
                        ("dec0", (32, 32, 4))]:
        assert acts[name].shape == (3, *shape), name


def test_default_size_is_the_unet_plus_the_gates():
    model = nnx.eval_shape(lambda: AttentionUNet(1, 1, rngs=nnx.Rngs(0)))
    unet = nnx.eval_shape(lambda: UNet(1, 1, rngs=nnx.Rngs(0)))
    features, gates = (32, 64, 128, 256, 512), 0
    for skip, gate in zip(features[:-1], features[1:]):
        inter = skip // 2
        gates += 4 * skip * inter + (gate * inter + inter) + (inter + 1)  # W_x 2x2, W_g, psi
    assert count_params(unet) == 7_762_465
    assert count_params(model) == 7_762_465 + gates == 8_024_069


def test_gate_matches_a_hand_computation_and_is_in_unit_interval():
    model = tiny()
    x = images()
    _, acts = forward(model, x)
    gate = model.gates[0]
    kx = np.asarray(gate.w_x.kernel[...], np.float64)  # (2, 2, 4, 2)
    kg = np.asarray(gate.w_g.kernel[...], np.float64)[0, 0]
    bg = np.asarray(gate.w_g.bias[...], np.float64)
    kp = np.asarray(gate.psi.kernel[...], np.float64)[0, 0, :, 0]
    bp = float(np.asarray(gate.psi.bias[...])[0])
    skip = np.asarray(acts["enc0"], np.float64)  # (B, 32, 32, 4)
    g = np.asarray(acts["enc1"], np.float64)  # the bottleneck gates the deepest skip
    blocks = skip.reshape(2, 16, 2, 16, 2, 4)  # (B, y, dy, x, dx, C)
    theta = np.einsum("bydxec,dech->byxh", blocks, kx)
    q = np.maximum(theta + g @ kg + bg, 0)
    coarse = 1 / (1 + np.exp(-(q @ kp + bp)))  # (B, 16, 16)
    # Half-pixel bilinear 2x upsampling, edges clamped: an independent resize.
    src = np.clip((np.arange(32) + 0.5) / 2 - 0.5, 0, 15)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, 15)
    t = src - lo
    rows = coarse[:, lo] * (1 - t)[None, :, None] + coarse[:, hi] * t[None, :, None]
    expected = rows[:, :, lo] * (1 - t) + rows[:, :, hi] * t
    np.testing.assert_allclose(np.asarray(acts["att0"])[..., 0], expected, rtol=1e-4, atol=1e-5)
    alpha = np.asarray(acts["att0"])
    assert alpha.min() >= 0 and alpha.max() <= 1 and alpha.std() > 0


def test_gate_scales_the_skip():
    """Perturbing the coefficients to zero makes the decoder blind to the skip."""
    model = tiny()
    x = images()
    _, acts = forward(model, x)
    closed = {"att0": -acts["att0"]}
    logits_closed, acts_closed = forward(model, x, perturb=closed)
    assert np.abs(np.asarray(acts_closed["att0"])).max() <= 1e-6
    # With a closed gate, changing the finest skip (enc0) only acts through the bottleneck path:
    # the same logits as decoding the same bottleneck with a zero skip.
    dec = model.decoders[0](jnp.concatenate([model.upsamplers[0](acts["enc1"]),
                                             jnp.zeros_like(acts["enc0"])], axis=-1), train=False)
    np.testing.assert_allclose(logits_closed, model.head(dec), rtol=1e-5, atol=1e-5)


def test_dropout_only_with_a_key_and_not_in_the_encoder():
    model = tiny(dropout=0.5)
    x = images()
    plain, plain_acts = forward(model, x)
    again, _ = forward(model, x)
    np.testing.assert_array_equal(plain, again)
    a, acts_a = forward(model, x, jax.random.key(1))
    b, _ = forward(model, x, jax.random.key(2))
    assert not np.allclose(a, plain) and not np.allclose(a, b)
    np.testing.assert_array_equal(acts_a["enc0"], plain_acts["enc0"])


def test_registry_builds_it_from_a_config():
    cfg = zoo_config("attention_unet", "train.precision=bfloat16")
    model = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    assert isinstance(model, AttentionUNet) and model.features == (4, 8)
    assert (model.in_channels, model.out_channels) == (4, 3)
    assert model.gates[0].w_g.dtype == jnp.bfloat16


def test_loss_decreases_over_training_steps():
    cfg = zoo_config("attention_unet", "model.features=[8, 16]", "train.learning_rate=0.01",
                     "model.dropout=0.0")
    losses = train_losses(cfg, 30)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_gradcam_and_mc_dropout_run():
    model = tiny(dropout=0.3)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = images()
    cam = np.asarray(gradcam(graphdef, params, stats, x, "dec0", "mean:WT"))
    assert cam.shape == (2, SIZE, SIZE) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    gate_cam = np.asarray(gradcam(graphdef, params, stats, x, "att0", "mean:ET"))
    assert gate_cam.shape == (2, SIZE, SIZE)
    mc = mc_dropout(graphdef, params, stats, x, jax.random.key(0), n_samples=4)
    assert mc["mean"].shape == (2, SIZE, SIZE, 3)
    assert float(np.asarray(mc["variance"]).max()) > 0


def test_predict_a_whole_phantom_volume(tmp_path_factory, tmp_path):
    run = smoke_run_of("attention_unet", tmp_path_factory)
    data = tmp_path / "data"
    phantom.write_phantoms(data, 1, seed=4, shape=(32, 32, 20))
    assert isinstance(Predictor(run).model(), AttentionUNet)
    [result] = predict(data / "Phantom_4_000", run, tmp_path / "seg.nii.gz", probabilities=True)
    flair = nib.load(data / "Phantom_4_000" / "Phantom_4_000_flair.nii.gz")
    seg = nib.load(result.segmentation)
    assert seg.shape == flair.shape and np.array_equal(seg.affine, flair.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    probs = np.asarray(nib.load(result.probabilities).dataobj)
    assert probs.shape == (*flair.shape, 3) and 0 <= probs.min() and probs.max() <= 1 and probs.max() > 0
