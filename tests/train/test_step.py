"""The pure train step: runs, learns, and gives the same result on one device or several."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg import config as config_lib
from jaxseg.data import phantom
from jaxseg.train.state import create_state, graphdef_of, make_optimizer
from jaxseg.train.step import make_eval_step, make_train_step
from jaxseg.target import target_kind


def tiny_config(*overrides):
    return config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, *overrides])


def phantom_batch(cfg, batch=4, size=32, seed=0):
    """Axial slices through the middle of a phantom's tumor, min-max scaled per channel."""
    images, classes = [], []
    for i in range(batch):
        vols, labels = phantom.make_phantom(seed + i, shape=(size, size, 20))
        z = int(np.argmax((labels > 0).sum(axis=(0, 1))))
        stack = np.stack([vols[m][:, :, z] for m in config_lib.canonical_modalities(cfg)], -1)
        stack = stack / np.maximum(stack.max(axis=(0, 1), keepdims=True), 1e-6)
        images.append(stack.astype(np.float32))
        classes.append(labels[:, :, z])
    classes = np.stack(classes).astype(np.uint8)
    return {"image": np.stack(images), "target": target_kind(cfg.data.target).encode(classes),
            "classes": classes}


def put(batch, mesh):
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}


def mesh_of(n):
    return Mesh(np.array(jax.devices()[:n]), ("data",))


def run_steps(cfg, batch, mesh, steps):
    tx = make_optimizer(cfg, steps)
    state = create_state(cfg, tx, mesh)
    step = make_train_step(graphdef_of(cfg), tx, cfg.train.loss, cfg.data.target)
    losses = []
    for _ in range(steps):
        state, sums = step(state, put(batch, mesh))
        losses.append(float(sums["loss_sum"] / sums["count"]))
    return state, losses


def test_one_full_train_step_of_the_tiny_model():
    cfg = tiny_config()
    mesh = mesh_of(1)
    tx = make_optimizer(cfg, 1)
    state = create_state(cfg, tx, mesh)
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(graphdef_of(cfg), tx, cfg.train.loss, cfg.data.target)
    state, sums = step(state, put(phantom_batch(cfg), mesh))
    assert int(state.step) == 1
    assert np.isfinite(float(sums["loss_sum"])) and float(sums["count"]) == 4
    assert sums["tp"].shape == (3,)  # WT, TC, ET
    changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("target, loss", [("wt", "bce_dice"), ("regions", "dice_focal"), ("classes", "ce_dice")])
def test_loss_decreases_on_a_phantom_batch(target, loss):
    cfg = tiny_config(f"data.target={target}", f"train.loss={loss}", "model.features=[8, 16]",
                      "train.learning_rate=0.01")
    _, losses = run_steps(cfg, phantom_batch(cfg), mesh_of(1), 30)
    # Soft Dice of the small TC/ET regions at 32 px falls slowest; 20 % in 30 steps is learning.
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_sharded_step_on_two_devices_equals_the_single_device_step():
    cfg = tiny_config("model.dropout=0.0")
    batch = phantom_batch(cfg)
    one, losses_one = run_steps(cfg, batch, mesh_of(1), 3)
    two, losses_two = run_steps(cfg, batch, mesh_of(2), 3)
    np.testing.assert_allclose(losses_one, losses_two, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(one.batch_stats), jax.tree.leaves(two.batch_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_state_is_replicated_and_batch_is_split():
    cfg = tiny_config()
    mesh = mesh_of(2)
    tx = make_optimizer(cfg, 1)
    state = create_state(cfg, tx, mesh)
    for leaf in jax.tree.leaves(state.params):
        assert leaf.sharding.is_fully_replicated
    batch = put(phantom_batch(cfg), mesh)
    assert batch["image"].addressable_shards[0].data.shape[0] == 2


def test_eval_step_counts_only_valid_samples():
    cfg = tiny_config()
    mesh = mesh_of(1)
    tx = make_optimizer(cfg, 1)
    state = create_state(cfg, tx, mesh)
    eval_step = make_eval_step(graphdef_of(cfg), cfg.train.loss, cfg.data.target)
    batch = phantom_batch(cfg)
    full = jax.device_get(eval_step(state, put(batch, mesh)))
    half = dict(batch, valid=np.array([True, True, False, False]))
    first_two = {k: v[:2] for k, v in batch.items()}
    masked = jax.device_get(eval_step(state, put(half, mesh)))
    direct = jax.device_get(eval_step(state, put(first_two, mesh_of(1))))
    assert float(masked["count"]) == 2 and float(full["count"]) == 4
    for key in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(masked[key], direct[key])


def test_dropout_keys_differ_per_step_but_repeat_across_runs():
    cfg = tiny_config("model.dropout=0.5")
    batch = phantom_batch(cfg)
    a, losses_a = run_steps(cfg, batch, mesh_of(1), 2)
    b, losses_b = run_steps(cfg, batch, mesh_of(1), 2)
    assert losses_a == losses_b
    assert jnp.all(jax.random.fold_in(a.key, 0) != jax.random.fold_in(a.key, 1))


@pytest.mark.parametrize("overrides", [
    ("train.optimizer=adamw", "train.schedule=warmup_cosine", "train.warmup_steps=2", "train.clip_norm=1.0"),
    ("train.precision=bfloat16",),
    ("train.schedule=plateau", "train.warmup_steps=3"),
], ids=["adamw_cosine_clip", "bf16", "plateau_warmup"])
def test_optimizer_variants_learn(overrides):
    cfg = tiny_config(*overrides, "model.features=[8, 16]", "train.learning_rate=0.01")
    state, losses = run_steps(cfg, phantom_batch(cfg), mesh_of(1), 12)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))


def test_clipping_shrinks_the_first_update():
    """Adam's first step is about lr * sign(g) whatever the gradient's scale, unless the gradient
    is clipped below Adam's epsilon (1e-8): then the step shrinks by |g| / (|g| + eps)."""
    def largest_update(*overrides):
        cfg = tiny_config("train.learning_rate=0.001", *overrides)
        mesh = mesh_of(1)
        tx = make_optimizer(cfg, 1)
        state = create_state(cfg, tx, mesh)
        before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
        step = make_train_step(graphdef_of(cfg), tx, cfg.train.loss, cfg.data.target)
        state, sums = step(state, put(phantom_batch(cfg), mesh))
        return max(float(np.max(np.abs(np.asarray(b) - a))) for a, b in zip(before, jax.tree.leaves(state.params)))

    unclipped = largest_update()
    clipped = largest_update("train.clip_norm=1e-9")
    assert unclipped == pytest.approx(0.001, rel=0.05)
    assert clipped < 0.15 * 0.001
