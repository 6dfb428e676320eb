"""Calibration of predicted probabilities: reliability bins and the expected calibration error.

For a binary event (a voxel belongs to a region) with predicted probabilities ``p`` and outcomes
``y``, the ``n_bins`` equal-width bins ``[0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]`` each hold the
voxels whose ``p`` falls in them (``p = 1`` goes to the last bin). Per bin: the count, the mean
predicted probability (confidence) and the observed frequency of ``y`` (accuracy). The expected
calibration error (Naeini et al. 2015; Guo et al. 2017 for the binned form) is

    ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|

over the non-empty bins, on the voxels selected by ``mask``. Convention chosen here: the
probability of the positive event itself is binned (not max(p, 1 - p), the "top-label" form of
multi-class ECE), because each BraTS region is its own Bernoulli event with sigmoid outputs.
Over all brain voxels the ECE is dominated by easy background; :func:`relevant_mask` selects the
voxels that matter for a region (predicted above ``floor`` or inside the reference).

Also here: temperature scaling fitted per region (:func:`fit_region_temperatures`,
:func:`fit_temperature`, :func:`apply_temperature`; its own section below) and the AUROC of
voxel uncertainty as a detector of voxel errors (:func:`error_detection_auroc`).
"""
from __future__ import annotations

import numpy as np


def reliability_bins(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
                     n_bins: int = 15, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-bin ``count`` (int64; with ``weights`` the float64 sum of weights), ``confidence`` and
    ``accuracy`` (float64; NaN for empty bins).

    Args:
      probs: predicted probabilities of one event, any shape, values in [0, 1].
      truth: the outcomes, same shape, bool or {0, 1}.
      mask: optional bool selection of the voxels to score, same shape.
      n_bins: number of equal-width bins over [0, 1].
      weights: optional per-voxel weights, same shape (a voxel sampled at rate r weighs 1/r, so
        a subsample gives the statistics of the whole).
    """
    probs = np.asarray(probs, np.float64)
    truth = np.asarray(truth).astype(bool)
    if probs.shape != truth.shape:
        raise ValueError(f"probabilities {probs.shape} and outcomes {truth.shape} differ in shape")
    w = None if weights is None else np.broadcast_to(np.asarray(weights, np.float64), probs.shape)
    if mask is not None:
        probs, truth = probs[mask], truth[mask]
        w = None if w is None else w[mask]
    probs, truth = probs.ravel(), truth.ravel()
    index = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    if w is None:
        count = np.bincount(index, minlength=n_bins)
        total_p = np.bincount(index, weights=probs, minlength=n_bins)
        total_y = np.bincount(index, weights=truth.astype(np.float64), minlength=n_bins)
    else:
        w = w.ravel()
        count = np.bincount(index, weights=w, minlength=n_bins)
        total_p = np.bincount(index, weights=probs * w, minlength=n_bins)
        total_y = np.bincount(index, weights=truth * w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "confidence": total_p / count, "accuracy": total_y / count}


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
                               n_bins: int = 15, weights: np.ndarray | None = None) -> float:
    """The binned ECE (module docstring) of ``probs`` against ``truth`` on ``mask`` (``weights``
    as :func:`reliability_bins`); NaN when the mask selects no voxel."""
    bins = reliability_bins(probs, truth, mask, n_bins, weights)
    count = bins["count"]
    if count.sum() == 0:
        return float("nan")
    full = count > 0
    gaps = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float((count[full] * gaps).sum() / count.sum())


def relevant_mask(probs: np.ndarray, truth: np.ndarray, floor: float = 0.01,
                  within: np.ndarray | None = None) -> np.ndarray:
    """The voxels that matter for a region: predicted above ``floor`` or inside the reference
    (bool, same shape), optionally restricted to ``within`` (e.g. the brain)."""
    selected = (np.asarray(probs) > floor) | np.asarray(truth).astype(bool)
    return selected if within is None else selected & within


# ------------------------------------------------------------------------ temperature scaling
#
# Temperature scaling (Guo et al. 2017): divide the logits by one scalar T > 0 per region (per
# sigmoid channel; one for a softmax), fitted on validation voxels by minimising the negative
# log-likelihood. T > 1 softens overconfident probabilities, T < 1 sharpens; the predicted
# region (logit > 0, or the argmax) never changes. For plain logits the NLL is convex in 1/T,
# so it is unimodal in log T and a golden-section search over log T finds the minimum; for
# Monte-Carlo passes (a leading sample axis) the NLL of the MC-mean probability is searched the
# same way. Every log-probability goes through log-sigmoid / log-softmax / logsumexp, so no
# probability is ever rounded to 0 before its logarithm is taken.

ACTIVATIONS = ("sigmoid", "softmax")
TEMPERATURE_RANGE = (0.05, 20.0)


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def _log_mean_exp(log_values: np.ndarray, axis: int) -> np.ndarray:
    top = log_values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(log_values - top).mean(axis=axis, keepdims=True))).squeeze(axis)


def temperature_nll(temperature: float, logits: np.ndarray, truth: np.ndarray, activation: str = "sigmoid",
                    samples: bool = False, weights: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood (nats per voxel) of ``truth`` under ``logits / temperature``.

    Args:
      logits: sigmoid: ``(N,)`` logits of one event (``(S, N)`` with ``samples``, S MC passes);
        softmax: ``(N, K)`` (``(S, N, K)``).
      truth: sigmoid: ``(N,)`` bool; softmax: ``(N,)`` int class labels.
      samples: the first axis of ``logits`` holds MC passes; the likelihood is that of the
        MC-mean probability ``mean_s p_s``.
      weights: optional ``(N,)`` voxel weights (a weighted mean; see :func:`reliability_bins`).
    """
    z = np.asarray(logits, np.float64) / float(temperature)
    if activation == "sigmoid":
        y = np.asarray(truth).astype(bool)
        log_p, log_q = _log_sigmoid(z), _log_sigmoid(-z)
        if samples:
            log_p, log_q = _log_mean_exp(log_p, 0), _log_mean_exp(log_q, 0)
        return float(-np.average(np.where(y, log_p, log_q), weights=weights))
    if activation != "softmax":
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    labels = np.asarray(truth).astype(np.int64)
    log_probs = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    index = labels[..., None]
    if samples:
        index = np.broadcast_to(index[None], (*log_probs.shape[:-1], 1))
    log_true = np.take_along_axis(log_probs, index, axis=-1)[..., 0]
    if samples:
        log_true = _log_mean_exp(log_true, 0)
    return float(-np.average(log_true, weights=weights))


def fit_temperature(logits: np.ndarray, truth: np.ndarray, activation: str = "sigmoid", *,
                    samples: bool = False, bounds: tuple[float, float] = TEMPERATURE_RANGE,
                    tolerance: float = 1e-5, weights: np.ndarray | None = None) -> float:
    """The temperature in ``bounds`` minimising :func:`temperature_nll` (golden section on log T,
    to ``tolerance`` in log T). Arguments as :func:`temperature_nll`; voxels already selected
    (flattened). Returns 1.0 when there are no voxels."""
    if np.size(truth) == 0:
        return 1.0
    return minimise_over_log_temperature(
        lambda t: temperature_nll(t, logits, truth, activation, samples, weights), bounds, tolerance)


def minimise_over_log_temperature(objective, bounds: tuple[float, float] = TEMPERATURE_RANGE,
                                  tolerance: float = 1e-5) -> float:
    """The T in ``bounds`` minimising ``objective(T) -> float`` (unimodal in log T, as the NLL of
    :func:`temperature_nll`), by golden section on log T to ``tolerance``; for callers with
    their own (e.g. jitted) NLL."""
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0

    def f(u: float) -> float:
        return float(objective(float(np.exp(u))))

    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return float(np.exp((lo + hi) / 2))


def fit_region_temperatures(logits: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                            samples: bool = False, bounds: tuple[float, float] = TEMPERATURE_RANGE,
                            tolerance: float = 1e-5, weights: np.ndarray | None = None) -> np.ndarray:
    """One temperature per sigmoid channel (region), fitted independently.

    Args:
      logits: ``(..., K)`` float (``(S, ..., K)`` with ``samples``), e.g. a validation volume's.
      truth: ``(..., K)`` bool region masks.
      mask: ``(...)`` bool voxels to fit on (the brain, say); None = all.
      tolerance: in log T (:func:`fit_temperature`).
      weights: optional ``(...)`` voxel weights (:func:`reliability_bins`).
    Returns:
      ``(K,)`` float64 temperatures (for :func:`apply_temperature`).
    """
    logits = np.asarray(logits, np.float64)
    truth = np.asarray(truth).astype(bool)
    lead = logits.shape[1:] if samples else logits.shape
    if truth.shape != lead:
        raise ValueError(f"region masks {truth.shape} and logits {lead} differ in shape")
    select = np.ones(lead[:-1], bool) if mask is None else np.asarray(mask, bool)
    w = None if weights is None else np.broadcast_to(np.asarray(weights, np.float64), lead[:-1])[select]
    temperatures = []
    for k in range(lead[-1]):
        z = logits[..., k][:, select] if samples else logits[..., k][select]
        temperatures.append(fit_temperature(z, truth[..., k][select], "sigmoid", samples=samples, bounds=bounds,
                                            tolerance=tolerance, weights=w))
    return np.asarray(temperatures)


def apply_temperature(logits, temperature):
    """``logits / temperature``: ``logits (..., K)`` (numpy or jax), ``temperature`` a scalar or
    ``(K,)`` (one per region, broadcast over the last axis). Same type and dtype as the logits."""
    t = np.asarray(temperature, np.float64)
    if t.ndim == 1:
        t = t.reshape((1,) * (np.ndim(logits) - 1) + (-1,))  # explicit: rank promotion may raise
    return logits / t.astype(getattr(logits, "dtype", np.float64))


# ---------------------------------------------------------------- uncertainty as an error detector

def error_detection_auroc(uncertainty: np.ndarray, error: np.ndarray, mask: np.ndarray | None = None) -> float:
    """AUROC of voxel uncertainty as a predictor of a voxel error.

    The probability that a random erroneous voxel is more uncertain than a random correct one,
    ties counting one half (the Mann-Whitney U statistic over ``n_error * n_correct``, from
    tie-averaged ranks). 0.5 = uninformative, 1 = every error more uncertain than every correct
    voxel. NaN when the selection has no error or no correct voxel.

    Args:
      uncertainty: any shape, float (entropy, variance, mutual information).
      error: same shape, bool (prediction != reference, per region).
      mask: same shape, bool voxels to score (the brain, or :func:`relevant_mask`).
    """
    u = np.asarray(uncertainty, np.float64)
    e = np.asarray(error).astype(bool)
    if u.shape != e.shape:
        raise ValueError(f"uncertainty {u.shape} and errors {e.shape} differ in shape")
    if mask is not None:
        u, e = u[mask], e[mask]
    u, e = u.ravel(), e.ravel()
    n_error, n_correct = int(e.sum()), int((~e).sum())
    if n_error == 0 or n_correct == 0:
        return float("nan")
    values, inverse, counts = np.unique(u, return_inverse=True, return_counts=True)
    # Tie-averaged 1-based ranks: a run of equal values shares the mean of its positions.
    upper = np.cumsum(counts)
    ranks = (upper - (counts - 1) / 2.0)[inverse]
    u_statistic = ranks[e].sum() - n_error * (n_error + 1) / 2.0
    return float(u_statistic / (n_error * n_correct))
