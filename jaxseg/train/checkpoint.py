"""Checkpoints: everything that decides the future, in one orbax step (CONTRIBUTING.md, habit 9).

A run folder holds
  ``checkpoints/<step>/``  the full :class:`TrainState`, the grain iterator state of every JAX
                           process and a JSON ``meta`` (epoch, best Dice, plateau counters);
                           the newest ``train.keep_checkpoints`` are kept;
  ``best/<step>/``         parameters and batch statistics of the best validation Dice, and meta;
  ``config.toml``          the resolved config, which rebuilds the model for inference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError
from jaxseg.model_store import find_run  # noqa: F401  (the run lookup lives with the model folders)
from jaxseg import model_store
from jaxseg.train.state import TrainState


class RunCheckpoints:
    """Save and restore one run's checkpoints under ``workdir``."""

    def __init__(self, workdir: str | Path, keep: int = 2):
        self.workdir = Path(workdir).absolute()
        # Both managers save the same step at the end of an epoch. In a multi-process run orbax
        # names its sync barriers after the step, so without distinct prefixes the two saves
        # wait at one barrier and the processes deadlock ("Barrier _async_write_complete.N is
        # already ongoing").
        self.last = ocp.CheckpointManager(
            self.workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="last")))
        self.best = ocp.CheckpointManager(
            self.workdir / "best", options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="best")))

    def save(self, state: TrainState, data_iterator: Any, meta: dict[str, Any], *, best: bool) -> None:
        """Save the full state at its step; also as the best model when ``best``."""
        step = int(jax.device_get(state.step))
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.last.save(step, args=ocp.args.Composite(**items), force=True)
        if best:
            model = {"params": state.params, "batch_stats": state.batch_stats}
            self.best.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(model),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def restore_latest(self, target: TrainState, data_iterator: Any
                       ) -> tuple[TrainState, dict[str, Any]] | None:
        """Restore the newest full checkpoint into ``target``'s shapes and shardings, and the
        data iterator in place. ``None`` when the run has no checkpoint yet."""
        step = self.last.latest_step()
        if step is None:
            return None
        items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.last.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.last.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        self.best.close()


def save_model(workdir: str | Path, params: Any, batch_stats: Any, meta: dict[str, Any], step: int = 0) -> None:
    """Write a model alone (no optimizer or data state) as ``workdir/best/<step>``: what
    ``load_model_state`` reads for predict and explain, e.g. weights imported from PyTorch."""
    options = ocp.CheckpointManagerOptions(create=True, max_to_keep=1)
    with ocp.CheckpointManager(Path(workdir).absolute() / "best", options=options) as best:
        model = {"params": params, "batch_stats": batch_stats}
        best.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(model),
                                                meta=ocp.args.JsonSave(meta)), force=True)
        best.wait_until_finished()


def load_model_state(checkpoint: str | Path, target: TrainState) -> tuple[Any, Any, dict[str, Any]]:
    """Parameters and batch statistics for inference: the best checkpoint, else the newest.

    ``target`` is the abstract state (:func:`jaxseg.train.state.abstract_state`): shapes, dtypes
    and shardings to restore into. Returns (params, batch_stats, meta). A model folder gives
    its model.safetensors (float16 or float32 on disk, ``target``'s dtypes in memory) and its
    card as meta.
    """
    run = find_run(checkpoint)
    if model_store.is_model_folder(run):
        params, batch_stats = model_store.load_weights(run, target.params, target.batch_stats)
        return params, batch_stats, {"card": model_store.read_card(run)}
    # Not read_only: that option makes orbax log three warnings per manager; reading is all we do.
    options = ocp.CheckpointManagerOptions(create=False)
    with ocp.CheckpointManager(run / "best", options=options) as best:
        step = best.latest_step()
        if step is not None:
            model = {"params": target.params, "batch_stats": target.batch_stats}
            restored = best.restore(step, args=ocp.args.Composite(
                model=ocp.args.StandardRestore(model), meta=ocp.args.JsonRestore()))
            return restored["model"]["params"], restored["model"]["batch_stats"], restored["meta"]
    with ocp.CheckpointManager(run / "checkpoints", options=options) as last:
        step = last.latest_step()
        if step is None:
            raise JaxsegError(f"{checkpoint}: the run has no checkpoint yet")
        restored = last.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"].params, restored["state"].batch_stats, restored["meta"]


def load_run_config(checkpoint: str | Path) -> config_lib.Config:
    """The resolved config a run was trained with."""
    return config_lib.load(find_run(checkpoint) / "config.toml")
