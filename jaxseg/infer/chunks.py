"""A long batch through a function in chunks of one fixed size: pad, call, strip.

Prediction, Grad-CAM, the model's own maps, MC dropout and sliding windows all run more slices
(or windows) than fit in one forward pass. Each chunk is zero-padded to the same ``batch_size``
so a jitted function compiles once for a whole volume, whatever its length; the rows of the
padding are dropped from every output. With a ``sharding`` (the ``'data'`` axis of a mesh) each
padded chunk is placed on the devices before the call, as training places its batches.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def call_padded(fn: Callable[..., Any], batch_size: int, *arrays: Any, sharding: Any = None) -> Any:
    """``fn(*padded)`` with the padding rows removed from its outputs.

    Args:
      fn: takes the padded arrays, returns a pytree (an array, a dict of arrays) whose leaves
        have ``batch_size`` rows.
      batch_size: rows each argument is zero-padded to.
      arrays: ``(n, ...)`` each, the same ``n <= batch_size``; ``None`` passes through.
      sharding: if given, where the padded arrays go (``jax.device_put``) before the call.

    Returns:
      ``fn``'s pytree with every leaf a numpy array of its first ``n`` rows.
    """
    n = next(len(a) for a in arrays if a is not None)
    if n > batch_size:
        raise ValueError(f"a chunk of {n} rows does not fit batch_size {batch_size}")

    def pad(a):
        if a is None:
            return None
        a = np.asarray(a)
        if len(a) != n:
            raise ValueError(f"arrays of {len(a)} and {n} rows in one chunk")
        if n < batch_size:
            a = np.concatenate([a, np.zeros((batch_size - n, *a.shape[1:]), a.dtype)])
        return a if sharding is None else jax.device_put(a, sharding)

    out = fn(*(pad(a) for a in arrays))
    return jax.tree.map(lambda leaf: np.asarray(leaf)[:n], out)


def map_chunks(fn: Callable[..., Any], *arrays: Any, batch_size: int, sharding: Any = None,
               empty: Any = None) -> Any:
    """``fn`` over consecutive chunks of ``batch_size`` rows, outputs joined along rows.

    Args:
      fn: ``fn(index, *chunks)``, ``index`` the chunk's number (0, 1, ...; e.g. for
        ``jax.random.fold_in``), each chunk padded to ``batch_size`` rows (:func:`call_padded`).
      arrays: ``(N, ...)`` each, the same ``N``; ``None`` passes through as ``None``.
      batch_size: rows per call.
      sharding: as in :func:`call_padded`.
      empty: what to return when ``N`` is 0 (nothing is called).

    Returns:
      ``fn``'s pytree with every leaf the numpy concatenation of the chunks' leaves, ``(N, ...)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    total = next(len(a) for a in arrays if a is not None)
    parts = []
    for index, start in enumerate(range(0, total, batch_size)):
        chunk = [None if a is None else a[start:start + batch_size] for a in arrays]
        parts.append(call_padded(lambda *padded: fn(index, *padded), batch_size, *chunk, sharding=sharding))
    if not parts:
        return empty
    return jax.tree.map(lambda *leaves: np.concatenate(leaves), *parts)
