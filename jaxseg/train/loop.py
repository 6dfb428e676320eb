"""The training loop, top to bottom in data-flow order (CONTRIBUTING.md, habit 4).

:func:`train` reads as its sections, each one function below it in the same order: mesh
(:func:`_mesh`), input (:func:`_input`), model (graphdef and optimizer), shard and checkpoint
(:func:`_restore_or_init`), step (the jitted steps; the time budget, :func:`_budget`), loop (epochs
of :func:`_train_epoch`, each ended by evaluate, :func:`_evaluate_epoch`). Resume order: the
resolved config is checked against the run's, then the newest checkpoint restores the TrainState
(parameters, batch statistics, optimizer, step, RNG key, learning-rate scale), the train
iterator's position, and the host-side meta (epoch, position in the epoch, best Dice, plateau
counter, the epoch's running metric sums and seconds, the time-budget plan). Everything random
derives from ``train.seed`` and the step, so a run stopped and resumed ends with the same
parameters as an uninterrupted one; its logs are exact too: ``steps.csv`` is flushed before every
checkpoint and cut back to the restored step on resume, and an epoch resumed mid-way reports the
loss and Dice of all its steps. Step sums stay on the devices between fetches
(:mod:`jaxseg.train.running_sums`): a NaN loss stops the run naming its step, before any
checkpoint of a later step.

With ``train.budget_minutes`` the epochs and the schedule's length are decided before the first
step and kept by resumes (``jaxseg/train/budget.py``), and ``train.epochs`` is ignored.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxseg import config as config_lib
from jaxseg import overlap, target as target_lib
from jaxseg.config import Config
from jaxseg.data import formats, pipeline, split
from jaxseg.data import loader as loader_lib
from jaxseg.errors import JaxsegError
from jaxseg.files import write_text
from jaxseg.models import registry
from jaxseg.train import budget as budget_lib
from jaxseg.train import log as log_lib
from jaxseg.train import pretrained
from jaxseg.train.checkpoint import RunCheckpoints
from jaxseg.train.state import abstract_state, create_state, graphdef_of, make_optimizer
from jaxseg.train.running_sums import LOG_EVERY_STEPS, StepSums, sums_from_json, sums_to_json
from jaxseg.train.step import add_sums, make_eval_step, make_train_step


@dataclasses.dataclass
class TrainResult:
    workdir: Path
    steps: int
    best_dice: float
    history: list[dict[str, Any]]
    state: Any = None  # the final TrainState (for tests and notebooks)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-host run (``jax.distributed.initialize``); arguments not given come from the
    environment (cluster auto-detection on TPU/SLURM, or JAX_COORDINATOR_ADDRESS and friends)."""
    # CPU hosts need a collectives backend across processes; the setting only concerns the CPU
    # client, so GPU and TPU runs are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def train(cfg: Config, workdir: str | Path, *, max_steps: int | None = None, quiet: bool = False
          ) -> TrainResult:
    """Train ``cfg`` in ``workdir``, resuming from its newest checkpoint if there is one.

    ``max_steps`` stops early after that global step (checkpointing first), as an interruption
    would; running again resumes. Raises :class:`JaxsegError` on bad data or a NaN loss.

    Resume order: the config is checked against the run's (:func:`_check_same_config`); the
    inputs are rebuilt from the config (same split, same indices); the newest checkpoint
    restores the TrainState, the train iterator's position and the meta (:func:`_restore_or_init`);
    the budget clock continues from the meta (:func:`_budget`); ``steps.csv`` is cut back to the
    restored step (``RunLog.start``); the epoch loop resumes at ``meta["epoch"]``, step
    ``meta["step_in_epoch"]``, with that epoch's running sums and seconds.
    """
    clock_started = time.perf_counter()  # train.budget_minutes counts from here
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, workdir)
    t = cfg.train

    # --- mesh: every device of every process on one 'data' axis; parameters replicated.
    mesh = _mesh(cfg)
    # --- input: cases -> split -> sampled records -> grain loaders.
    data = _input(cfg, workdir, mesh)
    # --- model: its static structure and the optimizer (the schedule's length from the input).
    graphdef, tx = graphdef_of(cfg), make_optimizer(cfg, data.total_steps)
    # --- shard and checkpoint: restored into, or initialised straight into, replicated shardings.
    ckpts = RunCheckpoints(workdir, keep=t.keep_checkpoints)
    state, meta = _restore_or_init(cfg, tx, mesh, ckpts, data.train_iter)
    if jax.process_index() == 0:
        write_text(workdir / "config.toml", config_lib.dumps(cfg))
    # --- step: the pure jitted steps.
    train_step = make_train_step(graphdef, tx, t.loss, cfg.data.target)
    eval_step = make_eval_step(graphdef, t.loss, cfg.data.target)
    clock = _budget(cfg, meta, data, state, train_step, eval_step, mesh, clock_started)
    if clock.plan is not None and t.schedule == "warmup_cosine":  # its length matters: rebuild it
        tx = make_optimizer(cfg, data.total_steps)
        train_step = make_train_step(graphdef, tx, t.loss, cfg.data.target)

    # --- loop: epochs of steps, each ended by evaluate (validation, logs, checkpoint).
    primary = jax.process_index() == 0
    run = _Run(cfg, workdir, mesh, data, ckpts, clock, train_step, eval_step, max_steps,
               log_lib.RunLog(workdir, show_progress=primary and not quiet, write_files=primary),
               pipeline.device_batches(data.train_iter, mesh))
    step = int(jax.device_get(state.step))
    history: list[dict[str, Any]] = list(meta.get("history", []))
    run.logger.start(data.total_steps, step)
    if clock.plan is not None and not step:
        run.logger.say(budget_lib.describe(clock.plan))
    budget_stop = clock.plan is not None and meta.get("budget", {}).get("stopped_at_step") is not None
    try:
        for epoch in range(meta["epoch"], data.epochs if not budget_stop else meta["epoch"]):
            steps = _train_epoch(run, state, meta, history, epoch, step)
            state, step = steps.state, steps.step
            if steps.stopped:
                return _finish(run, step, meta, history, state)
            # With no time for another epoch, this one is the last: validate it.
            budget_stop = steps.budget_stop or (epoch + 1 < data.epochs and clock.out_of_time())
            state = _evaluate_epoch(run, state, meta, history, epoch, step, steps, budget_stop)
            if budget_stop or (max_steps is not None and step >= max_steps):
                break
    except BaseException:
        ckpts.wait()  # a stop (NaN, Ctrl-C) lets a checkpoint being written finish
        raise
    finally:
        run.logger.close()
    return _finish(run, step, meta, history, state)


@dataclasses.dataclass
class _Inputs:
    train_loader: Any
    val_loader: Any  # None without a validation split
    train_iter: Any  # the train loader's iterator: its position is checkpointed
    steps_per_epoch: int
    val_batch_count: int
    epochs: int
    total_steps: int


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every epoch of a run uses, fixed once the run has started."""
    cfg: Config
    workdir: Path
    mesh: Any
    data: _Inputs
    ckpts: RunCheckpoints
    clock: budget_lib.BudgetClock
    train_step: Callable
    eval_step: Callable
    max_steps: int | None
    logger: log_lib.RunLog
    batches: Any  # device batches of data.train_iter, across epochs


class _EpochSteps(NamedTuple):
    state: Any
    step: int
    sums: dict[str, Any] | None  # the epoch's running sums (host)
    started: float  # perf_counter at the epoch's start (earlier sessions' seconds included)
    budget_stop: bool  # stopped early by the budget
    stopped: bool  # stopped by max_steps mid-epoch (checkpointed): the run returns


def _mesh(cfg: Config) -> Any:
    mesh = pipeline.make_mesh()
    if cfg.train.batch_size % mesh.size:
        raise JaxsegError(f"train.batch_size = {cfg.train.batch_size} must be divisible by the number of "
                          f"devices ({mesh.size})")
    return mesh


def _input(cfg: Config, workdir: Path, mesh: Any) -> _Inputs:
    """Cases -> subject-level split (``splits.json``) -> the records the model samples (2D slices
    or 3D patches, jaxseg/data/formats) -> grain loaders."""
    data_format = formats.of_config(cfg)
    cases = data_format.find_cases(cfg, workdir)
    splits = split.split_cases([c.case_id for c in cases], cfg.data.split, cfg.data.split_seed,
                               cfg.data.val_cases, cfg.data.test_cases, subjects=data_format.subjects(cases))
    if jax.process_index() == 0:
        split.save_manifest(splits, workdir / "splits.json", seed=cfg.data.split_seed,
                            ratios=list(cfg.data.split))
    by_id = {c.case_id: c for c in cases}
    train_loader, val_loader, steps_per_epoch, val_batch_count = loader_lib.train_val_loaders(
        cfg, formats.sampling(registry.spatial_dims(cfg)), [by_id[i] for i in splits["train"]],
        [by_id[i] for i in splits["val"]], mesh, workdir / "cache")
    epochs = cfg.train.epochs
    return _Inputs(train_loader, val_loader, iter(train_loader), steps_per_epoch, val_batch_count,
                   epochs, epochs * steps_per_epoch)


def _restore_or_init(cfg: Config, tx: Any, mesh: Any, ckpts: RunCheckpoints, train_iter: Any
                     ) -> tuple[Any, dict[str, Any]]:
    """The newest checkpoint (state, iterator position, meta) restored into the abstract state's
    replicated shardings; without one, a new state initialised straight into them (then the
    pretrained weights of ``model.pretrained``) and a fresh meta."""
    restored = ckpts.restore_latest(abstract_state(cfg, tx, mesh), train_iter)
    if restored is not None:
        return restored
    state = create_state(cfg, tx, mesh)
    if cfg.model.pretrained:  # a new run that starts from imported or earlier weights
        state = pretrained.apply_pretrained(cfg, state, tx, mesh)
    return state, {"epoch": 0, "step_in_epoch": 0, "best_dice": -1.0, "plateau_bad_epochs": 0, "history": []}


def _budget(cfg: Config, meta: dict[str, Any], data: _Inputs, state: Any, train_step: Callable,
            eval_step: Callable, mesh: Any, clock_started: float) -> budget_lib.BudgetClock:
    """``train.budget_minutes``: the plan decided once (measured on a copy of the state) or kept
    from the meta of a resumed run; it sets ``data``'s epochs and epoch length."""
    if not cfg.train.budget_minutes:
        return budget_lib.BudgetClock(None, clock_started)
    if "budget" in meta:
        clock = budget_lib.BudgetClock.resumed(meta["budget"], clock_started)
    else:
        clock = budget_lib.BudgetClock(budget_lib.decide(
            cfg, train_step, eval_step, state, data.train_loader, data.val_loader, data.val_batch_count,
            mesh, data.steps_per_epoch, clock_started), clock_started)
    plan = clock.plan
    data.epochs, data.steps_per_epoch, data.total_steps = plan.epochs, plan.steps_per_epoch, plan.steps_total
    return clock


def _train_epoch(run: _Run, state: Any, meta: dict[str, Any], history: list[dict[str, Any]], epoch: int,
                 step: int) -> _EpochSteps:
    """The train steps of one epoch (from ``meta["step_in_epoch"]`` when resuming into it), with
    the mid-epoch checkpoints of ``train.save_every_steps`` and ``max_steps``."""
    t, data = run.cfg.train, run.data
    first = meta["step_in_epoch"] if epoch == meta["epoch"] else 0
    # A run resumed mid-epoch continues the epoch's running sums and clock from the checkpoint,
    # so the epoch's loss, Dice and seconds cover all of its steps.
    sums = sums_from_json(meta.get("epoch_sums")) if first else None
    started = time.perf_counter() - (float(meta.get("epoch_seconds", 0.0)) if first else 0.0)
    pending = StepSums(epoch, sums)
    for i in range(first, data.steps_per_epoch):
        state, step_sums = run.train_step(state, next(run.batches))
        step += 1
        pending.add(step, step_sums)  # stays on the devices: no host sync per step
        last_of_epoch = i + 1 == data.steps_per_epoch
        # Multi-host runs agree on the clock with a collective: ask every 10 steps only.
        if not last_of_epoch and (jax.process_count() == 1 or step % 10 == 0) and run.clock.out_of_time():
            # behind the plan: end this epoch here, cleanly
            return _EpochSteps(state, step, pending.fetch(run.logger, t.batch_size), started, True, False)
        stopping = run.max_steps is not None and step >= run.max_steps
        saving = not last_of_epoch and (stopping or (t.save_every_steps and step % t.save_every_steps == 0))
        if saving or len(pending) >= LOG_EVERY_STEPS:
            sums = pending.fetch(run.logger, t.batch_size)  # raises on a NaN loss, naming its step
        if saving:
            meta.update(epoch=epoch, step_in_epoch=i + 1, history=history, epoch_sums=sums_to_json(sums),
                        epoch_seconds=round(time.perf_counter() - started, 3))
            # steps.csv first: a kill before the checkpoint lands leaves rows beyond the restored
            # step, which the resumed run drops; the other order would lose rows.
            run.logger.flush_steps()
            run.clock.note(meta)
            run.ckpts.save(state, data.train_iter, meta, best=False)
        if stopping and not last_of_epoch:
            return _EpochSteps(state, step, sums, started, False, True)
    return _EpochSteps(state, step, pending.fetch(run.logger, t.batch_size), started, False, False)


def _evaluate_epoch(run: _Run, state: Any, meta: dict[str, Any], history: list[dict[str, Any]],
                    epoch: int, step: int, steps: _EpochSteps, budget_stop: bool) -> Any:
    """The end of an epoch: its record (train sums, validation when due), the best model,
    reduce-on-plateau, the logs and the epoch's checkpoint. Returns the state (its
    learning-rate scale may change)."""
    t, data, sums = run.cfg.train, run.data, steps.sums
    region_names = target_lib.target_for(run.cfg).region_names
    closing_started = time.perf_counter()
    record: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                              "train_loss": float(sums["loss_sum"] / max(sums["count"], 1)),
                              "lr_scale": float(jax.device_get(state.lr_scale)),
                              "seconds": round(time.perf_counter() - steps.started, 2)}
    record.update(_prefixed("train", overlap.scores_from_sums(sums), region_names))
    val_dice = None
    if budget_stop:
        record["stopped_by_budget"] = True
    last_epoch = run.clock.plan is not None and (epoch + 1 == data.epochs or budget_stop)
    if data.val_loader is not None and ((epoch + 1) % t.val_every_epochs == 0 or last_epoch):
        val = evaluate(state, run.eval_step, data.val_loader, run.mesh)
        record["val_loss"] = float(val["loss_sum"] / max(val["count"], 1))
        scores = overlap.scores_from_sums(val)
        record.update(_prefixed("val", scores, region_names))
        val_dice = float(np.mean(scores["dice"]))
        record["val_dice"] = val_dice
    # The best model is chosen by validation Dice, so only a validated epoch can replace it; a
    # run without a validation split keeps its newest epoch as "best".
    improved = val_dice > meta["best_dice"] if val_dice is not None else data.val_loader is None
    if improved and val_dice is not None:
        meta["best_dice"] = val_dice
    if t.schedule == "plateau" and val_dice is not None:
        state = _plateau(state, meta, improved, t)
    history.append(record)
    run.logger.epoch(record, history)
    meta.update(epoch=epoch + 1, step_in_epoch=0, history=history, epoch_sums=None, epoch_seconds=0.0)
    run.clock.closed_epoch(time.perf_counter() - closing_started)
    run.clock.note(meta)
    if budget_stop:
        meta["budget"]["stopped_at_step"] = step
    run.ckpts.save(state, data.train_iter, meta, best=improved)
    return state


def evaluate(state: Any, eval_step: Callable, loader: Any, mesh: Any) -> dict[str, np.ndarray]:
    """Sums of the eval step over one pass of ``loader`` (padding excluded by ``valid``)."""
    total = None
    for batch in pipeline.device_batches(iter(loader), mesh):
        total = add_sums(total, eval_step(state, batch))
    if total is None:
        raise JaxsegError("the validation split has no slices")
    return total


def _plateau(state: Any, meta: dict[str, Any], improved: bool, t: config_lib.TrainConfig) -> Any:
    """Reduce-on-plateau on validation Dice: scale the learning rate after ``patience`` epochs
    without improvement (as torch's ReduceLROnPlateau in mode 'max')."""
    meta["plateau_bad_epochs"] = 0 if improved else meta["plateau_bad_epochs"] + 1
    if meta["plateau_bad_epochs"] > t.plateau_patience:
        meta["plateau_bad_epochs"] = 0
        return state.replace(lr_scale=state.lr_scale * t.plateau_factor)
    return state


def _prefixed(prefix: str, scores: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, float]:
    return {f"{prefix}_{metric}_{name}": round(float(values[i]), 5)
            for metric, values in scores.items() for i, name in enumerate(names)}


def _finish(run: _Run, step: int, meta: dict[str, Any], history: list[dict[str, Any]], state: Any
            ) -> TrainResult:
    run.ckpts.wait()
    run.ckpts.close()
    run.logger.close()
    return TrainResult(run.workdir, step, float(meta["best_dice"]), history, state)


# Settings a resumed run may change: they decide how long to go on and how often to save or
# validate, not what the steps computed so far mean. (With warmup_cosine, more epochs stretch the
# remaining schedule.)
_RESUMABLE_CHANGES = ("epochs", "save_every_steps", "keep_checkpoints", "val_every_epochs", "calibrate")


def _check_same_config(cfg: Config, workdir: Path) -> None:
    """Refuse to resume a run folder with a different config (it would silently mix runs)."""
    saved = workdir / "config.toml"
    if saved.is_file() and (workdir / "checkpoints").is_dir():
        previous = config_lib.load(saved)
        keep = {k: getattr(cfg.train, k) for k in _RESUMABLE_CHANGES}
        previous = dataclasses.replace(previous, name=cfg.name,
                                       train=dataclasses.replace(previous.train, **keep))
        if previous != cfg:
            changed = _differences(config_lib.to_dict(previous), config_lib.to_dict(cfg))
            raise JaxsegError(f"{workdir}: holds a run with a different config ({', '.join(changed)} "
                              f"differ from {saved}); use a new --workdir, or the same config to resume")


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in a:
        if isinstance(a[key], dict):
            out += _differences(a[key], b[key], f"{prefix}{key}.")
        elif a[key] != b[key]:
            out.append(prefix + key)
    return out


def load_history(workdir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (``metrics.jsonl``)."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
