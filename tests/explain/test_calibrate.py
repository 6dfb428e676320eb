"""jaxseg calibrate: per-region temperatures fitted on labelled cases, stored, applied, exported.

Properties against independent computations: a temperature planted in synthetic logits is
recovered; the jitted MC-mean NLL with weights equals the numpy NLL of the repeated voxels; the
ECE table equals a loop-over-bins numpy ECE; the Predictor's calibrated probabilities equal
sigmoid(logits / T) computed by hand from the model; export copies the file.
"""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from jaxseg import model_export, model_store
from jaxseg.cli import app
from jaxseg.explain import calibrate, calibration
from jaxseg.infer.predict import Predictor
from jaxseg.target import target_for


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_a_planted_temperature_is_recovered():
    """Outcomes drawn from sigmoid(z); the model reports T * z: the fit gives back T per region."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, (60000, 2))
    truth = rng.random(z.shape) < _sigmoid(z)
    planted = np.array([2.5, 0.5])
    case = calibrate.CaseLogits("synthetic", (z * planted)[None].astype(np.float16), truth,
                                np.ones(len(z), np.float32))
    fitted = calibrate.fit_temperatures([case])
    np.testing.assert_allclose(fitted, planted, rtol=0.05)
    # and the library's numpy fit agrees with the jitted one
    np.testing.assert_allclose(calibration.fit_region_temperatures(case.logits.astype(np.float64), truth,
                                                                   samples=True), fitted, rtol=2e-3)


def test_weighted_mc_nll_equals_the_nll_of_repeated_voxels():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, (5, 300)).astype(np.float32)
    truth = rng.random(300) < 0.3
    weights = rng.integers(1, 4, 300)
    repeated = calibration.temperature_nll(1.7, np.repeat(logits, weights, axis=1), np.repeat(truth, weights),
                                           samples=True)
    fast = float(calibrate._mc_mean_nll(jnp.float32(1.7), jnp.asarray(logits), jnp.asarray(truth),
                                        jnp.asarray(weights, jnp.float32)))
    assert fast == pytest.approx(repeated, rel=1e-5)


def _numpy_ece(p, y, n_bins=15):
    total, n = 0.0, len(p)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (p >= lo) & ((p < hi) if b < n_bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return total / n


def test_ece_table_equals_a_numpy_ece_of_the_calibrated_mean_probabilities():
    rng = np.random.default_rng(2)
    logits = rng.normal(-2, 3, (4, 2000, 2)).astype(np.float16)
    truth = rng.random((2000, 2)) < _sigmoid(logits.astype(np.float32).mean(0) / 1.5)
    weights = rng.integers(1, 3, 2000).astype(np.float32)
    case = calibrate.CaseLogits("c", logits, truth, weights)
    temperature = np.array([1.5, 0.8])
    table = calibrate.ece_table([case], ("WT", "TC"), temperature)
    reps = weights.astype(int)
    for k, region in enumerate(("WT", "TC")):
        p = _sigmoid(logits[..., k].astype(np.float64) / temperature[k]).mean(0)
        p0 = _sigmoid(logits[..., k].astype(np.float64)).mean(0)
        pr, yr, p0r = np.repeat(p, reps), np.repeat(truth[:, k], reps), np.repeat(p0, reps)
        assert table[region]["all_brain"] == pytest.approx(_numpy_ece(pr, yr), abs=2e-5)
        relevant = (pr > 0.01) | yr
        assert table[region]["relevant"] == pytest.approx(_numpy_ece(pr[relevant], yr[relevant]), abs=2e-5)
        before = (p0r > 0.01) | yr
        assert table[region]["relevant_uncalibrated"] == pytest.approx(_numpy_ece(pr[before], yr[before]), abs=2e-5)


@pytest.fixture()
def run_copy(smoke_run, tmp_path):
    """A private copy of the smoke run (tests write calibration.json into it)."""
    return shutil.copytree(smoke_run, tmp_path / "run")


def _write_temperatures(folder, temperatures: dict) -> None:
    (folder / model_store.CALIBRATION_FILE).write_text(json.dumps({"temperature": temperatures}))


def test_predictor_divides_the_logits_by_the_stored_temperatures(run_copy):
    plain = Predictor(run_copy)
    names = target_for(plain.cfg).channel_names
    assert plain.temperature is None
    temperatures = dict(zip(names, np.linspace(0.5, 3.0, len(names)).tolist()))
    _write_temperatures(run_copy, temperatures)
    calibrated, off = Predictor(run_copy), Predictor(run_copy, calibrated=False)
    assert off.temperature is None
    size = plain.cfg.data.image_size
    x = np.random.default_rng(3).random((4, size, size, len(plain.modalities)), np.float32)
    for p in (calibrated, off):
        p.flip_axes = ()  # compare single passes
    logits = np.asarray(calibrated.model()(jnp.asarray(x), train=False)[0], np.float64)
    expected = _sigmoid(logits / np.array([temperatures[n] for n in names]))
    np.testing.assert_allclose(np.asarray(calibrated.forward(x)), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(off.forward(x)), _sigmoid(logits), atol=1e-5)
    # T > 0 keeps every logit's sign: the thresholded prediction is the same
    assert ((np.asarray(calibrated.forward(x)) > 0.5) == (logits > 0)).all()


def test_a_calibration_file_missing_a_region_is_one_clear_error(run_copy):
    _write_temperatures(run_copy, {"XX": 1.0})
    with pytest.raises(Exception, match="no temperature for"):
        Predictor(run_copy)


def test_calibrate_writes_calibration_json_that_the_predictor_applies(run_copy):
    result = calibrate.calibrate(run_copy, mc_samples=3)
    stored = json.loads((run_copy / model_store.CALIBRATION_FILE).read_text())
    assert stored == json.loads(json.dumps(result))
    predictor = Predictor(run_copy)
    names = target_for(predictor.cfg).channel_names
    assert set(stored["temperature"]) == set(names)
    np.testing.assert_allclose(predictor.temperature, [stored["temperature"][n] for n in names], rtol=1e-6)
    splits = json.loads((run_copy / "splits.json").read_text())
    assert stored["fitted_on"] == splits["val"] and stored["mc_samples"] == 3
    for key in ("ece_before", "ece_after"):
        assert set(stored[key]) == set(names)
        assert set(stored[key][names[0]]) == {"all_brain", "relevant", "relevant_uncalibrated"}
    # the fitted temperatures are those of the collected logits (same key, same cases)
    cases = calibrate.calibration_cases(Predictor(run_copy, calibrated=False))
    collected = [calibrate.case_logits(Predictor(run_copy, calibrated=False), c, 3,
                                       jax.random.fold_in(jax.random.key(0), i)) for i, c in enumerate(cases)]
    np.testing.assert_allclose([stored["temperature"][n] for n in names], calibrate.fit_temperatures(collected),
                               rtol=1e-4)


def test_export_carries_the_calibration_and_the_card_says_so(run_copy, tmp_path):
    plain = Predictor(run_copy)
    names = target_for(plain.cfg).channel_names
    temperatures = {n: 1.5 for n in names}
    _write_temperatures(run_copy, temperatures)
    folder = model_export.export_model(run_copy, tmp_path / "model", name="calibrated", dtype="float32")
    assert json.loads((folder / model_store.CALIBRATION_FILE).read_text())["temperature"] == temperatures
    card = model_store.read_card(folder)
    assert card["calibration"]["temperature"] == temperatures
    assert any(line.startswith("calibrated:") for line in model_export.card_summary(card))
    np.testing.assert_allclose(Predictor(folder).temperature, [1.5] * len(names))


def test_cli_calibrate_refuses_a_negative_mc_samples_in_one_line(run_copy):
    result = CliRunner().invoke(app, ["calibrate", "--checkpoint", str(run_copy), "--mc-samples", "-1"])
    assert result.exit_code == 2
    assert "--mc-samples" in result.output and "Traceback" not in result.output


def test_mc_dropout_divides_every_pass_by_the_temperature(smoke_run):
    """mc_dropout(..., temperature=T)'s mean equals the mean over the same keys of
    sigmoid(logits / T) of the model's own dropout passes."""
    from flax import nnx
    from jaxseg.explain.mc_shared import mc_dropout_shared
    from jaxseg.explain.uncertainty import mc_dropout
    p = Predictor(smoke_run, calibrated=False)
    names = target_for(p.cfg).channel_names
    temperature = np.linspace(0.7, 2.0, len(names)).astype(np.float32)
    size = p.cfg.data.image_size
    x = jnp.asarray(np.random.default_rng(4).random((2, size, size, len(p.modalities)), np.float32))
    key = jax.random.key(7)
    model = nnx.merge(p.graphdef, p.params, p.batch_stats)
    passes = [np.asarray(model(x, train=False, dropout_key=k)[0], np.float64) for k in jax.random.split(key, 3)]
    expected = np.mean([_sigmoid(z / temperature) for z in passes], axis=0)
    for fn in (mc_dropout, mc_dropout_shared):
        stats = fn(p.graphdef, p.params, p.batch_stats, x, key, 3, p.cfg.data.target, temperature=temperature)
        np.testing.assert_allclose(np.asarray(stats["mean"]), expected, atol=1e-5)


def test_train_with_train_calibrate_writes_calibration_json(tmp_path):
    result = CliRunner().invoke(app, ["train", "--config", "demo", "--smoke", "--set", "train.calibrate=true",
                                      "--workdir", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "run" / model_store.CALIBRATION_FILE).read_text())
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert stored["fitted_on"] == splits["val"] and stored["mc_samples"] == 20
    assert all(t > 0 for t in stored["temperature"].values())
