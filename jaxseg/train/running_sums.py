"""An epoch's running sums on their way from the devices to the host and the checkpoint.

Each train step returns its sums (loss sum, sample count, confusion sums; :mod:`jaxseg.train.step`)
as device arrays. :class:`StepSums` keeps them there and fetches several steps at once, so the
loop never waits for the devices after every step, yet stops at the exact step whose loss is not
finite. :func:`sums_to_json` / :func:`sums_from_json` carry an epoch's running sums through the
checkpoint meta, so an epoch resumed mid-way reports all of its steps.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from jaxseg.errors import JaxsegError
from jaxseg.train import log as log_lib
from jaxseg.train.step import add_sums

# Steps whose sums stay on the devices before the host fetches them together: the NaN check,
# the epoch's running sums and the progress bar wait this long at most (and a checkpoint or the
# end of an epoch fetches sooner). A host sync per step would stall the dispatch of the next one.
LOG_EVERY_STEPS = 10


class StepSums:
    """Train-step sums not yet on the host, and the epoch's running sums they go into.

    :meth:`fetch` brings every pending step's sums over at once, in step order: it stops with
    "loss is nan at step N" at the first non-finite loss (the exact step, although later steps
    may have run), adds each step to the running sums exactly as one fetch per step would, and
    logs each step's loss. Nothing is checkpointed before a fetch, so a diverged state is never
    saved.
    """

    def __init__(self, epoch: int, sums: dict[str, Any] | None):
        self.epoch, self.sums = epoch, sums
        self.steps: list[int] = []
        self.values: list[dict[str, jax.Array]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, step_sums: dict[str, jax.Array]) -> None:
        self.steps.append(step)
        self.values.append(step_sums)

    def fetch(self, logger: log_lib.RunLog, batch_size: int) -> dict[str, Any] | None:
        """The running sums with every pending step added (host numpy); raises
        :class:`JaxsegError` on a non-finite loss."""
        losses = []
        for step, step_sums in zip(self.steps, jax.device_get(self.values)):
            loss = float(step_sums["loss_sum"] / max(step_sums["count"], 1))
            if not math.isfinite(loss):
                logger.steps(losses, batch_size)
                raise JaxsegError(f"training diverged: the loss is {loss} at step {step} (epoch "
                                  f"{self.epoch + 1}); try a lower train.learning_rate or train.clip_norm")
            self.sums = add_sums(self.sums, step_sums)
            losses.append((step, loss))
        logger.steps(losses, batch_size)
        self.steps, self.values = [], []
        return self.sums


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
