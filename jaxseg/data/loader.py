"""The one loader builder: a dataset's cases -> the records its model samples -> a grain DataLoader.

Whatever the format (:mod:`jaxseg.data.formats`) and whatever the sampling (2D slices, 3D
patches), a loader is: the sampling's index of the cases, padded for validation, the format's
(or the sampling's) grain source, the sampling's operations, and :func:`pipeline.build_loader`'s
one global order read as per-process rows. The training loop asks :func:`train_val_loaders`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from jaxseg.config import Config
from jaxseg.data import formats
from jaxseg.data.formats import Sampling
from jaxseg.data.pipeline import build_loader, check_batch, padded_index
from jaxseg.errors import JaxsegError


def make_loader(cfg: Config, cases: Sequence[Any], sampling: Sampling, *, train: bool, seed: int,
                index: np.ndarray | None = None, mesh: Mesh | None = None,
                cache_dir: str | Path | None = None) -> grain.DataLoader:
    """A grain DataLoader of this process's share of the batches of ``cases`` (of ``cfg.data.format``).

    Training: shuffled records, endless epochs (the loop counts steps), the sampling's random
    operations, sharded by JAX process so N processes see the global batches of one.
    Validation: every record once in order, padded to whole global batches (``valid`` marks the
    real rows). Per-process batch = ``train.batch_size / jax.process_count()``.
    Batches (dicts of numpy arrays, B rows): :data:`formats.SLICES` gives ``'image' (B, S, S, C)
    float32``, ``'target' (B, S, S, K) float32``, ``'classes' (B, S, S) uint8``, ``'case' (B,) int32``,
    ``'z' (B,) int32``, ``'valid' (B,) bool``; :data:`formats.PATCHES` gives ``(B, P, P, P, ...)``
    image, target and classes, ``'case'``, ``'origin' (B, 3) int32`` and ``'valid'``.

    Args:
      sampling: how the model reads the cases (``formats.sampling(registry.spatial_dims(cfg))``).
      index: ``(N, 2)`` records; default the sampling's index of ``cases`` (with ``cache_dir``).
      mesh: the mesh the batches go to; ``train.batch_size`` must divide over its ``'data'`` axis
        (default: all devices). Raises JaxsegError otherwise.
      cache_dir: folder for stored indexes and the volume store (:mod:`jaxseg.data.store`); None = off.
    The iterator's ``get_state()`` / ``set_state()`` (JSON bytes) resume at the identical batch.
    """
    fmt = formats.of_config(cfg)
    if sampling.spatial_dims not in fmt.samplings:
        raise JaxsegError(f"data.format: {fmt.name} cannot feed a model with {sampling.spatial_dims} spatial dims")
    check_batch(cfg.train.batch_size, mesh.shape["data"] if mesh is not None else jax.device_count())
    if index is None:
        index = sampling.index(fmt, cfg, cases, seed, train, cache_dir)
    index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
    if not len(index):
        raise JaxsegError(sampling.no_records(fmt, cfg, cases, train))
    index, valid = padded_index(index, cfg.train.batch_size, train, sampling.records_named(cfg, cases))
    source = sampling.source(fmt, cfg, cases, index, valid, cache_dir, train)
    return build_loader(source, sampling.operations(cfg, train), train=train, seed=seed,
                        global_batch=cfg.train.batch_size, workers=cfg.data.workers)


class Loaders(NamedTuple):
    """What the training loop reads: the train loader (endless), the validation loader (one pass;
    None without validation cases), steps per epoch and validation batches per pass."""

    train: grain.DataLoader
    val: grain.DataLoader | None
    steps_per_epoch: int
    val_batches: int


def train_val_loaders(cfg: Config, sampling: Sampling, train_cases: Sequence[Any], val_cases: Sequence[Any],
                      mesh: Mesh, cache_dir: str | Path) -> Loaders:
    """The loaders of one run, seeded by ``train.seed``. An epoch is ``train.steps_per_epoch`` steps,
    or one pass over the training records (slices; ``(case, draw)`` patch records). 3D validation
    is one centre patch per case, as cheap as a training step (whole-volume sliding-window scores
    come from ``predict`` + ``evaluate``)."""
    t, fmt = cfg.train, formats.of_config(cfg)
    train_index = sampling.index(fmt, cfg, train_cases, t.seed, True, cache_dir)
    train = make_loader(cfg, train_cases, sampling, train=True, seed=t.seed, index=train_index, mesh=mesh,
                        cache_dir=cache_dir)
    steps_per_epoch = t.steps_per_epoch or max(1, len(train_index) // t.batch_size)
    if not val_cases:
        return Loaders(train, None, steps_per_epoch, 0)
    val_index = sampling.index(fmt, cfg, val_cases, t.seed, False, cache_dir)
    val = make_loader(cfg, val_cases, sampling, train=False, seed=t.seed, index=val_index, mesh=mesh,
                      cache_dir=cache_dir)
    return Loaders(train, val, steps_per_epoch, -(-len(val_index) // t.batch_size))  # validation pads to whole batches
