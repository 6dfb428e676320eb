"""Training the 3D U-Net: one step, learning on phantom patches, and the loop on patches."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg import config as config_lib
from jaxseg.data import patches, phantom
from jaxseg.models.registry import spatial_dims
from jaxseg.train import loop
from jaxseg.train.state import create_state, graphdef_of, make_optimizer
from jaxseg.train.step import make_train_step
from jaxseg.target import target_kind

PATCH = 16


def tiny_3d(*overrides):
    cfg = config_lib.smoke(config_lib.load("brats2021_3d", ['data.root=""']))
    return config_lib.load_from_dict(config_lib.to_dict(cfg), overrides)


def phantom_patches(cfg, batch=2, seed=0):
    """Centre patches of the brain boxes of ``batch`` phantoms (as the patch loader cuts them)."""
    images, classes = [], []
    for i in range(batch):
        volumes, labels = phantom.make_phantom(seed + i, shape=(32, 32, 20))
        image = np.stack([volumes[m] for m in config_lib.canonical_modalities(cfg)], -1).astype(np.float32)
        prepared = patches.prepare_volume_3d(image, labels.astype(np.uint8), cfg.data)
        origin, _ = patches.place_patch(prepared, patches.PatchSpec(PATCH, "center"), np.random.default_rng(0))
        images.append(patches.cut_patch(prepared.image, origin, PATCH))
        classes.append(patches.cut_patch(prepared.classes, origin, PATCH))
    classes = np.stack(classes)
    assert classes.max() > 0  # the patches hold tumor
    return {"image": np.stack(images), "target": target_kind(cfg.data.target).encode(classes), "classes": classes}


def run_steps(cfg, batch, steps):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    tx = make_optimizer(cfg, steps)
    state = create_state(cfg, tx, mesh)
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(graphdef_of(cfg), tx, cfg.train.loss, cfg.data.target)
    sharding = NamedSharding(mesh, P("data"))
    losses = []
    for _ in range(steps):
        state, sums = step(state, {k: jax.device_put(v, sharding) for k, v in batch.items()})
        losses.append(float(sums["loss_sum"] / sums["count"]))
    return before, state, sums, losses


def test_the_3d_config_is_a_volume_model_with_smoke_sizes():
    cfg = tiny_3d()
    assert spatial_dims(cfg) == 3 and cfg.model.name == "unet3d"
    assert (cfg.data.patch_size, cfg.train.batch_size, cfg.model.features) == (PATCH, 2, (4, 8))
    full = config_lib.load("brats2021_3d")
    assert (full.data.patch_size, full.data.patch_mode, full.data.target, full.train.loss) == \
        (128, "center", "regions", "dice_focal")
    assert full.train.optimizer == "adamw" and full.train.schedule == "warmup_cosine" and full.model.dropout > 0


@pytest.mark.parametrize("target, loss", [("regions", "dice_focal"), ("classes", "ce_dice")])
def test_one_train_step_of_the_tiny_3d_model(target, loss):
    cfg = tiny_3d(f"data.target={target}", f"train.loss={loss}")
    before, state, sums, losses = run_steps(cfg, phantom_patches(cfg), 1)
    assert int(state.step) == 1 and np.isfinite(losses[0]) and float(sums["count"]) == 2
    assert sums["tp"].shape == (3,)  # scored on WT, TC, ET either way
    changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
    assert all(jax.tree.leaves(changed))


def test_loss_decreases_on_phantom_patches():
    cfg = tiny_3d("train.learning_rate=0.03", "model.dropout=0.0")
    _, _, _, losses = run_steps(cfg, phantom_patches(cfg), 10)
    # Dice + focal of WT/TC/ET on two 16^3 patches; a 3D step costs ~1 s on 2 CPU cores, so few
    # steps: about 10 % lower after 10 steps, falling throughout.
    assert losses[-1] < 0.93 * losses[0], losses
    assert np.mean(losses[-3:]) < np.mean(losses[3:6]) < np.mean(losses[:3]), losses


def test_the_loop_trains_a_3d_model_on_patches(smoke_run_3d):
    run = smoke_run_3d
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["step"] == 2  # smoke: 1 epoch of 2 steps (batch 4)
    assert np.isfinite(history[0]["train_loss"]) and 0 <= history[0]["val_dice"] <= 1
    assert {"val_dice_WT", "val_dice_TC", "val_dice_ET"} <= set(history[0])
    assert config_lib.load(run / "config.toml").model.name == "unet3d"
    assert any((run / "best").iterdir())
    # the patch store of the prepared 3D volumes, not slices, was built
    assert any((run / "cache" / "volumes3d").iterdir())


def test_train_smoke_flag_trains_the_config_at_its_smoke_size(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from jaxseg import cli
    seen = {}

    def fake_train(cfg, workdir, quiet=False):
        seen["cfg"] = cfg
        return loop.TrainResult(workdir, 0, 0.0, [])

    monkeypatch.setattr(loop, "train", fake_train)
    result = CliRunner().invoke(cli.app, ["train", "--config", "brats2021_3d", "--smoke", "--set", 'data.root=""',
                                          "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.data.patch_size, cfg.model.features, cfg.train.batch_size, cfg.data.root) == (PATCH, (4, 8), 2, "")
