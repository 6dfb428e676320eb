"""The Predictor computes in the run's ``train.precision`` unless told otherwise; one checkpoint
serves both precisions."""
import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.files import atomic_path
from jaxseg.infer.predict import Predictor


def _as_trained_in(run, precision, folder):
    """A copy of ``run`` whose config says it trained in ``precision``: the checkpoint is the same
    (parameters are float32 whatever the compute dtype), only the config differs."""
    shutil.copytree(run, folder)
    cfg = config_lib.load(folder / "config.toml")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))
    with atomic_path(folder / "config.toml") as tmp:
        tmp.write_text(config_lib.dumps(cfg))
    return folder


def _batch(predictor):
    return jax.random.uniform(jax.random.key(3), (2, 32, 32, predictor.cfg.in_channels), jnp.float32)


def _activation_dtypes(predictor, x):
    _, acts = predictor.model()(x, train=False)
    return {a.dtype for a in acts.values()}


@pytest.fixture(scope="module")
def bf16_run(smoke_run, tmp_path_factory):
    return _as_trained_in(smoke_run, "bfloat16", tmp_path_factory.mktemp("bf16") / "run")


def test_a_bfloat16_run_predicts_in_bfloat16_unless_overridden(smoke_run, bf16_run):
    float_run = Predictor(smoke_run)
    as_trained = Predictor(bf16_run)
    overridden = Predictor(bf16_run, precision="float32")
    x = _batch(float_run)
    assert (float_run.precision, as_trained.precision, overridden.precision) == ("float32", "bfloat16", "float32")
    assert _activation_dtypes(float_run, x) == {jnp.dtype(jnp.float32)}
    assert _activation_dtypes(as_trained, x) == {jnp.dtype(jnp.bfloat16)}
    assert _activation_dtypes(overridden, x) == {jnp.dtype(jnp.float32)}
    # The same float32 parameters: the overridden predictor is the float32 run exactly.
    p32 = np.asarray(float_run.forward(x))
    np.testing.assert_array_equal(np.asarray(overridden.forward(x)), p32)
    # bfloat16 probabilities: float32 out, close to float32's. A sigmoid's slope is at most 1/4,
    # so a logit off by 0.1 (bfloat16's 0.4 % of logits up to ~20, after a few layers' roundings)
    # moves a probability by at most 0.025.
    p16 = np.asarray(as_trained.forward(x))
    assert p16.dtype == np.float32
    np.testing.assert_allclose(p16, p32, atol=0.025)
    assert not np.array_equal(p16, p32)


def test_an_unknown_precision_is_refused(smoke_run):
    from jaxseg.errors import JaxsegError
    with pytest.raises(JaxsegError, match="precision: must be one of float32, bfloat16; got 'float16'"):
        Predictor(smoke_run, precision="float16")
