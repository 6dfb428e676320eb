"""Sliding-window inference: coverage, blending weights, equivalence with a whole-volume forward
for translation-equivariant models, flip TTA, and volumes smaller than the window."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxseg.infer import sliding_window as sw


def pointwise(x):
    """A per-voxel model: two 'probabilities' from the channel sum."""
    s = jnp.asarray(x).sum(-1, keepdims=True)
    return jnp.concatenate([jax.nn.sigmoid(s), jax.nn.sigmoid(-2 * s)], axis=-1)


@jax.jit
def box_filter(x):
    """A translation-equivariant convolution (3x3x3 mean of the channel sum, zero 'SAME' padding),
    like a convolutional network's border behaviour."""
    x = jnp.asarray(x)
    kernel = jnp.ones((3, 3, 3, x.shape[-1], 1), jnp.float32) / 27
    return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME",
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def volume(shape=(24, 20, 18, 2), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("size,window,overlap", [(24, 8, 0.5), (23, 8, 0.5), (8, 8, 0.25), (30, 16, 0.0), (17, 16, 0.75)])
def test_window_starts_cover_the_axis_within_it(size, window, overlap):
    starts = sw.window_starts(size, window, overlap)
    covered = np.zeros(size, bool)
    for s in starts:
        assert 0 <= s <= size - window
        covered[s:s + window] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == size - window
    stride = max(1, int(window * (1 - overlap)))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_gaussian_importance_map_has_sigma_of_an_eighth_of_the_window():
    window = (16, 24, 8)
    weights = sw.importance_map(window, "gaussian")
    assert weights.shape == window and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0) and weights.min() >= sw.MIN_WEIGHT
    for flip in range(3):
        np.testing.assert_allclose(np.flip(weights, flip), weights)  # centred
    for axis, w in enumerate(window):
        # The profile along each axis is a normal pdf with sigma = w / 8, scaled to maximum 1.
        x = np.arange(w) - (w - 1) / 2
        pdf = stats.norm.pdf(x, scale=w / 8)
        profile = weights.max(axis=tuple(a for a in range(3) if a != axis))
        np.testing.assert_allclose(profile, np.maximum(pdf / pdf.max(), sw.MIN_WEIGHT), rtol=1e-5)
    np.testing.assert_array_equal(sw.importance_map(window, "constant"), np.ones(window, np.float32))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_weights_are_normalised_a_constant_model_gives_that_constant(blend):
    ones = lambda x: jnp.broadcast_to(jnp.asarray([0.2, 0.5, 0.9], jnp.float32), x.shape[:-1] + (3,))
    out = sw.sliding_window_probabilities(ones, volume(), 8, overlap=0.5, blend=blend, window_batch=3)
    assert out.shape == (24, 20, 18, 3)
    np.testing.assert_allclose(out, np.broadcast_to(np.asarray([0.2, 0.5, 0.9], np.float32), out.shape), rtol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pointwise_model_is_reproduced_everywhere(blend):
    image = volume()
    out = sw.sliding_window_probabilities(pointwise, image, 8, overlap=0.5, blend=blend, window_batch=4)
    np.testing.assert_allclose(out, np.asarray(pointwise(image)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overlap,batch", [(0.5, 2), (0.25, 3)])
def test_convolution_is_reproduced_away_from_window_borders(overlap, batch):
    """Wherever every window covering a voxel has it at least one voxel from the window's faces
    (or on a face that is the volume's own), the window saw exactly the full volume's context."""
    image = volume()
    window = 8
    out = sw.sliding_window_probabilities(box_filter, image, window, overlap=overlap, blend="gaussian",
                                          window_batch=batch)
    full = np.asarray(box_filter(image[None]))[0]
    clean = np.ones(image.shape[:3], bool)
    for origin in sw.window_origins(image.shape[:3], (window,) * 3, overlap):
        for axis, o in enumerate(origin):
            n = image.shape[axis]
            for face, inner in ((o, o > 0), (o + window - 1, o + window < n)):
                if inner:  # a face inside the volume: its voxels lacked a neighbour there
                    index = [slice(int(a), int(a) + window) for a in origin]
                    index[axis] = face
                    clean[tuple(index)] = False
    assert clean.mean() > 0.3
    np.testing.assert_allclose(out[clean], full[clean], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, full, atol=1e-4)  # the window borders do matter elsewhere


def test_volume_smaller_than_the_window_is_padded_and_cropped_back():
    image = volume((10, 20, 5, 2))
    out = sw.sliding_window_probabilities(pointwise, image, 16, overlap=0.5, window_batch=2)
    assert out.shape == (10, 20, 5, 2)
    np.testing.assert_allclose(out, np.asarray(pointwise(image)), rtol=1e-5, atol=1e-6)
    # a convolution sees zero padding beyond the volume, exactly like the padded window
    out = sw.sliding_window_probabilities(box_filter, image[:, :16], 16, overlap=0.5, window_batch=1)
    np.testing.assert_allclose(out, np.asarray(box_filter(image[None, :, :16]))[0], rtol=1e-5, atol=1e-6)


def test_flip_tta_leaves_a_flip_symmetric_model_unchanged_and_averages_an_asymmetric_one():
    image = volume((16, 16, 16, 2))
    plain = sw.sliding_window_probabilities(box_filter, image, 8, overlap=0.5)
    tta = sw.sliding_window_probabilities(jax.jit(sw.with_flip_tta(box_filter)), image, 8, overlap=0.5)
    np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-6)

    def shift(x):  # not flip-equivariant: each voxel reports its +x neighbour
        return jnp.roll(jnp.asarray(x), -1, axis=1)[..., :1]

    batch = volume((2, 8, 8, 8, 1), seed=3)
    averaged = np.asarray(jax.jit(sw.with_flip_tta(shift))(batch))
    expected = np.mean([np.flip(np.roll(np.flip(batch, axes), -1, axis=1), axes) if axes else np.roll(batch, -1, axis=1)
                        for r in range(4) for axes in itertools.combinations((1, 2, 3), r)], axis=0)
    np.testing.assert_allclose(averaged, expected, rtol=1e-6)
    assert not np.allclose(averaged, np.asarray(shift(batch)))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="overlap"):
        sw.sliding_window_probabilities(pointwise, volume(), 8, overlap=1.0)
    with pytest.raises(ValueError, match="blend"):
        sw.importance_map((8, 8, 8), "triangle")
