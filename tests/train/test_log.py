"""The run log: metrics files, per-step losses, and training curves that never stop a run."""
import json

import pytest

from jaxseg.report import figures
from jaxseg.train.log import RunLog, read_step_losses

RECORD = {"epoch": 1, "step": 2, "train_loss": 0.9, "lr_scale": 1.0, "train_dice_WT": 0.4}


def test_an_epoch_writes_metrics_steps_and_curves(tmp_path):
    log = RunLog(tmp_path, show_progress=False)
    log.start(total_steps=4, done=0)
    log.step(1, 1.0, batch_size=2)
    log.step(2, 0.8, batch_size=2)
    log.epoch(RECORD, [RECORD])
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == RECORD
    assert read_step_losses(tmp_path) == [(1, 1.0), (2, 0.8)]
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    resumed = RunLog(tmp_path, show_progress=False)
    resumed.start(total_steps=4, done=1)  # a checkpoint at step 1: step 2 will be run again
    assert resumed.step_losses == [(1, 1.0)]


def test_a_failing_figure_warns_and_training_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("no fonts")

    monkeypatch.setattr(figures, "training_curves", broken)
    log = RunLog(tmp_path, show_progress=False)
    log.start(total_steps=2, done=0)
    log.step(1, 1.0, batch_size=2)
    with pytest.warns(RuntimeWarning, match="training_curves.png: not drawn .ValueError: no fonts"):
        log.epoch(RECORD, [RECORD])
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "training_curves.png").exists()


def test_other_processes_write_nothing(tmp_path):
    log = RunLog(tmp_path, show_progress=False, write_files=False)
    log.start(total_steps=2, done=0)
    log.step(1, 1.0, batch_size=2)
    log.epoch(RECORD, [RECORD])
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_steps_file_costs_only_its_bad_lines(tmp_path):
    (tmp_path / "steps.csv").write_text("step,loss\n1,0.5\n2,oops\n3\n4,0.25\n")
    assert read_step_losses(tmp_path) == [(1, 0.5), (4, 0.25)]
