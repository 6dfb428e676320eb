"""Helpers shared by the model-zoo tests: numpy-initialised tiny models (no PRNG compilation),
phantom batches, a short training run, and smoke-size trained runs per model (one per session)."""
from __future__ import annotations

from typing import Any

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxseg import config as config_lib
from jaxseg.train.state import create_state, graphdef_of, make_optimizer
from jaxseg.train.step import make_train_step
from tests.train.test_step import phantom_batch, put

_RUNS: dict[str, object] = {}


def numpy_init(abstract: nnx.Module, seed: int = 0) -> nnx.Module:
    """``abstract`` (from ``nnx.eval_shape``) with He-normal kernels, small random biases, unit
    scales and zero running means drawn by numpy: initialising through JAX's PRNG costs one XLA
    compilation per parameter shape, and what these tests check does not depend on it."""
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        keys = [getattr(entry, "key", getattr(entry, "name", "")) for entry in path]
        name = [k for k in keys if isinstance(k, str) and k not in ("value", ".value")][-1]
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(rng.normal(0, math.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "position"):
            return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)  # running means

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def zoo_config(model_name: str, *overrides: str) -> config_lib.Config:
    """The demo config at the smoke size of ``model_name`` (features (4, 8), 32 px)."""
    return config_lib.load("demo", [*config_lib.smoke_overrides(model_name), f"model.name={model_name}",
                                    *overrides])


def train_losses(cfg: config_lib.Config, steps: int) -> list[float]:
    """Mean loss of each of ``steps`` jitted train steps on one phantom batch (one device)."""
    return train_run(cfg, steps)[0]


def train_run(cfg: config_lib.Config, steps: int) -> tuple[list[float], Any, list[Any]]:
    """``train_losses`` with the final state and each step's metric sums."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    tx = make_optimizer(cfg, steps)
    state = create_state(cfg, tx, mesh)
    step = make_train_step(graphdef_of(cfg), tx, cfg.train.loss, cfg.data.target)
    batch = put(phantom_batch(cfg), mesh)
    losses, all_sums = [], []
    for _ in range(steps):
        state, sums = step(state, batch)
        losses.append(float(sums["loss_sum"] / sums["count"]))
        all_sums.append(sums)
    return losses, state, all_sums


def smoke_run_of(model_name: str, tmp_path_factory):
    """A run folder of ``model_name`` trained 2 steps at smoke size, shared within the session."""
    if model_name not in _RUNS:
        from jaxseg.train import loop
        _RUNS[model_name] = loop.train(zoo_config(model_name), tmp_path_factory.mktemp(f"run_{model_name}"),
                                       quiet=True).workdir
    return _RUNS[model_name]
