"""The training loop, top to bottom in data-flow order (CONTRIBUTING.md, habit 4).

Sections: distributed set-up, mesh, input, model and optimizer, checkpoints (resume), steps,
evaluate, loop. Resume order: the resolved config is checked against the run's, then the newest
checkpoint restores the TrainState (parameters, batch statistics, optimizer, step, RNG key,
learning-rate scale), the train iterator's position, and the host-side meta (epoch, position in
the epoch, best Dice, plateau counter, the epoch's running metric sums and seconds, the time-budget
plan). Everything random derives from ``train.seed`` and the step, so a run stopped and resumed
ends with the same parameters as an uninterrupted one; its logs are exact too: ``steps.csv`` is
flushed before every checkpoint and cut back to the restored step on resume, and an epoch resumed
mid-way reports the loss and Dice of all its steps.

With ``train.budget_minutes`` the epochs and the schedule's length are decided before the first
step and kept by resumes (``jaxseg/train/budget.py``), and ``train.epochs`` is ignored.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

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
    """
    clock_started = time.perf_counter()  # train.budget_minutes counts from here
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, workdir)

    # --- mesh: every device of every process on one 'data' axis; parameters replicated.
    mesh = pipeline.make_mesh()
    t = cfg.train
    if t.batch_size % mesh.size:
        raise JaxsegError(f"train.batch_size = {t.batch_size} must be divisible by the number of "
                          f"devices ({mesh.size})")

    # --- input: cases -> subject-level split -> the records the model samples (2D slices or 3D
    # patches, jaxseg/data/formats) -> grain loaders.
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
    epochs, total_steps = t.epochs, t.epochs * steps_per_epoch
    train_iter = iter(train_loader)

    # --- model and optimizer, initialised straight into replicated shardings.
    tx = make_optimizer(cfg, total_steps)
    graphdef = graphdef_of(cfg)
    ckpts = RunCheckpoints(workdir, keep=t.keep_checkpoints)
    meta = {"epoch": 0, "step_in_epoch": 0, "best_dice": -1.0, "plateau_bad_epochs": 0, "history": []}
    restored = ckpts.restore_latest(abstract_state(cfg, tx, mesh), train_iter)
    if restored is None:
        state = create_state(cfg, tx, mesh)
        if cfg.model.pretrained:  # a new run that starts from imported or earlier weights
            state = pretrained.apply_pretrained(cfg, state, tx, mesh)
    else:
        state, meta = restored
    if jax.process_index() == 0:
        write_text(workdir / "config.toml", config_lib.dumps(cfg))

    # --- steps.
    train_step = make_train_step(graphdef, tx, t.loss, cfg.data.target)
    eval_step = make_eval_step(graphdef, t.loss, cfg.data.target)

    # --- time budget: decided once (measured on a copy of the state), kept by every resume.
    plan, seconds_before = None, 0.0
    closing = {"seconds": 0.0}  # the longest end of an epoch so far (validation, logs, figure, save)
    if t.budget_minutes:
        if "budget" in meta:
            plan, seconds_before = budget_lib.BudgetPlan.from_meta(meta["budget"]), meta["budget"]["seconds_used"]
            closing["seconds"] = meta["budget"].get("closing_seconds", 0.0)
        else:
            plan = budget_lib.decide(cfg, train_step, eval_step, state, train_loader, val_loader,
                                     val_batch_count, mesh, steps_per_epoch, clock_started)
        epochs, steps_per_epoch, total_steps = plan.epochs, plan.steps_per_epoch, plan.steps_total
        if t.schedule == "warmup_cosine":  # the one schedule whose length matters: rebuild it
            tx = make_optimizer(cfg, total_steps)
            train_step = make_train_step(graphdef, tx, t.loss, cfg.data.target)

    def seconds_used() -> float:
        return seconds_before + time.perf_counter() - clock_started

    def out_of_time() -> bool:  # the end of one epoch must still fit; process 0's clock decides for all
        if plan is None:
            return False
        reserve = max(plan.validation_seconds, closing["seconds"])
        return bool(budget_lib.agree([float(seconds_used() >= plan.budget_seconds - reserve)])[0])

    def note_budget() -> None:  # before every checkpoint, so a resume goes on counting
        if plan is not None:
            meta["budget"] = {**plan.to_meta(round(seconds_used(), 2)), "closing_seconds": closing["seconds"],
                              "stopped_at_step": meta.get("budget", {}).get("stopped_at_step")}

    batches = pipeline.device_batches(train_iter, mesh)
    primary = jax.process_index() == 0
    logger = log_lib.RunLog(workdir, show_progress=primary and not quiet, write_files=primary)
    region_names = target_lib.target_for(cfg).region_names

    # --- loop.
    step = int(jax.device_get(state.step))
    history: list[dict[str, Any]] = list(meta.get("history", []))
    logger.start(total_steps, step)
    if plan is not None and not step:
        logger.say(budget_lib.describe(plan))
    budget_stop = plan is not None and meta.get("budget", {}).get("stopped_at_step") is not None
    try:
        for epoch in range(meta["epoch"], epochs if not budget_stop else meta["epoch"]):
            first = meta["step_in_epoch"] if epoch == meta["epoch"] else 0
            # A run resumed mid-epoch continues the epoch's running sums and clock from the
            # checkpoint, so the epoch's loss, Dice and seconds cover all of its steps.
            sums = sums_from_json(meta.get("epoch_sums")) if first else None
            started = time.perf_counter() - (float(meta.get("epoch_seconds", 0.0)) if first else 0.0)
            for i in range(first, steps_per_epoch):
                state, step_sums = train_step(state, next(batches))
                step += 1
                step_sums = jax.device_get(step_sums)
                loss = float(step_sums["loss_sum"] / max(step_sums["count"], 1))
                if not math.isfinite(loss):
                    raise JaxsegError(f"training diverged: the loss is {loss} at step {step} (epoch "
                                      f"{epoch + 1}); try a lower train.learning_rate or train.clip_norm")
                sums = add_sums(sums, step_sums)
                logger.step(step, loss, t.batch_size)
                last_of_epoch = i + 1 == steps_per_epoch
                # Multi-host runs agree on the clock with a collective: ask every 10 steps only.
                if not last_of_epoch and (jax.process_count() == 1 or step % 10 == 0) and out_of_time():
                    budget_stop = True  # behind the plan: end this epoch here, cleanly
                    break
                stopping = max_steps is not None and step >= max_steps
                if not last_of_epoch and (stopping or (t.save_every_steps and step % t.save_every_steps == 0)):
                    meta.update(epoch=epoch, step_in_epoch=i + 1, history=history,
                                epoch_sums=sums_to_json(sums),
                                epoch_seconds=round(time.perf_counter() - started, 3))
                    # steps.csv first: a kill before the checkpoint lands leaves rows beyond the
                    # restored step, which the resumed run drops; the other order would lose rows.
                    logger.flush_steps()
                    note_budget()
                    ckpts.save(state, train_iter, meta, best=False)
                if stopping and not last_of_epoch:
                    return _finish(ckpts, logger, workdir, step, meta, history, state)
            # With no time for another epoch, this one is the last: validate it.
            budget_stop = budget_stop or (epoch + 1 < epochs and out_of_time())

            # --- evaluate.
            closing_started = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                                      "train_loss": float(sums["loss_sum"] / max(sums["count"], 1)),
                                      "lr_scale": float(jax.device_get(state.lr_scale)),
                                      "seconds": round(time.perf_counter() - started, 2)}
            record.update(_prefixed("train", overlap.scores_from_sums(sums), region_names))
            val_dice = None
            if budget_stop:
                record["stopped_by_budget"] = True
            last_epoch = plan is not None and (epoch + 1 == epochs or budget_stop)
            if val_loader is not None and ((epoch + 1) % t.val_every_epochs == 0 or last_epoch):
                val = evaluate(state, eval_step, val_loader, mesh)
                record["val_loss"] = float(val["loss_sum"] / max(val["count"], 1))
                scores = overlap.scores_from_sums(val)
                record.update(_prefixed("val", scores, region_names))
                val_dice = float(np.mean(scores["dice"]))
                record["val_dice"] = val_dice
            # The best model is chosen by validation Dice, so only a validated epoch can replace
            # it; a run without a validation split keeps its newest epoch as "best".
            improved = val_dice > meta["best_dice"] if val_dice is not None else val_loader is None
            if improved and val_dice is not None:
                meta["best_dice"] = val_dice
            if t.schedule == "plateau" and val_dice is not None:
                state = _plateau(state, meta, improved, t)
            history.append(record)
            logger.epoch(record, history)
            meta.update(epoch=epoch + 1, step_in_epoch=0, history=history, epoch_sums=None, epoch_seconds=0.0)
            closing["seconds"] = round(max(closing["seconds"], time.perf_counter() - closing_started), 3)
            note_budget()
            if budget_stop:
                meta["budget"]["stopped_at_step"] = step
            ckpts.save(state, train_iter, meta, best=improved)
            if budget_stop or (max_steps is not None and step >= max_steps):
                break
    finally:
        logger.close()
    return _finish(ckpts, logger, workdir, step, meta, history, state)


def sums_to_json(sums: dict[str, Any] | None) -> dict[str, Any] | None:
    """An epoch's running sums (host numpy arrays and scalars) as JSON for the checkpoint meta:
    dtype, shape and the values; JSON floats round-trip float32 and float64 exactly."""
    if sums is None:
        return None
    out = {}
    for key, value in sums.items():
        array = np.asarray(value)
        out[key] = {"dtype": array.dtype.str, "shape": list(array.shape), "values": array.ravel().tolist()}
    return out


def sums_from_json(saved: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    """The inverse of :func:`sums_to_json` (``None`` for a checkpoint without sums)."""
    if not saved:
        return None
    return {key: np.asarray(v["values"], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
            for key, v in saved.items()}


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


def _finish(ckpts: RunCheckpoints, logger: Any, workdir: Path, step: int, meta: dict[str, Any],
            history: list[dict[str, Any]], state: Any) -> TrainResult:
    ckpts.wait()
    ckpts.close()
    logger.close()
    return TrainResult(workdir, step, float(meta["best_dice"]), history, state)


# Settings a resumed run may change: they decide how long to go on and how often to save or
# validate, not what the steps computed so far mean. (With warmup_cosine, more epochs stretch the
# remaining schedule.)
_RESUMABLE_CHANGES = ("epochs", "save_every_steps", "keep_checkpoints", "val_every_epochs")


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
