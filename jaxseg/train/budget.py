"""``train.budget_minutes``: fit the number of epochs and the learning-rate schedule to a time
budget ("train for 45 minutes"), and stop cleanly when it is spent.

The clock starts when ``train`` is called (reading the data counts, as the user waits for it) and
adds up over resumes (the time used is in every checkpoint's meta; the minutes between the last
checkpoint and a kill are lost, not counted). Before the first step of a new run:

1. **Measure.** A throwaway copy of the initial state takes one compiling train step and
   :data:`PROBE_STEPS` timed ones (reading their batches included) from a fresh iterator of the
   training data; the eval step takes a compiling and :data:`PROBE_STEPS` timed batches of the
   validation split. Nothing of this touches the run:
   the real state, the data order and the RNG keys are those of a run without a budget.
2. **Decide** (:func:`plan_epochs`): the most epochs whose steps and validations (every
   ``val_every_epochs``, and always after the last epoch) fit what is left of the budget, less
   :data:`MARGIN` for what the probe cannot see (cold data loading, checkpoints, figures). If not
   even one epoch fits, one shorter epoch. ``epochs * steps_per_epoch`` is the length of the
   learning-rate schedule (``warmup_cosine`` decays to its end value exactly at the last step).
3. **Record** the decision in the checkpoint meta (``meta["budget"]``): a resumed run keeps it
   and measures nothing.
4. **Stop.** If the run falls behind its plan (a busy machine), it stops when the budget less the
   end of one epoch is spent (the longer of the measured validation and the slowest epoch end so
   far: validation, logs, figure, checkpoint): that epoch ends early, is validated, logged and checkpointed (and may
   become the best model) like any other, and its record says ``stopped_by_budget``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data import pipeline

PROBE_STEPS = 5  # timed steps after the compiling one (each of train and eval; the fastest counts)
MARGIN = 0.05  # share of the remaining budget kept for what the probe does not measure
# The end of every epoch besides validation: metrics files, the training-curves figure, the
# checkpoint. Measured on 2 shared CPU cores: 0.9-1.1 s on the smoke config, 1.4-1.8 s on the
# demo config (validation included); orbax writes the checkpoint in the background.
EPOCH_OVERHEAD_SECONDS = 1.5


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """The decision, as recorded in ``meta["budget"]`` (seconds are wall-clock)."""

    budget_seconds: float
    epochs: int
    steps_per_epoch: int
    step_seconds: float  # one train step, measured
    validation_seconds: float  # one pass over the validation split (its loader's start included), estimated
    decided_after_seconds: float  # of the budget already used when deciding (data, compiles)

    @property
    def steps_total(self) -> int:
        """The schedule's length: every step the plan takes."""
        return self.epochs * self.steps_per_epoch

    def to_meta(self, seconds_used: float) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "steps_total": self.steps_total, "seconds_used": seconds_used}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "BudgetPlan":
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls)})


def validations(epochs: int, val_every: int) -> int:
    """Validation passes of ``epochs`` epochs: every ``val_every``-th, and after the last."""
    return epochs // val_every + (1 if epochs % val_every else 0)


def plan_epochs(remaining_seconds: float, step_seconds: float, validation_seconds: float,
                steps_per_epoch: int, val_every: int,
                epoch_overhead_seconds: float = EPOCH_OVERHEAD_SECONDS) -> tuple[int, int]:
    """``(epochs, steps_per_epoch)`` that fit ``remaining_seconds`` (already less the margin).

    The most whole epochs of ``steps_per_epoch`` steps whose steps, validations
    (:func:`validations`) and per-epoch overhead fit; when not even one does, one epoch of the
    steps that fit beside one validation (at least one step: a budget too small for anything
    still trains one step)."""
    step_seconds = max(step_seconds, 1e-6)

    def cost(e: int) -> float:
        return e * (steps_per_epoch * step_seconds + epoch_overhead_seconds) + validations(e, val_every) * validation_seconds

    epochs = 0
    while cost(epochs + 1) <= remaining_seconds:
        epochs += 1
    if epochs:
        return epochs, steps_per_epoch
    fit = math.floor((remaining_seconds - validation_seconds - epoch_overhead_seconds) / step_seconds)
    return 1, int(min(max(fit, 1), steps_per_epoch))


def _seconds_per_call(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """``(first, fastest of the next repeats)`` wall seconds of ``call()``, each waited for.

    The fastest, not the mean: the first batches of a fresh iterator prepare volumes (a one-time
    cost the run pays once, in its first epoch), which would otherwise count as every step's."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - started)
    return times[0], float(min(times[1:])) if repeats else times[0]


def measure(train_step: Callable, state: Any, train_batches: Iterator[dict], eval_step: Callable,
            val_batches: Iterator[dict] | None, val_batch_count: int) -> dict[str, float]:
    """Seconds of one train step (and of its compilation), and of one validation pass.

    ``train_batches`` and ``val_batches`` yield device batches from fresh iterators of the run's
    loaders (``val_batches`` None: no validation); a timed step includes reading its batch, as
    in the run. ``state`` is copied (``train_step`` donates its input; the run's state stays
    untouched)."""
    holder = {"state": jax.tree.map(jnp.copy, state)}

    def one_step():
        holder["state"], sums = train_step(holder["state"], next(train_batches))
        return sums

    first, step_seconds = _seconds_per_call(one_step, PROBE_STEPS)
    del holder["state"]
    validation_seconds = 0.0
    if val_batches is not None and val_batch_count:
        started = time.perf_counter()  # a validation pass starts its loader (grain's workers) anew
        taken = [next(val_batches)]
        startup = time.perf_counter() - started
        taken += [b for b in (next(val_batches, None) for _ in range(min(PROBE_STEPS, val_batch_count - 1)))
                  if b is not None]
        batches = iter(taken)
        _, per_batch = _seconds_per_call(lambda: eval_step(state, next(batches)), len(taken) - 1)
        validation_seconds = startup + per_batch * val_batch_count
    return {"step_seconds": step_seconds, "compile_seconds": max(first - step_seconds, 0.0),
            "validation_seconds": validation_seconds}


def decide(cfg: Any, train_step: Callable, eval_step: Callable, state: Any, train_loader: Any,
           val_loader: Any, val_batch_count: int, mesh: Any, steps_per_epoch: int,
           clock_started: float) -> BudgetPlan:
    """The plan of a new run: :func:`measure` on a copy of ``state`` with fresh iterators (the
    run's data order is not touched), then :func:`plan_epochs` on what is left of
    ``train.budget_minutes`` less :data:`MARGIN`. ``train_step`` is the loop's (provisional
    schedule); ``steps_per_epoch`` the configured epoch length."""
    t = cfg.train
    train_batches = pipeline.device_batches(iter(train_loader), mesh)
    val_batches = pipeline.device_batches(iter(val_loader), mesh) if val_loader is not None else None
    timing = measure(train_step, state, train_batches, eval_step, val_batches, val_batch_count)
    del train_batches, val_batches
    step_seconds, validation_seconds, compile_seconds, seconds_used = agree(
        [timing["step_seconds"], timing["validation_seconds"], timing["compile_seconds"],
         round(time.perf_counter() - clock_started, 2)])  # rounded as recorded
    budget_seconds = t.budget_minutes * 60.0
    # A rebuilt warmup_cosine schedule compiles the train step once more.
    left = budget_seconds - seconds_used - (compile_seconds if t.schedule == "warmup_cosine" else 0.0)
    epochs, epoch_steps = plan_epochs(left * (1 - MARGIN), step_seconds,
                                      validation_seconds if val_loader is not None else 0.0,
                                      steps_per_epoch, t.val_every_epochs, EPOCH_OVERHEAD_SECONDS)
    return BudgetPlan(budget_seconds=budget_seconds, epochs=epochs, steps_per_epoch=epoch_steps,
                      step_seconds=round(step_seconds, 4), validation_seconds=round(validation_seconds, 3),
                      decided_after_seconds=round(seconds_used, 2))


def describe(plan: BudgetPlan) -> str:
    """The decision in one line, for the user."""
    validation = f", a validation {plan.validation_seconds:.1f} s" if plan.validation_seconds else ""
    return (f"budget {plan.budget_seconds / 60:g} min: {plan.epochs} epoch{'s' if plan.epochs > 1 else ''} of "
            f"{plan.steps_per_epoch} steps ({plan.steps_total} steps, {plan.step_seconds:.3g} s a step{validation}), "
            f"decided after {plan.decided_after_seconds:.0f} s")


def agree(values: list[float]) -> list[float]:
    """Process 0's numbers on every process: a multi-host run must make one decision."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils
    return [float(v) for v in multihost_utils.broadcast_one_to_all(np.asarray(values, np.float64))]


class BudgetClock:
    """A running run's time budget (``plan`` None: no budget, never out of time).

    ``seconds_before``: what earlier sessions of a resumed run used; ``closing_seconds``: the
    longest end of an epoch so far (validation, logs, figure, save), which must still fit.
    """

    def __init__(self, plan: BudgetPlan | None, clock_started: float, seconds_before: float = 0.0,
                 closing_seconds: float = 0.0):
        self.plan, self.clock_started = plan, clock_started
        self.seconds_before, self.closing_seconds = seconds_before, closing_seconds

    @classmethod
    def resumed(cls, budget_meta: dict[str, Any], clock_started: float) -> "BudgetClock":
        """The clock of a run whose checkpoint meta holds ``meta["budget"]``."""
        return cls(BudgetPlan.from_meta(budget_meta), clock_started, budget_meta["seconds_used"],
                   budget_meta.get("closing_seconds", 0.0))

    def seconds_used(self) -> float:
        return self.seconds_before + time.perf_counter() - self.clock_started

    def out_of_time(self) -> bool:
        """Whether one more epoch's end would not fit; process 0's clock decides for all."""
        if self.plan is None:
            return False
        reserve = max(self.plan.validation_seconds, self.closing_seconds)
        return bool(agree([float(self.seconds_used() >= self.plan.budget_seconds - reserve)])[0])

    def closed_epoch(self, seconds: float) -> None:
        self.closing_seconds = round(max(self.closing_seconds, seconds), 3)

    def note(self, meta: dict[str, Any]) -> None:
        """Record the clock in ``meta["budget"]`` (before every checkpoint, so a resume goes on
        counting)."""
        if self.plan is not None:
            meta["budget"] = {**self.plan.to_meta(round(self.seconds_used(), 2)),
                              "closing_seconds": self.closing_seconds,
                              "stopped_at_step": meta.get("budget", {}).get("stopped_at_step")}
