"""The training loop end to end on phantoms: files, exact resume, NaN stop, predict."""
import json

import jax
import nibabel as nib
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError
from jaxseg.train import log as log_lib
from jaxseg.train import loop


def smoke(*overrides):
    return config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, *overrides])


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted smoke run shared by the tests below."""
    cfg = smoke("train.epochs=2", "train.steps_per_epoch=3", "model.dropout=0.2",
                "data.augment.intensity_scale=0.1", "data.augment.rot90=true")
    workdir = tmp_path_factory.mktemp("run")
    return cfg, loop.train(cfg, workdir, quiet=True)


def test_a_run_writes_its_files(trained):
    cfg, result = trained
    run = result.workdir
    assert result.steps == 6
    assert config_lib.load(run / "config.toml") == config_lib.load_from_dict(
        config_lib.to_dict(cfg), source="x")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_dice"] <= 1 for h in history)
    assert {"val_dice_WT", "val_dice_TC", "val_dice_ET"} <= set(history[0])
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_dice_WT" in header and len((run / "metrics.csv").read_text().splitlines()) == 3
    splits = json.loads((run / "splits.json").read_text())
    assert set(splits["train"]).isdisjoint(splits["val"])
    assert any((run / "best").iterdir()) and any((run / "checkpoints").iterdir())
    assert [s for s, _ in log_lib.read_step_losses(run)] == list(range(1, 7))
    assert (run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stopped_and_resumed_run_equals_uninterrupted_run(trained, tmp_path):
    cfg, uninterrupted = trained
    workdir = tmp_path / "resumed"
    first = loop.train(cfg, workdir, max_steps=4, quiet=True)  # stops inside epoch 2
    assert first.steps == 4
    resumed = loop.train(cfg, workdir, quiet=True)
    assert resumed.steps == 6
    for a, b in zip(leaves(uninterrupted.state), leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    assert [h["val_dice"] for h in resumed.history] == [h["val_dice"] for h in uninterrupted.history]
    # Every step's loss once, as in one go (the first run wrote steps 1-4, the second kept them).
    assert log_lib.read_step_losses(workdir) == log_lib.read_step_losses(uninterrupted.workdir)


def test_resuming_with_another_config_is_refused(trained):
    cfg, result = trained
    other = config_lib.load_from_dict(config_lib.to_dict(cfg), ["train.learning_rate=0.5"], source="x")
    with pytest.raises(JaxsegError, match=r"different config \(train.learning_rate differ from"):
        loop.train(other, result.workdir, quiet=True)


def test_a_finished_run_can_be_extended_by_more_epochs(trained, tmp_path):
    import shutil
    cfg, result = trained
    workdir = tmp_path / "extended"
    shutil.copytree(result.workdir, workdir)
    longer = config_lib.load_from_dict(config_lib.to_dict(cfg), ["train.epochs=3"], source="x")
    extended = loop.train(longer, workdir, quiet=True)
    assert extended.steps == 9 and [h["epoch"] for h in extended.history] == [1, 2, 3]


def test_nan_loss_stops_naming_the_step(tmp_path, monkeypatch):
    from jaxseg.train import step as step_lib
    real = step_lib.loss_fn

    def poisoned(name):
        base = real(name)
        return lambda logits, target, valid=None: base(logits, target, valid) * np.float32("nan")

    monkeypatch.setattr(step_lib, "loss_fn", poisoned)
    with pytest.raises(JaxsegError, match="loss is nan at step 1"):
        loop.train(smoke(), tmp_path / "nan", quiet=True)


def test_a_nan_batch_stops_at_its_step_and_is_never_checkpointed(tmp_path, monkeypatch):
    """The host fetches step sums in groups (no sync per step), yet the error names the exact
    step whose batch made the loss NaN, steps.csv holds the steps before it, and the newest
    checkpoint is the last one before it (a diverged state is never saved)."""
    import jax.numpy as jnp
    from jaxseg.train import checkpoint as checkpoint_lib
    real = loop.pipeline.device_batches
    bad_step = 5

    def poisoned(iterator, mesh):
        for number, batch in enumerate(real(iterator, mesh), start=1):
            yield dict(batch, image=batch["image"] * jnp.float32("nan")) if number == bad_step else batch

    monkeypatch.setattr(loop.pipeline, "device_batches", poisoned)
    cfg = smoke("train.epochs=1", "train.steps_per_epoch=8", "train.save_every_steps=3")
    workdir = tmp_path / "nan_batch"
    with pytest.raises(JaxsegError, match=f"loss is nan at step {bad_step} "):
        loop.train(cfg, workdir, quiet=True)
    assert [s for s, _ in log_lib.read_step_losses(workdir)] == list(range(1, bad_step))
    assert all(np.isfinite(loss) for _, loss in log_lib.read_step_losses(workdir))
    ckpts = checkpoint_lib.RunCheckpoints(workdir)
    assert ckpts.last.latest_step() == 3
    ckpts.close()


def test_predict_writes_the_input_geometry_and_labels(trained, tmp_path):
    from jaxseg.infer.predict import predict
    _, result = trained
    case = sorted((result.workdir / "phantoms").iterdir())[0]
    out = tmp_path / "seg.nii.gz"
    [prediction] = predict(case, result.workdir, out, probabilities=True)
    flair = nib.load(next(case.glob("*_flair.nii.gz")))
    seg = nib.load(out)
    assert seg.shape == flair.shape
    np.testing.assert_array_equal(seg.affine, flair.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    prob = nib.load(prediction.probabilities)
    assert prob.shape == (*flair.shape, 3)
    values = np.asarray(prob.dataobj)
    assert values.min() >= 0 and values.max() <= 1
    assert not list(tmp_path.glob(".*tmp*")), "a temporary file was left behind"


def test_reduce_on_plateau_scales_the_learning_rate_after_patience():
    from jaxseg.train.state import TrainState
    t = smoke("train.schedule=plateau", "train.plateau_patience=1", "train.plateau_factor=0.5").train
    state = TrainState(step=0, params={}, batch_stats={}, opt_state=(), key=0, lr_scale=np.float32(1.0))
    meta = {"plateau_bad_epochs": 0}
    scales = []
    for improved in (True, False, False, False, True, False, False):
        state = loop._plateau(state, meta, improved, t)
        scales.append(float(state.lr_scale))
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_only_a_validated_epoch_can_become_the_best_model(tmp_path):
    """Validation every 2nd epoch: epoch 3 is not validated and must not replace epoch 2's best."""
    cfg = smoke("train.epochs=3", "train.steps_per_epoch=2", "train.val_every_epochs=2")
    result = loop.train(cfg, tmp_path / "run", quiet=True)
    assert [("val_dice" in h) for h in result.history] == [False, True, False]
    best_steps = sorted(int(p.name) for p in (result.workdir / "best").iterdir() if p.name.isdigit())
    assert best_steps == [4]  # the end of epoch 2
