"""ECE and reliability bins against a direct, loop-by-loop computation."""
import numpy as np
import pytest

from jaxseg.explain import calibration


def _ece_by_loops(p, y, n_bins):
    """Bin edges tested one voxel at a time (the definition, written out)."""
    total, n = 0.0, len(p)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(n) if (lo <= p[i] < hi) or (b == n_bins - 1 and p[i] == 1.0)]
        if members:
            confidence = sum(p[i] for i in members) / len(members)
            accuracy = sum(y[i] for i in members) / len(members)
            total += len(members) / n * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_the_definition(n_bins):
    rng = np.random.default_rng(n_bins)
    p = np.concatenate([rng.uniform(size=300), [0.0, 1.0, 0.5]])
    y = rng.uniform(size=p.shape) < p ** 2  # overconfident: true frequency p^2 < p
    assert calibration.expected_calibration_error(p, y, n_bins=n_bins) == pytest.approx(
        _ece_by_loops(p.tolist(), y.astype(int).tolist(), n_bins), abs=1e-12)


def test_perfect_and_worst_calibration():
    p = np.repeat(np.linspace(0.05, 0.95, 10), 1000)
    y = np.zeros_like(p, bool)
    for value in np.unique(p):  # exactly the stated frequency in each bin
        idx = np.flatnonzero(p == value)
        y[idx[: int(round(value * len(idx)))]] = True
    assert calibration.expected_calibration_error(p, y, n_bins=10) < 1e-3
    confident_wrong = np.ones(50)
    assert calibration.expected_calibration_error(confident_wrong, np.zeros(50, bool)) == pytest.approx(1.0)


def test_mask_and_relevant_voxels():
    p = np.array([0.0, 0.001, 0.3, 0.9, 0.0])
    y = np.array([0, 0, 1, 1, 1], bool)
    relevant = calibration.relevant_mask(p, y)
    assert relevant.tolist() == [False, False, True, True, True]
    within = np.array([True, True, True, True, False])
    assert calibration.relevant_mask(p, y, within=within).tolist() == [False, False, True, True, False]
    # Only the selected voxels are binned.
    expected = _ece_by_loops([0.3, 0.9, 0.0], [1, 1, 1], 15)
    assert calibration.expected_calibration_error(p, y, relevant) == pytest.approx(expected)
    assert np.isnan(calibration.expected_calibration_error(p, y, np.zeros(5, bool)))
    bins = calibration.reliability_bins(p, y, relevant, n_bins=2)
    assert bins["count"].tolist() == [2, 1]
    with pytest.raises(ValueError, match="differ in shape"):
        calibration.reliability_bins(p, y[:3])


# ------------------------------------------------------------------------ temperature scaling

def _naive_nll(t, z, y):
    """The textbook BCE of sigmoid(z / t), float64 (fine for moderate logits)."""
    p = 1 / (1 + np.exp(-z / t))
    with np.errstate(divide="ignore"):  # a far-off t can round a probability to 0: NLL inf
        return -np.mean(np.log(np.where(y, p, 1 - p)))


def test_temperature_recovers_the_one_that_made_the_labels():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, size=200_000)
    y = rng.uniform(size=z.shape) < 1 / (1 + np.exp(-z / 2.5))  # the model is 2.5x overconfident
    t = calibration.fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.04)
    grid = np.linspace(1.5, 3.5, 201)
    nll = [_naive_nll(g, z, y) for g in grid]
    assert t == pytest.approx(grid[np.argmin(nll)], abs=0.01)
    assert _naive_nll(t, z, y) <= min(nll) + 1e-9
    # Calibrated probabilities: the ECE falls.
    before = calibration.expected_calibration_error(1 / (1 + np.exp(-z)), y)
    after = calibration.expected_calibration_error(1 / (1 + np.exp(-calibration.apply_temperature(z, t))), y)
    assert after < 0.01 < before


def test_nll_is_finite_for_huge_logits_and_mc_passes_of_one_value_are_the_plain_fit():
    z = np.array([-1000.0, 1000.0, 800.0, -3.0])
    y = np.array([False, True, False, True])
    assert np.isfinite(calibration.temperature_nll(1.0, z, y))
    assert calibration.temperature_nll(1.0, z, y) == pytest.approx((800.0 + np.log1p(np.exp(-800.0))
                                                                     + np.log1p(np.exp(3.0))) / 4)
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, size=5000)
    y = rng.uniform(size=z.shape) < 1 / (1 + np.exp(-z / 1.7))
    assert calibration.fit_temperature(np.stack([z, z, z]), y, samples=True) == pytest.approx(
        calibration.fit_temperature(z, y), rel=1e-4)


def test_softmax_temperature_recovers_the_one_that_made_the_labels():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, size=(60_000, 4))
    p = np.exp(z / 0.6)
    p /= p.sum(-1, keepdims=True)
    labels = (rng.uniform(size=(len(z), 1)) > np.cumsum(p, -1)).sum(-1)  # inverse-CDF draw
    assert calibration.fit_temperature(z, labels, "softmax") == pytest.approx(0.6, rel=0.04)


def test_region_temperatures_are_per_channel_fits_and_apply_broadcasts_per_channel():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, size=(20, 30, 3))
    y = rng.uniform(size=z.shape) < 1 / (1 + np.exp(-z / np.array([1.0, 2.0, 3.0])))
    mask = rng.uniform(size=(20, 30)) < 0.8
    t = calibration.fit_region_temperatures(z, y, mask)
    for k in range(3):
        assert t[k] == pytest.approx(calibration.fit_temperature(z[..., k][mask], y[..., k][mask]), rel=1e-9)
    scaled = calibration.apply_temperature(z, t)
    for k in range(3):
        np.testing.assert_allclose(scaled[..., k], z[..., k] / t[k])


# ------------------------------------------------------------------------ error-detection AUROC

def _auroc_by_pairs(u, e):
    """Every (error, correct) pair compared: 1 if the error is more uncertain, 1/2 on a tie."""
    errors, correct = u[e], u[~e]
    wins = (errors[:, None] > correct[None, :]).sum() + 0.5 * (errors[:, None] == correct[None, :]).sum()
    return wins / (len(errors) * len(correct))


def test_auroc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(4)
    u = np.round(rng.uniform(size=(12, 25)), 1)  # many ties
    e = rng.uniform(size=u.shape) < 0.2 + 0.6 * u  # errors where uncertain, mostly
    mask = rng.uniform(size=u.shape) < 0.7
    assert calibration.error_detection_auroc(u, e) == pytest.approx(_auroc_by_pairs(u.ravel(), e.ravel()), abs=1e-12)
    assert calibration.error_detection_auroc(u, e, mask) == pytest.approx(_auroc_by_pairs(u[mask], e[mask]), abs=1e-12)


def test_auroc_ends_and_undefined_cases():
    u = np.array([0.1, 0.2, 0.8, 0.9])
    assert calibration.error_detection_auroc(u, np.array([0, 0, 1, 1], bool)) == 1.0
    assert calibration.error_detection_auroc(u, np.array([1, 1, 0, 0], bool)) == 0.0
    assert calibration.error_detection_auroc(np.ones(4), np.array([1, 0, 1, 0], bool)) == 0.5
    assert np.isnan(calibration.error_detection_auroc(u, np.zeros(4, bool)))
