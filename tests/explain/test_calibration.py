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
