"""Grad-CAM: equal to a hand computation, in 2D and 3D, on every U-Net layer, and pointing at the
tumor of phantoms the model was trained on."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from jaxseg import config as config_lib
from jaxseg.data import phantom
from jaxseg.explain import gradcam as G
from jaxseg.train.state import create_state, graphdef_of, make_optimizer
from jaxseg.train.step import make_train_step
from jaxseg.target import target_kind


class TwoLayer(nnx.Module):
    """The smallest model with the (logits, activations, perturb) protocol and a resize in it:
    ``enc0 = relu(conv3(x, stride 2))``, logits = ``conv3(nearest-upsampled enc0)``."""

    def __init__(self, spatial_dims, in_channels, features, out_channels, rngs):
        kernel = (3,) * spatial_dims
        self.conv1 = nnx.Conv(in_channels, features, kernel, strides=2, padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(features, out_channels, kernel, padding="SAME", rngs=rngs)

    def __call__(self, x, *, train=False, dropout_key=None, perturb=None):
        a = jax.nn.relu(self.conv1(x))
        if perturb and "enc0" in perturb:
            a = a + perturb["enc0"]
        up = a
        for axis in range(1, a.ndim - 1):
            up = jnp.repeat(up, 2, axis=axis)
        return self.conv2(up), {"enc0": a}


def split(model):
    return nnx.split(model, nnx.Param, nnx.BatchStat)


# ------------------------------------------------------------------ the independent reference

def conv(x, kernel, bias, stride):
    spec = {4: ("NHWC", "HWIO", "NHWC"), 5: ("NDHWC", "DHWIO", "NDHWC")}[x.ndim]
    out = jax.lax.conv_general_dilated(x, kernel, (stride,) * (x.ndim - 2), "SAME", dimension_numbers=spec)
    return out + bias.reshape((1,) * (out.ndim - 1) + (-1,))


def resize_linear_np(x, size):
    """Half-pixel-centre linear resize of ``(B, *spatial)``, one axis at a time, edges clamped
    (PyTorch's ``interpolate(align_corners=False)``), in float64."""
    x = np.asarray(x, np.float64)
    for axis, n in enumerate(size, start=1):
        m = x.shape[axis]
        src = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, m - 1)
        t = (src - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        x = np.take(x, lo, axis=axis) * (1 - t) + np.take(x, hi, axis=axis) * t
    return x


def hand_gradcam(model, images, score_of_logits):
    """Grad-CAM of ``enc0`` by hand: first layer applied by hand, the gradient of the second half
    by ``jax.vjp``, then weights, ReLU, resize and normalisation in numpy."""
    k1, b1 = jnp.asarray(model.conv1.kernel[...]), jnp.asarray(model.conv1.bias[...])
    k2, b2 = jnp.asarray(model.conv2.kernel[...]), jnp.asarray(model.conv2.bias[...])
    activation = jax.nn.relu(conv(images, k1, b1, 2))

    def second_half(a):
        for axis in range(1, a.ndim - 1):
            a = jnp.repeat(a, 2, axis=axis)
        return score_of_logits(conv(a, k2, b2, 1))

    scores, vjp = jax.vjp(second_half, activation)
    (grads,) = vjp(jnp.ones_like(scores))
    a, g = np.asarray(activation, np.float64), np.asarray(grads, np.float64)
    spatial = tuple(range(1, a.ndim - 1))
    weights = g.mean(axis=spatial, keepdims=True)
    cam = np.maximum((weights * a).sum(-1), 0)
    cam = resize_linear_np(cam, images.shape[1:-1])
    peak = cam.max(axis=tuple(range(1, cam.ndim)), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0)


def spatial_mean(x, pixels=None):
    axes = tuple(range(1, x.ndim))
    if pixels is None:
        return x.mean(axis=axes)
    pixels = jax.lax.stop_gradient(pixels).astype(x.dtype)
    return (x * pixels).sum(axis=axes) / pixels.sum(axis=axes)


RNG = np.random.default_rng(0)
IMAGES_2D = RNG.normal(size=(3, 16, 16, 2)).astype(np.float32)
USER_MASK = RNG.uniform(size=(3, 16, 16)) < 0.3


def softmax_tc_over_predicted(logits):
    p = jax.nn.softmax(logits, -1)
    winner = jnp.argmax(logits, -1)
    predicted = (winner == 1) | (winner == 3)
    assert bool(jnp.all(jnp.any(predicted, axis=(1, 2)))), "the reference wants predicted pixels"
    return spatial_mean(p[..., 1] + p[..., 3], predicted)


CASES = {
    # target kind, outputs, target, mask, the score written out by hand
    "wt_mean": ("wt", 1, "mean", None, lambda z: spatial_mean(jax.nn.sigmoid(z[..., 0]))),
    "regions_mask_tc": ("regions", 3, "mask:TC", USER_MASK,
                        lambda z: spatial_mean(jax.nn.sigmoid(z[..., 1]), jnp.asarray(USER_MASK))),
    "regions_predicted_et": ("regions", 3, G.Target("predicted", "ET"), None,
                             lambda z: spatial_mean(jax.nn.sigmoid(z[..., 2]), z[..., 2] > 0)),
    "classes_mean_wt": ("classes", 4, "mean:WT", None,
                        lambda z: spatial_mean(1 - jax.nn.softmax(z, -1)[..., 0])),
    "classes_predicted_tc": ("classes", 4, "predicted:TC", None, softmax_tc_over_predicted),
    "classes_edema_channel": ("classes", 4, "mean:2", None,
                              lambda z: spatial_mean(jax.nn.softmax(z, -1)[..., 2])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradcam_equals_a_hand_computation_2d(case):
    kind, outputs, target, mask, score = CASES[case]
    model = TwoLayer(2, 2, 6, outputs, nnx.Rngs(1))
    cam = G.gradcam(*split(model), IMAGES_2D, "enc0", target, mask=mask, target_kind=kind)
    expected = hand_gradcam(model, jnp.asarray(IMAGES_2D), score)
    assert cam.shape == (3, 16, 16) and cam.dtype == jnp.float32
    assert np.all(expected.max(axis=(1, 2)) == 1), "a degenerate reference would prove little"
    np.testing.assert_allclose(np.asarray(cam), expected, atol=1e-5)


def test_gradcam_3d_averages_weights_over_depth_height_width():
    model = TwoLayer(3, 2, 5, 1, nnx.Rngs(2))
    images = RNG.normal(size=(2, 8, 12, 16, 2)).astype(np.float32)
    cam = G.gradcam(*split(model), images, "enc0", "mean", target_kind="wt")
    assert cam.shape == (2, 8, 12, 16)
    expected = hand_gradcam(model, jnp.asarray(images), lambda z: spatial_mean(jax.nn.sigmoid(z[..., 0])))
    np.testing.assert_allclose(np.asarray(cam), expected, atol=1e-5)


def test_target_kind_is_inferred_and_bad_targets_are_refused():
    model = TwoLayer(2, 2, 6, 3, nnx.Rngs(1))
    explicit = G.gradcam(*split(model), IMAGES_2D, "enc0", "mean:TC", target_kind="regions")
    inferred = G.gradcam(*split(model), IMAGES_2D, "enc0", G.Target("mean", "tc"))
    np.testing.assert_array_equal(np.asarray(explicit), np.asarray(inferred))
    with pytest.raises(ValueError, match="not an activation"):
        G.gradcam(*split(model), IMAGES_2D, "dec7", "mean")
    with pytest.raises(ValueError, match="mask"):
        G.gradcam(*split(model), IMAGES_2D, "enc0", "mask:WT")
    with pytest.raises(ValueError, match="region"):
        G.gradcam(*split(TwoLayer(2, 2, 6, 1, nnx.Rngs(1))), IMAGES_2D, "enc0", "mean:ET")
    with pytest.raises(ValueError, match="score"):
        G.parse_target("loudest")


# ------------------------------------------------------------------ the real U-Net, every layer

def test_every_unet_layer_gives_a_normalised_map_and_volume_chunks_agree():
    cfg = config_lib.load("demo", config_lib.SMOKE_OVERRIDES)  # features (4, 8): enc0, enc1, dec0
    # Parameters replicated on 4 devices, as a Predictor holds them: maps of numpy batches and
    # of the volume helper's batches (split over the devices) must agree.
    state = create_state(cfg, make_optimizer(cfg, 1), Mesh(np.array(jax.devices()), ("data",)))
    graphdef = graphdef_of(cfg)
    images = RNG.uniform(size=(6, 32, 32, 4)).astype(np.float32)
    names = nnx.merge(graphdef, state.params, state.batch_stats).activation_names
    assert names == ("enc0", "enc1", "dec0")
    for layer in names:
        cam = np.asarray(G.gradcam(graphdef, state.params, state.batch_stats, images[:4], layer, "mean:WT"))
        assert cam.shape == (4, 32, 32) and np.isfinite(cam).all(), layer
        assert cam.min() >= 0 and np.allclose(cam.max(axis=(1, 2)), 1.0), layer
    # A mask of every pixel is the 'mean' target; the chunked volume helper (6 slices, 2 chunks
    # of 4 with padding) matches per-batch maps, since batch norm runs in inference mode.
    everywhere = np.ones((4, 32, 32), bool)
    by_mask = G.gradcam(graphdef, state.params, state.batch_stats, images[:4], "dec0", "mask:TC", mask=everywhere)
    by_mean = G.gradcam(graphdef, state.params, state.batch_stats, images[:4], "dec0", "mean:TC")
    np.testing.assert_array_equal(np.asarray(by_mask), np.asarray(by_mean))
    assert G._batch_sharding(state.params, 4) is not None and G._batch_sharding(state.params, 6) is None
    volume = G.gradcam_volume(graphdef, state.params, state.batch_stats, images, "dec0", "mean:TC", batch_size=4)
    last = G.gradcam(graphdef, state.params, state.batch_stats, images[2:], "dec0", "mean:TC")
    np.testing.assert_allclose(volume, np.concatenate([by_mean, np.asarray(last)[2:]]), atol=1e-6)
    top_half = np.zeros((4, 32, 32), bool)
    top_half[:, :16] = True
    times = np.asarray(G.gradcam_times_mask(by_mean, top_half))
    np.testing.assert_array_equal(times, np.where(top_half, np.asarray(by_mean), 0))


# ------------------------------------------------------------------ phantoms: the tumor is known

def phantom_slices(seeds, size=32, offsets=(0,)):
    """Axial slices near the middle of each phantom's tumor, scaled per channel to [0, 1]."""
    images, classes = [], []
    for seed in seeds:
        volumes, labels = phantom.make_phantom(seed, shape=(size, size, 20))
        middle = int(np.argmax((labels > 0).sum(axis=(0, 1))))
        for offset in offsets:
            z = middle + offset
            stack = np.stack([volumes[m][:, :, z] for m in phantom.MODALITIES], -1)
            images.append(stack / np.maximum(stack.max(axis=(0, 1), keepdims=True), 1e-6))
            classes.append(labels[:, :, z])
    return np.stack(images).astype(np.float32), np.stack(classes).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def trained_wt_model(steps=80):
    """A features-(8, 16) whole-tumor U-Net trained 80 steps on 24 phantom slices of 32 px
    (about 8 s on 2 busy cores), and 4 held-out phantom slices with their classes."""
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, "data.target=wt", "train.loss=bce_dice",
                                   "model.features=[8, 16]", "train.learning_rate=0.01"])
    images, classes = phantom_slices(range(8), offsets=(-2, 0, 2))
    targets = target_kind("wt").encode(classes)
    tx = make_optimizer(cfg, steps)
    state = create_state(cfg, tx, Mesh(np.array(jax.devices()[:1]), ("data",)))
    graphdef = graphdef_of(cfg)
    step = make_train_step(graphdef, tx, cfg.train.loss, "wt")
    order = np.random.default_rng(0)
    for _ in range(steps):
        pick = order.choice(len(images), 8, replace=False)
        state, _ = step(state, {"image": images[pick], "target": targets[pick], "classes": classes[pick]})
    held_out = phantom_slices(range(100, 104))
    return graphdef, state.params, state.batch_stats, held_out


@pytest.mark.parametrize("target", ["mean", "predicted"])
def test_gradcam_points_at_the_tumor_of_held_out_phantoms(target):
    graphdef, params, batch_stats, (images, classes) = trained_wt_model()
    tumor = classes > 0
    cam = G.gradcam(graphdef, params, batch_stats, images, "dec0", target)
    inside = G.mass_fraction(cam, tumor)
    area = tumor.mean(axis=(1, 2))
    print(f"dec0 {target}: Grad-CAM mass inside the tumor {np.round(inside, 3)}, tumor area {np.round(area, 3)}")
    assert np.all(inside > 2 * area), (inside, area)
    # Grad-CAM x ground truth keeps exactly the mass inside the tumor.
    kept = np.asarray(G.gradcam_times_mask(cam, tumor)).sum(axis=(1, 2)) / np.asarray(cam).sum(axis=(1, 2))
    np.testing.assert_allclose(kept, inside, rtol=1e-5)
