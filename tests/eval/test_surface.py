"""HD95 against a brute-force pairwise-distance implementation (and medpy when installed), and
BraTS lesion-wise scores on hand-made cubes and against a direct transcription of the official steps."""
import numpy as np
import pytest

from jaxseg.eval import surface


# --------------------------------------------------------------------------- HD95

def brute_force_hd95(pred, ref, spacing):
    """Surface voxels by an explicit 6-neighbour test (outside the array = background), all
    pairwise distances, 95th percentile of both directions' minima pooled."""
    def surface_points(mask):
        padded = np.pad(mask, 1)
        points = []
        for idx in zip(*np.nonzero(mask)):
            p = tuple(i + 1 for i in idx)
            neighbours = [padded[p[:a] + (p[a] + d,) + p[a + 1:]] for a in range(3) for d in (-1, 1)]
            if not all(neighbours):
                points.append(idx)
        return np.asarray(points, np.float64) * np.asarray(spacing)

    a, b = surface_points(pred), surface_points(ref)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return np.percentile(np.concatenate([distances.min(axis=1), distances.min(axis=0)]), 95)


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 10, 9)
    pred, ref = np.zeros(shape, bool), np.zeros(shape, bool)
    # Blobs of random size; some touch the volume's edge, where the border convention matters.
    for mask in (pred, ref):
        for _ in range(rng.integers(1, 3)):
            lo = rng.integers(0, 8, 3)
            hi = lo + rng.integers(1, 6, 3)
            mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        mask &= rng.random(shape) < 0.85  # ragged surfaces
        if not mask.any():
            mask[0, 0, 0] = True
    spacing = (1.0, 1.0, 1.0) if seed % 2 else (0.8, 1.3, 2.0)
    assert surface.hd95(pred, ref, spacing) == pytest.approx(brute_force_hd95(pred, ref, spacing), rel=1e-9)


def test_hd95_simple_cases():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[0, 0, 0] = True
    b[3, 4, 0] = True
    assert surface.hd95(a, b) == pytest.approx(5.0)
    assert surface.hd95(a, a) == 0.0
    assert surface.hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(np.hypot(6.0, 4.0))
    empty = np.zeros_like(a)
    assert surface.hd95(empty, empty) == 0.0
    assert surface.hd95(a, empty) == surface.hd95(empty, a) == surface.EMPTY_HD95 == 373.13


def test_hd95_against_medpy_when_installed():
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(7)
    pred = rng.random((14, 12, 10)) < 0.2
    ref = rng.random((14, 12, 10)) < 0.2
    spacing = (1.0, 0.7, 2.5)
    assert surface.hd95(pred, ref, spacing) == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=spacing))


# --------------------------------------------------------------------------- lesion-wise

def cube(mask, corner, size):
    x, y, z = corner
    mask[x:x + size, y:y + size, z:z + size] = True


def test_lesion_wise_one_match_one_miss_one_false_positive():
    shape = (40, 40, 20)
    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    cube(ref, (2, 2, 2), 6)     # found (shifted by one voxel)
    cube(ref, (25, 25, 2), 5)   # missed
    cube(pred, (3, 2, 2), 6)
    cube(pred, (2, 30, 12), 3)  # false positive, far from both lesions
    result = surface.lesion_wise(pred, ref)
    assert (result["n_ref_lesions"], result["n_pred_lesions"]) == (2, 2)
    assert (result["tp"], result["fn"], result["fp"]) == (1, 1, 1)
    lesion, found = np.zeros(shape, bool), np.zeros(shape, bool)
    cube(lesion, (2, 2, 2), 6)
    cube(found, (3, 2, 2), 6)
    dice = 2 * np.sum(lesion & found) / (lesion.sum() + found.sum())
    assert dice == pytest.approx(2 * 180 / 432)
    assert result["dice"] == pytest.approx(dice / 3)
    assert result["hd95"] == pytest.approx((brute_force_hd95(found, lesion, (1, 1, 1)) + 2 * 374) / 3)


def test_lesion_wise_empty_cases():
    shape = (12, 12, 12)
    empty, some = np.zeros(shape, bool), np.zeros(shape, bool)
    cube(some, (3, 3, 3), 4)
    assert surface.lesion_wise(empty, empty) == {"dice": 1.0, "hd95": 0.0, "n_ref_lesions": 0,
                                           "n_pred_lesions": 0, "tp": 0, "fp": 0, "fn": 0}
    missed = surface.lesion_wise(empty, some)
    assert (missed["dice"], missed["hd95"], missed["fn"]) == (0.0, 374.0, 1)
    false_alarm = surface.lesion_wise(some, empty)
    assert (false_alarm["dice"], false_alarm["hd95"], false_alarm["fp"]) == (0.0, 374.0, 1)
    perfect = surface.lesion_wise(some, some)
    assert (perfect["dice"], perfect["hd95"], perfect["tp"]) == (1.0, 0.0, 1)


def test_lesion_wise_dilation_merges_nearby_fragments():
    shape = (30, 12, 12)
    ref = np.zeros(shape, bool)
    cube(ref, (2, 2, 2), 4)
    cube(ref, (8, 2, 2), 4)  # a 2-voxel gap: one lesion after dilation, two without
    pred = ref.copy()
    merged = surface.lesion_wise(pred, ref, dilation_iterations=3)
    separate = surface.lesion_wise(pred, ref, dilation_iterations=0)
    assert merged["n_ref_lesions"] == 1 and merged["n_pred_lesions"] == 2 and merged["dice"] == 1.0
    assert separate["n_ref_lesions"] == 2 and separate["dice"] == 1.0 and separate["fp"] == 0


def test_lesion_wise_small_lesions_are_ignored_but_not_false_positives():
    shape = (30, 30, 10)
    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    cube(ref, (2, 2, 2), 5)     # 125 voxels, found
    cube(ref, (20, 20, 2), 2)   # 8 voxels: ignored with min_lesion_voxels=50
    cube(pred, (2, 2, 2), 5)
    cube(pred, (20, 20, 2), 2)
    result = surface.lesion_wise(pred, ref, min_lesion_voxels=50)
    assert (result["n_ref_lesions"], result["tp"], result["fp"], result["dice"]) == (1, 1, 0, 1.0)
    assert surface.lesion_wise(pred, ref)["n_ref_lesions"] == 2


def test_lesion_match_uses_whole_predicted_components():
    """A predicted component touching the lesion's dilated region is matched as a whole."""
    shape = (30, 10, 10)
    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    cube(ref, (2, 2, 2), 4)
    pred[2:20, 2:6, 2:6] = True  # overlaps the lesion and extends far beyond it
    result = surface.lesion_wise(pred, ref)
    assert result["fp"] == 0 and result["dice"] == pytest.approx(2 * 64 / (64 + 18 * 16))


def test_volume_ml():
    mask = np.zeros((10, 10, 10), bool)
    mask[:5, :4, :2] = True
    assert surface.volume_ml(mask, (1.0, 1.0, 2.0)) == pytest.approx(40 * 2 / 1000)


def official_lesion_wise(pred, ref, dilation_iterations):
    """A direct transcription of the BraTS 2023 steps: full-volume dilations, no cropping."""
    from scipy import ndimage
    full = np.ones((3, 3, 3), bool)
    struct = ndimage.generate_binary_structure(3, 2)
    pred_cc, n_pred = ndimage.label(pred, structure=full)
    dilated_cc, n_gt = ndimage.label(ndimage.binary_dilation(ref, struct, iterations=dilation_iterations),
                                     structure=full)
    gt_cc = dilated_cc * ref
    matched, dices, hds = [], [], []
    for comp in range(1, n_gt + 1):
        lesion = gt_cc == comp
        region = ndimage.binary_dilation(lesion, struct, iterations=dilation_iterations)
        ids = [i for i in np.unique(pred_cc * region) if i != 0]
        matched += ids
        found = np.isin(pred_cc, ids)
        dices.append(2 * np.sum(lesion & found) / (lesion.sum() + found.sum()))
        hds.append(brute_force_hd95(found, lesion, (1, 1, 1)) if ids else 374.0)
    fp = len(set(range(1, n_pred + 1)) - set(matched))
    if n_gt + fp == 0:
        return 1.0, 0.0
    return sum(dices) / (n_gt + fp), (sum(hds) + 374.0 * fp) / (n_gt + fp)


@pytest.mark.parametrize("seed,iterations", [(0, 1), (1, 3), (2, 1), (3, 3)])
def test_lesion_wise_matches_a_direct_transcription(seed, iterations):
    rng = np.random.default_rng(seed)
    shape = (24, 20, 12)
    pred, ref = np.zeros(shape, bool), np.zeros(shape, bool)
    for mask in (pred, ref):
        for _ in range(rng.integers(1, 5)):
            corner = rng.integers(0, 20, 3) % np.array(shape)
            cube(mask, tuple(corner), int(rng.integers(1, 5)))
    dice, hd = official_lesion_wise(pred, ref, iterations)
    result = surface.lesion_wise(pred, ref, dilation_iterations=iterations)
    assert result["dice"] == pytest.approx(dice, rel=1e-9)
    assert result["hd95"] == pytest.approx(hd, rel=1e-9)
