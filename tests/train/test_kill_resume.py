"""A run killed with SIGKILL mid-epoch and resumed keeps exact logs: every step's loss once in
steps.csv, and each epoch's training loss and Dice over all of its steps, as in one go."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.train import log as log_lib
from jaxseg.train import loop

WORKER = Path(__file__).with_name("kill_worker.py")
# 5 steps per epoch, a checkpoint every 3: saves at 3 (mid epoch 1), 5, 6 (mid epoch 2), 9, 10.
OVERRIDES = ["train.epochs=2", "train.steps_per_epoch=5", "train.save_every_steps=3", "model.dropout=0.2",
             "data.augment.intensity_scale=0.1"]


def run_until_killed(workdir: Path, kill_at: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, str(WORKER), str(workdir), kill_at, *OVERRIDES], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]


def latest_checkpoint(workdir: Path) -> int:
    return max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_logs_after_sigkill_and_resume_equal_an_uninterrupted_run(tmp_path):
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, *OVERRIDES])
    whole = loop.train(cfg, tmp_path / "whole", quiet=True)
    workdir = tmp_path / "killed"

    # Killed at step 4, after the mid-epoch checkpoint of step 3: steps.csv holds steps 1-3
    # (before, it was written at epoch end only and held nothing).
    run_until_killed(workdir, "step:4")
    assert latest_checkpoint(workdir) == 3
    assert [s for s, _ in log_lib.read_step_losses(workdir)] == [1, 2, 3]

    # Resumed, then killed inside the save of step 9, after steps.csv was flushed (1-9) but
    # before the checkpoint: the next resume restores step 6 and must drop rows 7-9.
    run_until_killed(workdir, "save:9")
    assert latest_checkpoint(workdir) == 6
    assert [s for s, _ in log_lib.read_step_losses(workdir)] == list(range(1, 10))

    resumed = loop.train(cfg, workdir, quiet=True)
    assert resumed.steps == whole.steps == 10
    for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    ours, theirs = log_lib.read_step_losses(workdir), log_lib.read_step_losses(whole.workdir)
    assert [s for s, _ in ours] == list(range(1, 11))
    np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], rtol=1e-6)

    # Both epochs were resumed mid-way; their training metrics still cover all five steps.
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == len(whole.history) == 2
    for got, want in zip(history, whole.history):
        train_keys = [k for k in want if k.startswith("train_")]
        assert len(train_keys) > 3 and "train_dice_WT" in train_keys
        for key in [*train_keys, "val_dice", "step", "epoch"]:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key
    # The epoch loss is the mean of its steps' losses (equal batches): an independent check.
    losses = np.array([v for _, v in ours])
    for epoch, record in enumerate(history):
        assert record["train_loss"] == pytest.approx(losses[5 * epoch:5 * epoch + 5].mean(), rel=1e-5)
