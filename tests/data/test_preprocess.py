"""preprocess: normalization statistics, the crop/fit round trip, slice filters."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.config import DataConfig
from jaxseg.data import preprocess as pp
from jaxseg.errors import JaxsegError


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (((grid - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1


def _volume(shape=(40, 36, 16), centre=(20, 18, 8), radii=(10, 12, 6), seed=0, channels=4, tumor=1.0):
    """A skull-stripped looking volume: noisy brain ellipsoid, zero background, a 3-class tumor
    (radii scaled by ``tumor``)."""
    rng = np.random.default_rng(seed)
    brain = _ellipsoid(shape, centre, radii)
    image = rng.normal(500, 80, shape + (channels,)).astype(np.float32) + 600 * np.arange(channels)
    image = np.where(brain[..., None], np.maximum(image, 1), 0).astype(np.float32)
    classes = np.zeros(shape, np.uint8)
    c = np.asarray(centre)
    for label, r in ((2, (5, 6, 3)), (3, (3, 4, 2)), (1, (1.5, 2, 1))):
        classes[_ellipsoid(shape, c + (2, -1, 0), tumor * np.asarray(r)) & brain] = label
    return image, classes, brain


def _dice(a, b) -> float:
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_brain_mask_is_any_channel_nonzero():
    image = np.zeros((4, 4, 2, 3), np.float32)
    image[1, 1, 0, 2] = 5
    image[2, 3, 1, 0] = -1
    mask = pp.brain_mask(image)
    assert mask.dtype == bool and mask.shape == (4, 4, 2)
    assert sorted(zip(*np.nonzero(mask))) == [(1, 1, 0), (2, 3, 1)]


@pytest.mark.parametrize("method", ["zscore_minmax", "channel_minmax"])
def test_minmax_methods_span_0_1_on_brain_and_keep_background_zero(method):
    image, _, brain = _volume()
    out = pp.normalize(image, brain, method)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.all(out[~brain] == 0)
    for c in range(image.shape[-1]):
        values = out[..., c][brain]
        assert values.min() == pytest.approx(0, abs=1e-6) and values.max() == pytest.approx(1, abs=1e-6)


def test_zscore_minmax_is_clip_at_5_sd_then_minmax():
    # Ten very bright voxels (~40 SD of the tissue) set the range of plain min-max; beyond
    # ZSCORE_CLIP SD they are clipped, so the tissue keeps more of [0, 1].
    image, _, brain = _volume(channels=1)
    bright = tuple(np.argwhere(brain)[:10].T)
    image[bright] = 500 + 40 * 80
    values = image[..., 0][brain].astype(np.float64)
    z = np.clip((values - values.mean()) / values.std(), -pp.ZSCORE_CLIP, pp.ZSCORE_CLIP)
    expected = (z - z.min()) / (z.max() - z.min())
    clipped = pp.normalize(image, brain, "zscore_minmax")[..., 0][brain]
    np.testing.assert_allclose(clipped, expected, atol=1e-5)
    assert z.max() == pp.ZSCORE_CLIP  # the bright voxels were clipped
    plain = pp.normalize(image, brain, "channel_minmax")[..., 0][brain]
    assert np.median(clipped) > 2 * np.median(plain)


def test_slice_zscore_standardizes_each_slice_over_brain_pixels():
    image, _, brain = _volume()
    image[:, :, 3] *= 7  # slices differ in scale: each is standardized on its own
    out = pp.normalize(image, brain, "slice_zscore")
    assert np.all(out[~brain] == 0)
    for z in range(image.shape[2]):
        pixels = brain[:, :, z]
        if pixels.sum() < 2:
            assert np.all(out[:, :, z] == 0)
            continue
        values = out[:, :, z][pixels]  # (N, C)
        np.testing.assert_allclose(values.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(values.std(0), 1, atol=1e-3)
    assert not brain[:, :, 0].any() and np.all(out[:, :, 0] == 0)  # a slice without brain stays 0


@pytest.mark.parametrize("method", ["zscore_minmax", "slice_zscore", "channel_minmax"])
def test_constant_channel_and_empty_mask_give_no_nan(method):
    image, _, brain = _volume()
    image[..., 1] = np.where(brain, 300.0, 0.0)
    out = pp.normalize(image, brain, method)
    assert np.isfinite(out).all()
    assert np.all(out[..., 1] == 0)
    empty = pp.normalize(np.zeros((8, 8, 3, 2), np.float32), np.zeros((8, 8, 3), bool), method)
    assert np.all(empty == 0)


def test_unknown_normalization_is_a_user_error():
    with pytest.raises(JaxsegError, match="data.normalize"):
        pp.normalize(np.ones((2, 2, 2, 1), np.float32), np.ones((2, 2, 2), bool), "histogram")


def test_prepare_volume_shapes_and_bookkeeping():
    image, classes, brain = _volume()
    cfg = DataConfig(image_size=32, fit="crop_pad")
    prep = pp.prepare_volume(image, classes, cfg)
    assert prep.slices.shape == (16, 32, 32, 4) and prep.slices.dtype == np.float32
    assert prep.classes.shape == (16, 32, 32) and prep.classes.dtype == np.uint8
    np.testing.assert_array_equal(prep.brain_slices, brain.any(axis=(0, 1)))
    # crop_pad covers the whole tumor, so the per-slice tumor count is the original one
    np.testing.assert_array_equal(prep.tumor_pixels, (classes > 0).sum(axis=(0, 1)))
    x0, x1, y0, y1 = prep.geometry.box
    assert (x0, x1, y0, y1) == (10 - pp.BOX_MARGIN, 31 + pp.BOX_MARGIN, 6 - pp.BOX_MARGIN, 31 + pp.BOX_MARGIN)
    unlabeled = pp.prepare_volume(image, None, cfg)
    assert unlabeled.classes is None and not unlabeled.tumor_pixels.any()


@pytest.mark.parametrize("crop", ["brain_bbox", "none"])
def test_crop_pad_round_trip_is_exact_for_labels(crop):
    # (36 x 32 volume) brain box 29 x 33 -> 32 x 32 window crops 1 and pads 1; the box is the brain
    # + margin so nothing labelled is cut. crop='none' on a 32 x 32 plane is the identity.
    shape = (36, 32, 12) if crop == "brain_bbox" else (32, 32, 12)
    image, classes, _ = _volume(shape=shape, centre=(18, 16, 6), radii=(10, 12, 5))
    prep = pp.prepare_volume(image, classes, DataConfig(image_size=32, fit="crop_pad", crop=crop))
    restored = pp.restore_slices(prep.classes, prep.geometry, order=0)
    assert restored.shape == classes.shape and restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, classes)


def test_crop_pad_window_beyond_the_volume_is_zero_padding():
    image, classes, brain = _volume(shape=(20, 24, 10), centre=(10, 12, 5), radii=(9, 11, 4))
    prep = pp.prepare_volume(image, classes, DataConfig(image_size=32, fit="crop_pad", crop="none"))
    wx0, wy0, side = prep.geometry.window
    assert (wx0, wy0, side) == (-6, -4, 32)
    assert np.all(prep.slices[:, :6] == 0) and np.all(prep.slices[:, 26:] == 0)
    np.testing.assert_array_equal(pp.restore_slices(prep.classes, prep.geometry, 0), classes)


@pytest.mark.parametrize("shape", [(56, 44, 12), (24, 20, 12)])  # shrink and enlarge
def test_resize_round_trip_keeps_labels(shape):
    centre = tuple(s // 2 for s in shape)
    radii = (shape[0] * 0.4, shape[1] * 0.45, shape[2] * 0.4)
    # the tumor scales with the volume: nearest-neighbour resampling of a 3-voxel blob is not the
    # point here, a lesion a few output pixels wide is
    image, classes, _ = _volume(shape=shape, centre=centre, radii=radii, tumor=shape[0] / 28)
    prep = pp.prepare_volume(image, classes, DataConfig(image_size=32, fit="resize"))
    side = prep.geometry.window[2]
    assert side != 32  # a real resampling happened
    restored = pp.restore_slices(prep.classes, prep.geometry, order=0)
    assert restored.shape == classes.shape
    assert _dice(restored > 0, classes > 0) > 0.95
    # probabilities (float, K channels) come back bilinearly, in range, same grid
    probs = np.stack([prep.classes == k for k in range(4)], -1).astype(np.float32)
    back = pp.restore_slices(probs, prep.geometry, order=1)
    assert back.shape == classes.shape + (4,) and back.dtype == np.float32
    assert back.min() >= 0 and back.max() <= 1 + 1e-6
    assert _dice(back.argmax(-1) > 0, classes > 0) > 0.95


def test_resize_keeps_aspect_by_squaring_the_box():
    image, classes, _ = _volume(shape=(60, 30, 8), centre=(30, 15, 4), radii=(25, 10, 3))
    geometry = pp.prepare_volume(image, classes, DataConfig(image_size=32)).geometry
    x0, x1, y0, y1 = geometry.box
    wx0, wy0, side = geometry.window
    assert side == max(x1 - x0, y1 - y0) == x1 - x0
    assert wx0 == x0 and wy0 < y0 and wy0 + side > y1  # padded around the centre in y only


def test_linear_and_nearest_match_jax_image_resize_when_enlarging():
    # Same sampling grid as jax.image.resize (half-pixel centres); jax only differs when shrinking,
    # where it antialiases and we do not.
    rng = np.random.default_rng(1)
    plane = rng.random((20, 20, 3)).astype(np.float32)
    ours = pp._resample_plane(plane, 32, order=1)
    ref = jax.image.resize(jnp.asarray(plane), (32, 32, 3), method="linear")
    np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-5)
    labels = rng.integers(0, 4, (20, 20)).astype(np.float32)
    ref = jax.image.resize(jnp.asarray(labels), (32, 32), method="nearest")
    np.testing.assert_array_equal(pp._resample_plane(labels, 32, order=0), np.asarray(ref))


def test_geometry_round_trips_through_a_dict_and_checks_shapes():
    image, classes, _ = _volume()
    prep = pp.prepare_volume(image, classes, DataConfig(image_size=32))
    assert pp.SliceGeometry.from_dict(prep.geometry.as_dict()) == prep.geometry
    with pytest.raises(JaxsegError, match="expected"):
        pp.restore_slices(np.zeros((15, 32, 32), np.uint8), prep.geometry, 0)


def _prepared(brain_slices, tumor_pixels):
    z = len(brain_slices)
    return pp.PreparedVolume(slices=np.zeros((z, 4, 4, 1), np.float32), classes=np.zeros((z, 4, 4), np.uint8),
                             geometry=pp.SliceGeometry((4, 4, z), (0, 4, 0, 4), (0, 0, 4), "resize", 4),
                             brain_slices=np.asarray(brain_slices, bool), tumor_pixels=np.asarray(tumor_pixels))


def test_keep_slices_filters():
    #              z: 0  1  2  3  4  5  6  7  8  9
    brain = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    tumor = np.array([0, 0, 3, 10, 50, 0, 0, 0, 0, 0])
    rng = np.random.default_rng(0)
    prep = _prepared(brain, tumor)
    all_kept = pp.keep_slices(prep, DataConfig(), rng)
    np.testing.assert_array_equal(all_kept, np.arange(1, 9))
    tumor_only = pp.keep_slices(prep, DataConfig(empty_slice_fraction=0.0, min_tumor_pixels=10), rng)
    np.testing.assert_array_equal(tumor_only, [3, 4])
    half = pp.keep_slices(prep, DataConfig(empty_slice_fraction=0.4, min_tumor_pixels=10), rng)
    empties = set(half) - {3, 4}
    assert {3, 4} <= set(half) and len(empties) == 2 and empties <= {1, 5, 6, 7, 8}
    same = [pp.keep_slices(prep, DataConfig(empty_slice_fraction=0.4), np.random.default_rng(s)) for s in (7, 7)]
    np.testing.assert_array_equal(*same)


def test_case_tumor_fraction():
    brain = np.zeros((4, 4, 4), bool)
    brain[:2] = True  # 32 voxels
    classes = np.zeros((4, 4, 4), np.uint8)
    classes[0, 0, :] = 2  # 4 voxels
    assert pp.case_tumor_fraction(classes, brain) == pytest.approx(4 / 32)
    assert pp.case_tumor_fraction(classes, np.zeros_like(brain)) == 0.0


@pytest.mark.real_data
def test_prepare_real_case_is_invertible(real_data):
    from jaxseg.data import brats
    case = brats.case_from_path(real_data / "brats2018" / "Brats18_2013_11_1")
    image, classes, _ = brats.load_case(case, ("flair", "t1", "t1ce", "t2"))
    prep = pp.prepare_volume(image, classes, DataConfig(image_size=128))
    assert prep.slices.shape == (image.shape[2], 128, 128, 4)
    restored = pp.restore_slices(prep.classes, prep.geometry, 0)
    assert _dice(restored > 0, classes > 0) > 0.95
