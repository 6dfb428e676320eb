"""Calibrating a trained model: fit one temperature per region on labelled cases, write calibration.json.

The flow (``jaxseg calibrate``, and the end of training with ``train.calibrate = true``):

1. :func:`case_logits` runs the model on one labelled case in model space (the training
   preprocessing, :func:`jaxseg.data.formats.brats_volumes.load_prepared`) and keeps the logits
   of every pass (``mc_samples`` MC-dropout passes, what ``jaxseg explain`` reports; with
   ``mc_samples = 0`` the plain passes: one, or one per test-time flip, what ``jaxseg predict``
   averages) on the brain voxels that matter, plus a weighted sample of the rest (below).
2. :func:`fit_temperatures` fits ``T_k`` per sigmoid region minimising the NLL of the mean
   probability over passes (:func:`jaxseg.explain.calibration.fit_region_temperatures`).
3. :func:`ece_table` gives the ECE before and after, over all brain voxels and over the relevant
   ones (:func:`jaxseg.explain.calibration.relevant_mask`).
4. :func:`calibrate` does all of it for a run or model folder and writes ``calibration.json``
   there (``{"temperature": {region: T}, "ece_before": {region: {all_brain, relevant}},
   "ece_after": ..., "fitted_on": [case ids], "mc_samples": n, "how": "..."}``), which
   :class:`jaxseg.infer.predict.Predictor` then applies (logits / T before the sigmoid).

Why a sample: 20 passes of a BraTS case are ~10^8 logits. Voxels inside a region or with a pass
probability above :data:`KEEP_ABOVE` are all kept (weight 1); of the remaining brain voxels (every
pass below 1e-3: easy background) one in :data:`BACKGROUND_RATE` is kept, weight
``BACKGROUND_RATE``, so weighted sums (NLL, reliability bins) are unbiased estimates of the
sums over every brain voxel. The sample is seeded by the case id (reproducible).

Scope: sigmoid targets (``regions``, ``wt``) and 2D models; a softmax (``classes``) model or a 3D
model is refused with one line.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import zlib
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseg import model_store, target as target_lib
from jaxseg.data import brats, split
from jaxseg.data.formats.brats_volumes import load_prepared
from jaxseg.errors import JaxsegError
from jaxseg.explain import calibration
from jaxseg.files import atomic_path
from jaxseg.infer import chunks
from jaxseg.infer.predict import Predictor
from jaxseg.train.checkpoint import load_run_config

KEEP_ABOVE = 1e-3      # a voxel any pass gives more than this is kept (weight 1)
BACKGROUND_RATE = 20   # one in this many of the other brain voxels is kept, weight BACKGROUND_RATE
FIT_TOLERANCE = 1e-3   # in log T: T to 0.1 %
MC_CHUNK = 1           # MC passes held at once per slice batch (as explain/slices.py MC_SLICE_CHUNK)


@dataclasses.dataclass(frozen=True)
class CaseLogits:
    """One labelled case's logits on its sampled brain voxels (module docstring).

    case_id: the case; logits: ``(S, N, K)`` float16, S passes; truth: ``(N, K)`` bool region
    masks; weights: ``(N,)`` float32 (1, or :data:`BACKGROUND_RATE` for sampled background).
    """
    case_id: str
    logits: np.ndarray
    truth: np.ndarray
    weights: np.ndarray


@functools.partial(jax.jit, static_argnames=("graphdef", "n_samples"))
def _mc_logits(graphdef, params, batch_stats, images, key, *, n_samples):
    """``(B, H, W, C)`` -> ``(B, n_samples, H, W, K)`` float16 logits of MC-dropout passes, the
    encoder run once (as :mod:`jaxseg.explain.mc_shared`)."""
    model = nnx.merge(graphdef, params, batch_stats)
    shared = hasattr(model, "encode") and hasattr(model, "decode")
    features = model.encode(images, train=False) if shared else None

    def sample(k):
        module = nnx.merge(graphdef, params, batch_stats)
        logits = (module.decode(features, train=False, dropout_key=k)[0] if shared
                  else module(images, train=False, dropout_key=k)[0])
        return logits.astype(jnp.float16)

    passes = jax.lax.map(sample, jax.random.split(key, n_samples), batch_size=MC_CHUNK)
    return jnp.moveaxis(passes, 0, 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "flip_axes"))
def _plain_logits(graphdef, params, batch_stats, images, *, flip_axes):
    """``(B, H, W, C)`` -> ``(B, F, H, W, K)`` float16 logits, one per test-time flip subset of
    ``flip_axes`` (F = 1 without flips), each flipped back."""
    model = nnx.merge(graphdef, params, batch_stats)
    subsets = [()] + [s for r in range(1, len(flip_axes) + 1)
                      for s in itertools.combinations(flip_axes, r)]
    outputs = []
    for axes in subsets:
        x = jnp.flip(images, axes) if axes else images
        logits = model(x, train=False)[0]
        outputs.append(jnp.flip(logits, axes) if axes else logits)
    return jnp.stack(outputs, axis=1).astype(jnp.float16)


def case_logits(predictor: Predictor, case: brats.Case, mc_samples: int, key: jax.Array) -> CaseLogits:
    """The logits of every pass on a labelled case's sampled brain voxels (module docstring).

    ``mc_samples`` > 0: that many MC-dropout passes; 0: the plain passes (one per test-time flip).
    """
    prepared, _ = load_prepared(case, predictor.modalities, predictor.cfg.data)
    slices = np.asarray(prepared.slices, np.float32)                 # (Z, S, S, C)
    brain = np.any(slices != 0, axis=-1)                              # normalisation keeps background 0
    keep_z = np.flatnonzero(brain.any(axis=(1, 2)))
    slices, brain = slices[keep_z], brain[keep_z]
    truth = target_lib.target_for(predictor.cfg).region_masks_from_classes(np.asarray(prepared.classes)[keep_z])
    if mc_samples > 0:
        def run(i, batch):
            return _mc_logits(predictor.graphdef, predictor.params, predictor.batch_stats, batch,
                              jax.random.fold_in(key, i), n_samples=mc_samples)
    else:
        def run(i, batch):
            return _plain_logits(predictor.graphdef, predictor.params, predictor.batch_stats, batch,
                                 flip_axes=predictor.flip_axes)
    logits = chunks.map_chunks(run, slices, batch_size=predictor.batch_size,
                               empty=np.zeros((0,), np.float16))     # (Z', S, H, W, K)
    logits = np.moveaxis(logits, 1, 0)[:, brain]                      # (S, N_brain, K)
    truth = truth[brain]
    keep = truth.any(-1) | (logits.max(axis=0) > np.float16(np.log(KEEP_ABOVE / (1 - KEEP_ABOVE)))).any(-1)
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
    sampled = ~keep & (rng.integers(0, BACKGROUND_RATE, keep.shape) == 0)
    chosen = keep | sampled
    weights = np.where(keep, 1.0, float(BACKGROUND_RATE)).astype(np.float32)[chosen]
    return CaseLogits(case.case_id, np.ascontiguousarray(logits[:, chosen]), truth[chosen], weights)


def _pooled(cases: Sequence[CaseLogits]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.concatenate([c.logits for c in cases], axis=1), np.concatenate([c.truth for c in cases]),
            np.concatenate([c.weights for c in cases]))


@jax.jit
def _mc_mean_nll(temperature, logits, truth, weights):
    """Weighted NLL of ``truth (N,)`` under the pass-mean of ``sigmoid(logits (S, N) / T)``, as
    :func:`jaxseg.explain.calibration.temperature_nll` with ``samples`` (float32, fused: a numpy
    pass over 20 x 10^6 logits per golden-section step would dominate the run)."""
    z = logits.astype(jnp.float32) / temperature
    log_p = jax.nn.log_sigmoid(z)
    log_q = log_p - z                                  # log(1 - sigmoid(z)), no cancellation
    count = jnp.log(jnp.float32(z.shape[0]))
    log_mean = jnp.where(truth, jax.nn.logsumexp(log_p, axis=0), jax.nn.logsumexp(log_q, axis=0)) - count
    return -jnp.sum(weights * log_mean) / jnp.sum(weights)


def fit_temperatures(cases: Sequence[CaseLogits]) -> np.ndarray:
    """``(K,)`` float64: per region, the T minimising the weighted NLL of the pass-mean
    probability over the pooled voxels of ``cases`` (golden section on log T,
    :func:`jaxseg.explain.calibration.minimise_over_log_temperature`)."""
    logits, truth, weights = _pooled(cases)
    weights = jnp.asarray(weights)
    temperatures = []
    for k in range(truth.shape[-1]):
        z, y = jnp.asarray(logits[..., k]), jnp.asarray(truth[:, k])
        temperatures.append(calibration.minimise_over_log_temperature(
            lambda t: _mc_mean_nll(jnp.float32(t), z, y, weights), tolerance=FIT_TOLERANCE))
    return np.asarray(temperatures)


def mean_probabilities(logits: np.ndarray, temperature: np.ndarray | None = None) -> np.ndarray:
    """``(S, N, K)`` logits -> ``(N, K)`` float32 mean over passes of ``sigmoid(logits / T)``."""
    z = logits.astype(np.float32)
    if temperature is not None:
        z = calibration.apply_temperature(z, np.asarray(temperature, np.float32))
    return (1.0 / (1.0 + np.exp(-z))).mean(axis=0)


def ece_table(cases: Sequence[CaseLogits], region_names: Sequence[str], temperature: np.ndarray | None = None,
              n_bins: int = 15) -> dict[str, dict[str, float | None]]:
    """``{region: {"all_brain", "relevant", "relevant_uncalibrated"}}`` ECEs of the pass-mean
    probabilities (after ``temperature`` if given) pooled over ``cases``.

    ``relevant``: the issue's voxels that matter, p > 0.01 or inside the region, with p the
    probabilities scored (so a larger T also widens the set, towards easier voxels);
    ``relevant_uncalibrated``: the voxels relevant by the uncalibrated p (the same voxels before
    and after, the like-for-like comparison). None where no voxel is selected.
    """
    logits, truth, weights = _pooled(cases)
    probs = mean_probabilities(logits, temperature)
    plain = probs if temperature is None else mean_probabilities(logits)
    table = {}
    for k, region in enumerate(region_names):
        p, y = probs[:, k], truth[:, k]

        def ece(mask):
            return _finite(calibration.expected_calibration_error(p, y, mask, n_bins=n_bins, weights=weights))
        table[region] = {"all_brain": ece(None), "relevant": ece(calibration.relevant_mask(p, y)),
                         "relevant_uncalibrated": ece(calibration.relevant_mask(plain[:, k], y))}
    return table


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 5)  # None: no voxel to score (JSON has no NaN)


def calibration_cases(predictor: Predictor, data: str | Path | None = None,
                      cases: Sequence[str | Path] = ()) -> list[brats.Case]:
    """The labelled cases to fit on: ``cases`` (case folders) if given, else the run's validation
    cases (its splits.json, or ``data.val_cases`` of a model folder's config) found under ``data``
    (default: the config's ``data.root``)."""
    if cases:
        found = [brats.case_from_path(c) for c in cases]
    else:
        splits_file = predictor.run / "splits.json"
        ids = split.load_manifest(splits_file)["val"] if splits_file.is_file() else list(predictor.cfg.data.val_cases)
        if not ids:
            raise JaxsegError(f"{predictor.run}: no validation cases (splits.json or data.val_cases); pass --cases")
        phantoms = predictor.run / "phantoms"  # a run on phantoms keeps them (data/formats/brats_volumes.py)
        root = data or predictor.cfg.data.root or (phantoms if phantoms.is_dir() else None)
        if not root:
            raise JaxsegError(f"{predictor.run}: no data.root and no phantoms folder; pass --data or --cases")
        if not Path(root).is_dir():
            raise JaxsegError(f"{root}: no such data folder (pass --data)")
        by_id = {case.case_id: case for case in brats.find_cases(root)}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise JaxsegError(f"{root}: validation case {missing[0]} not found ({len(missing)} of {len(ids)} missing)")
        found = [by_id[i] for i in ids]
    for case in found:
        if case.seg is None:
            raise JaxsegError(f"{case.folder}: case {case.case_id} has no segmentation; calibration needs one")
    return found


def check_calibratable(predictor: Predictor) -> None:
    """JaxsegError unless the model is a 2D sigmoid-region model (the scope of this module)."""
    kind = target_lib.target_for(predictor.cfg)
    if kind.activation != "sigmoid":
        raise JaxsegError(f"{predictor.run}: data.target = {kind.name!r}: calibration fits sigmoid regions only")
    if predictor.volumetric or predictor.cfg.data.format != "brats":
        raise JaxsegError(f"{predictor.run}: calibration supports 2D models of BraTS volumes only")


def calibrate(checkpoint: str | Path, *, data: str | Path | None = None, cases: Sequence[str | Path] = (),
              mc_samples: int = 20, seed: int = 0, write: bool = True,
              progress: Callable[[str], None] | None = None) -> dict:
    """Fit per-region temperatures of a run or model folder on labelled cases and (``write``)
    store ``<folder>/calibration.json`` (atomically). Returns its content (module docstring).

    Args:
      checkpoint: run or model folder (anything :class:`Predictor` takes).
      data, cases: where the cases come from (:func:`calibration_cases`).
      mc_samples: MC-dropout passes (> 0), or 0 for the plain prediction's passes.
      seed: the dropout key.
    """
    if mc_samples < 0:
        raise JaxsegError(f"--mc-samples: must be 0 (plain passes) or more, got {mc_samples}")
    predictor = Predictor(checkpoint, calibrated=False)
    check_calibratable(predictor)
    if mc_samples > 0 and not predictor.cfg.model.dropout:
        raise JaxsegError(f"{predictor.run}: model.dropout = 0, so MC passes are all equal; use --mc-samples 0")
    labelled = calibration_cases(predictor, data, cases)
    key = jax.random.key(seed)
    collected = []
    for i, case in enumerate(labelled):
        if progress is not None:
            progress(case.case_id)
        collected.append(case_logits(predictor, case, mc_samples, jax.random.fold_in(key, i)))
    result = calibration_result(collected, target_lib.target_for(predictor.cfg).channel_names, mc_samples)
    if write:
        write_calibration(predictor.run, result)
    return result


def calibrate_after_training(workdir: str | Path, progress: Callable[[str], None] | None = None) -> str:
    """``train.calibrate``: calibrate a finished run on its validation cases (20 MC passes, or the
    plain passes for a model without dropout); returns one line for the log. Single-process
    runs only (a multi-host run says so and writes nothing)."""
    if jax.process_count() > 1:
        return "train.calibrate: skipped in a multi-process run; run `jaxseg calibrate` on one host"
    result = calibrate(workdir, mc_samples=20 if load_run_config(workdir).model.dropout else 0, progress=progress)
    temperatures = ", ".join(f"{k} {v:.3f}" for k, v in result["temperature"].items())
    return f"calibrated on {len(result['fitted_on'])} validation cases: temperature {temperatures}; {model_store.CALIBRATION_FILE} in {workdir}"


def calibration_result(collected: Sequence[CaseLogits], channel_names: Sequence[str], mc_samples: int) -> dict:
    """The calibration.json content of temperatures fitted on ``collected``."""
    temperature = fit_temperatures(collected)
    passes = f"{mc_samples} MC-dropout passes" if mc_samples else "the plain passes (one per test-time flip)"
    return {
        "temperature": {name: round(float(t), 5) for name, t in zip(channel_names, temperature)},
        "ece_before": ece_table(collected, channel_names),
        "ece_after": ece_table(collected, channel_names, temperature),
        "fitted_on": [c.case_id for c in collected],
        "mc_samples": mc_samples,
        "how": (f"one temperature per region minimising the NLL of the mean sigmoid probability over {passes} "
                "on the brain voxels of the cases in fitted_on, in model space (all voxels in or near a "
                f"region, 1 in {BACKGROUND_RATE} of the easy background, weighted); ECE with 15 bins over "
                "all brain voxels, over the relevant ones (p > 0.01 or inside the region) and over the voxels "
                "relevant before calibration (relevant_uncalibrated), measured on the same cases (in-sample); applied as logits / T before the sigmoid"),
    }


def write_calibration(folder: str | Path, result: dict) -> Path:
    """Write ``result`` as ``<folder>/calibration.json`` (atomically); returns the path."""
    path = Path(folder) / model_store.CALIBRATION_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return path
