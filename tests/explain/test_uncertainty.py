"""Monte-Carlo dropout: zero spread without dropout, the textbook statistics of the sampled
passes with it, and a pure function of the key."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from jaxseg import config as config_lib
from jaxseg.explain.uncertainty import mc_dropout
from jaxseg.train.state import create_state, graphdef_of, make_optimizer

IMAGES = np.random.default_rng(0).uniform(size=(2, 32, 32, 4)).astype(np.float32)


def tiny_unet(*overrides):
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, *overrides])  # features (4, 8)
    state = create_state(cfg, make_optimizer(cfg, 1), Mesh(np.array(jax.devices()[:1]), ("data",)))
    return graphdef_of(cfg), state.params, state.batch_stats


def reference_statistics(graphdef, params, batch_stats, key, n, softmax):
    """The same passes one key at a time, and the statistics in float64 numpy."""
    @jax.jit
    def probabilities(k):
        logits, _ = nnx.merge(graphdef, params, batch_stats)(IMAGES, train=False, dropout_key=k)
        return jax.nn.softmax(logits, -1) if softmax else jax.nn.sigmoid(logits)

    p = np.stack([np.asarray(probabilities(k), np.float64) for k in jax.random.split(key, n)])

    def entropy(q):
        bernoulli = -(q * np.log(q) + (1 - q) * np.log(1 - q))
        return -(q * np.log(q)).sum(-1) if softmax else bernoulli

    mean = p.mean(0)
    return {"mean": mean, "variance": p.var(0), "entropy": entropy(mean),
            "mutual_information": entropy(mean) - entropy(p).mean(0)}


def test_without_dropout_the_spread_is_exactly_zero_and_the_mean_is_the_prediction():
    graphdef, params, batch_stats = tiny_unet("model.dropout=0.0")
    out = mc_dropout(graphdef, params, batch_stats, IMAGES, jax.random.key(0), n_samples=5)
    logits, _ = jax.jit(lambda p, b: nnx.merge(graphdef, p, b)(IMAGES, train=False))(params, batch_stats)
    assert out["mean"].shape == out["variance"].shape == out["entropy"].shape == (2, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(out["mean"]), np.asarray(jax.nn.sigmoid(logits)), atol=1e-6)
    assert not np.asarray(out["variance"]).any()
    assert np.abs(np.asarray(out["mutual_information"])).max() < 1e-6
    assert np.asarray(out["entropy"]).max() > 0.1  # an untrained model is unsure, not spread


@pytest.mark.parametrize("target", ["regions", "classes"])
def test_with_dropout_the_statistics_are_those_of_the_sampled_passes(target):
    graphdef, params, batch_stats = tiny_unet("model.dropout=0.5", f"data.target={target}",
                                              "train.loss=" + ("ce_dice" if target == "classes" else "bce_dice"))
    key = jax.random.key(3)
    out = mc_dropout(graphdef, params, batch_stats, IMAGES, key, n_samples=6)
    expected = reference_statistics(graphdef, params, batch_stats, key, 6, target == "classes")
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(out[name]), value, atol=2e-5, err_msg=name)
    shape = (2, 32, 32) if target == "classes" else (2, 32, 32, 3)
    assert out["entropy"].shape == out["mutual_information"].shape == shape
    assert np.asarray(out["variance"]).max() > 1e-3
    mutual_information = np.asarray(out["mutual_information"])
    assert mutual_information.min() >= -1e-6 and mutual_information.max() > 1e-3


def test_a_pure_function_of_the_key_whatever_the_chunking():
    graphdef, params, batch_stats = tiny_unet("model.dropout=0.5")
    run = lambda key, **kw: jax.device_get(  # noqa: E731
        mc_dropout(graphdef, params, batch_stats, IMAGES, key, n_samples=6, **kw))
    first, again = run(jax.random.key(1)), run(jax.random.key(1))
    other, chunked = run(jax.random.key(2)), run(jax.random.key(1), chunk=3)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        np.testing.assert_allclose(chunked[name], first[name], atol=1e-6, err_msg=name)
    assert not np.allclose(first["variance"], other["variance"])
    with pytest.raises(ValueError, match="n_samples"):
        mc_dropout(graphdef, params, batch_stats, IMAGES, jax.random.key(1), n_samples=0)
