"""Deep supervision (``model.deep_supervision``): auxiliary heads on coarser decoder levels, their
loss against pooled targets with nnU-Net's weights, and a network that predicts as without them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError
from jaxseg.models.unet import UNet
from jaxseg.models.unet3d import UNet3D
from jaxseg.train.losses import bce, deep_supervision_loss, dice, pool_target
from jaxseg.train.state import create_state, graphdef_of, make_optimizer
from jaxseg.train.step import make_train_step
from tests.train.test_step import mesh_of, phantom_batch, put

FEATURES = (4, 8, 8, 8)  # depth 3: heads fit on dec1 and dec2


def numpy_bce(logits, target):
    x, t = np.asarray(logits, np.float64), np.asarray(target, np.float64)
    return float(np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))))


def test_pool_target_is_the_block_mean():
    target = np.random.default_rng(0).uniform(size=(2, 8, 12, 3)).astype(np.float32)
    pooled = np.asarray(pool_target(jnp.asarray(target), 4))
    assert pooled.shape == (2, 2, 3, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(pooled[:, i, j], target[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(axis=(1, 2)),
                                       rtol=1e-6)
    volume = np.random.default_rng(1).uniform(size=(1, 4, 4, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(pool_target(jnp.asarray(volume), 2))[0, 1, 0, 1],
                               volume[0, 2:4, 0:2, 2:4].mean(axis=(0, 1, 2)), rtol=1e-6)


def test_objective_weights_each_level_by_half_the_one_above():
    rng = np.random.default_rng(2)
    target = (rng.uniform(size=(2, 8, 8, 1)) > 0.6).astype(np.float32)
    logits = [rng.normal(size=(2, 8 // 2 ** i, 8 // 2 ** i, 1)).astype(np.float32) for i in range(3)]
    total, main = deep_supervision_loss(bce, jnp.asarray(logits[0]), [jnp.asarray(a) for a in logits[1:]],
                                        jnp.asarray(target))
    pooled = [target, target.reshape(2, 4, 2, 4, 2, 1).mean(axis=(2, 4)), target.reshape(2, 2, 4, 2, 4, 1).mean(axis=(2, 4))]
    by_level = [numpy_bce(a, t) for a, t in zip(logits, pooled)]
    assert float(main) == pytest.approx(by_level[0], rel=1e-5)
    assert float(total) == pytest.approx((by_level[0] + by_level[1] / 2 + by_level[2] / 4) / 1.75, rel=1e-5)
    alone, same = deep_supervision_loss(bce, jnp.asarray(logits[0]), [], jnp.asarray(target))
    assert float(alone) == float(same) == float(main)
    with pytest.raises(ValueError, match="1/4 of its size"):
        deep_supervision_loss(bce, jnp.asarray(logits[0]), [jnp.asarray(logits[1]), jnp.asarray(logits[1])],
                              jnp.asarray(target))


@pytest.mark.parametrize("cls, shape", [(UNet, (2, 16, 16, 2)), (UNet3D, (1, 8, 8, 8, 2))])
def test_heads_give_coarser_logits_and_leave_the_forward_pass_unchanged(cls, shape):
    plain = cls(2, 3, FEATURES, rngs=nnx.Rngs(0))
    supervised = cls(2, 3, FEATURES, deep_supervision=2, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).normal(size=shape), jnp.float32)
    forward = nnx.jit(lambda model, x: model(x))
    logits, activations = forward(supervised, x)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(forward(plain, x)[0]))
    aux = nnx.jit(lambda model, activations: model.auxiliary_logits(activations))(supervised, activations)
    spatial = shape[1:-1]
    assert [a.shape for a in aux] == [(shape[0], *(s // 2 ** i for s in spatial), 3) for i in (1, 2)]
    assert plain.auxiliary_logits(activations) == [] and not hasattr(plain, "auxiliary_heads")
    with pytest.raises(ValueError, match="deep_supervision must be in"):
        cls(2, 3, FEATURES, deep_supervision=3, rngs=nnx.Rngs(0))


def test_a_train_step_trains_the_heads_and_reports_the_main_loss():
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, "model.features=[4, 8, 8]",
                                   "model.deep_supervision=1", "model.dropout=0.0"])
    mesh = mesh_of(1)
    tx = make_optimizer(cfg, 1)
    state = create_state(cfg, tx, mesh)
    before = jax.tree.map(np.asarray, state.params)
    batch = phantom_batch(cfg)
    model = nnx.merge(graphdef_of(cfg), state.params, state.batch_stats)
    logits, _ = model(jnp.asarray(batch["image"]), train=True)  # no dropout: the step's own forward
    target = jnp.asarray(batch["target"])
    expected = float(bce(logits, target)) + float(dice(logits, target))  # demo's loss: bce_dice
    step = make_train_step(graphdef_of(cfg), tx, cfg.train.loss, cfg.data.target)
    state, sums = step(state, put(batch, mesh))
    assert float(sums["loss_sum"] / sums["count"]) == pytest.approx(expected, rel=1e-4)
    head = before["auxiliary_heads"][0]["kernel"]
    assert np.any(np.asarray(state.params["auxiliary_heads"][0]["kernel"]) != head)


def test_the_config_refuses_more_levels_than_the_decoder_has():
    """(Restoring and predicting with heads: tests/test_bundled_model.py, whose bundled model has them.)"""
    with pytest.raises(JaxsegError, match="model.deep_supervision: must be at most 1"):
        config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, "model.features=[4, 8, 8]", "model.deep_supervision=2"])
