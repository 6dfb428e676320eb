"""train.budget_minutes: the decision (epochs, schedule length) against hand arithmetic, a smoke
run that keeps to its plan, one that falls behind and stops cleanly, and resumes that keep the
decision. The probe's timings are replaced by fixed numbers where the test needs a known plan;
wall-clock times are only checked loosely."""
import json
import math
from pathlib import Path

import pytest

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError
from jaxseg.train import budget as budget_lib
from jaxseg.train import loop


def smoke(*overrides):
    return config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, "train.schedule=warmup_cosine",
                                    "train.warmup_steps=1", *overrides])


def latest_meta(workdir: Path) -> dict:
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    return json.loads((workdir / "checkpoints" / str(max(steps)) / "meta" / "metadata").read_text())


@pytest.fixture
def schedule_lengths(monkeypatch):
    """Every ``steps_total`` the loop builds an optimizer with, in order."""
    lengths = []
    real = loop.make_optimizer

    def spy(cfg, steps_total):
        lengths.append(steps_total)
        return real(cfg, steps_total)

    monkeypatch.setattr(loop, "make_optimizer", spy)
    return lengths


def fixed_timing(monkeypatch, step_seconds, validation_seconds):
    calls = []

    def measure(*args, **kwargs):
        calls.append(1)
        return {"step_seconds": step_seconds, "validation_seconds": validation_seconds, "compile_seconds": 0.0}

    monkeypatch.setattr(budget_lib, "measure", measure)
    return calls


def test_plan_against_hand_arithmetic():
    # 10 steps of 1 s and a 5 s validation per epoch, no overhead: 6 epochs in 100 s (90 s for 6).
    assert budget_lib.plan_epochs(100, 1.0, 5.0, 10, 1, epoch_overhead_seconds=0) == (6, 10)
    # Validating every 2nd epoch (and after the last): 8 epochs cost 80 + 4 * 5 = 100 s; 9 cost 115.
    assert budget_lib.plan_epochs(100, 1.0, 5.0, 10, 2, epoch_overhead_seconds=0) == (8, 10)
    assert [budget_lib.validations(e, 2) for e in (1, 2, 3, 8, 9)] == [1, 1, 2, 4, 5]
    # With 1 s of overhead per epoch: 16 s an epoch, 6 epochs (96 s); with 2 s, 17 s and 5.
    assert budget_lib.plan_epochs(100, 1.0, 5.0, 10, 1, epoch_overhead_seconds=1) == (6, 10)
    assert budget_lib.plan_epochs(100, 1.0, 5.0, 10, 1, epoch_overhead_seconds=2) == (5, 10)
    # Not one epoch fits: one shorter epoch of the steps beside a validation, at least one step.
    assert budget_lib.plan_epochs(7, 1.0, 2.0, 10, 1, epoch_overhead_seconds=0) == (1, 5)
    assert budget_lib.plan_epochs(-30, 1.0, 2.0, 10, 1) == (1, 1)


def test_budget_minutes_is_validated():
    for value in ("-1", "nan", "inf"):
        with pytest.raises(JaxsegError, match=r"train.budget_minutes: must be a positive number of minutes"):
            smoke(f"train.budget_minutes={value}")
    assert smoke("train.budget_minutes=45").train.budget_minutes == 45.0


def test_a_run_keeps_to_its_plan_and_a_resume_keeps_the_plan(tmp_path, monkeypatch, schedule_lengths):
    # The probe is told steps take 2 s and a validation 2 s; the real smoke steps are far faster,
    # so the run finishes its plan well inside the budget.
    calls = fixed_timing(monkeypatch, step_seconds=2.0, validation_seconds=2.0)
    cfg = smoke("train.budget_minutes=1", "train.epochs=1000")  # epochs is ignored with a budget
    workdir = tmp_path / "run"
    first = loop.train(cfg, workdir, max_steps=3, quiet=True)  # an interruption inside the plan
    plan = latest_meta(workdir)["budget"]
    remaining = (60.0 - plan["decided_after_seconds"]) * (1 - budget_lib.MARGIN)
    # 2 steps per epoch (smoke): 2 * 2 s + 2 s of validation + the overhead, 7.5 s an epoch.
    epochs = math.floor(remaining / (2 * 2.0 + 2.0 + budget_lib.EPOCH_OVERHEAD_SECONDS))
    assert budget_lib.plan_epochs(remaining, 2.0, 2.0, 2, 1)[0] == epochs
    assert epochs >= 2 and plan["epochs"] == epochs and plan["steps_per_epoch"] == 2
    assert plan["steps_total"] == 2 * epochs
    assert schedule_lengths[-1] == plan["steps_total"]  # the schedule is as long as the plan
    assert first.steps == 3 and calls == [1]

    resumed = loop.train(cfg, workdir, quiet=True)
    assert calls == [1], "a resume measured again instead of keeping the decision"
    assert schedule_lengths[-1] == plan["steps_total"]
    assert resumed.steps == plan["steps_total"]
    assert [h["epoch"] for h in resumed.history] == list(range(1, epochs + 1))
    assert "val_dice" in resumed.history[-1] and not any(h.get("stopped_by_budget") for h in resumed.history)
    final = latest_meta(workdir)["budget"]
    assert {k: final[k] for k in ("epochs", "steps_total")} == {k: plan[k] for k in ("epochs", "steps_total")}
    assert plan["seconds_used"] <= final["seconds_used"] < 60.0


def test_a_run_behind_its_plan_stops_cleanly_at_the_budget(tmp_path, monkeypatch, schedule_lengths):
    # The probe is told steps and epochs are nearly free: the plan has far more epochs than 12 s allow.
    fixed_timing(monkeypatch, step_seconds=1e-4, validation_seconds=1e-4)
    monkeypatch.setattr(budget_lib, "EPOCH_OVERHEAD_SECONDS", 0.0)
    cfg = smoke("train.budget_minutes=0.2")
    workdir = tmp_path / "run"
    result = loop.train(cfg, workdir, quiet=True)
    budget = latest_meta(workdir)["budget"]
    assert result.steps < budget["steps_total"] == schedule_lengths[-1]
    assert budget["stopped_at_step"] == result.steps
    last = result.history[-1]
    assert last["stopped_by_budget"] and last["step"] == result.steps and "val_dice" in last
    assert not any(h.get("stopped_by_budget") for h in result.history[:-1])
    assert any((workdir / "best").iterdir())
    assert 0.2 * 60 - 5 < budget["seconds_used"] < 0.2 * 60 + 30  # loosely: it ran until the budget

    again = loop.train(cfg, workdir, quiet=True)  # a spent budget trains no further
    assert again.steps == result.steps and len(again.history) == len(result.history)


def test_the_real_probe_times_the_steps_and_leaves_the_run_unchanged(tmp_path):
    """No stand-in for ``measure``: the plan's timings are real, positive and finite, and the
    run trained from the probe's state copy ends like a run without a budget of the same steps."""
    import numpy as np
    budgeted = loop.train(smoke("train.budget_minutes=0.5"), tmp_path / "budget", quiet=True)
    plan = latest_meta(tmp_path / "budget")["budget"]
    assert 0 < plan["step_seconds"] < 30 and 0 < plan["validation_seconds"] < 60
    assert all(math.isfinite(plan[k]) for k in ("step_seconds", "validation_seconds"))
    assert budgeted.steps == plan["steps_total"] or plan.get("stopped_at_step") == budgeted.steps
    # The same number of epochs without a budget (warmup_cosine is not the smoke schedule, so the
    # schedule is the same): the probe must not have moved the state or the data order.
    epochs = budgeted.steps // plan["steps_per_epoch"]
    if budgeted.steps % plan["steps_per_epoch"]:
        pytest.skip("the budgeted run stopped mid-epoch (a slow machine); nothing to compare")
    plain = loop.train(smoke(f"train.epochs={epochs}"), tmp_path / "plain", quiet=True)
    assert plain.steps == budgeted.steps
    np.testing.assert_allclose([h["train_loss"] for h in plain.history],
                               [h["train_loss"] for h in budgeted.history], rtol=1e-6)
