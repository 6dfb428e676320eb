"""Monte-Carlo dropout with the encoder computed once per batch.

The U-Net family has no dropout in its encoder: in the U-Net, attention U-Net and 3D U-Net the
first dropout site is between the bottleneck's two convolutions, in the ResNet U-Net inside the
first decoder block, in TransUNet in the first transformer block's MLP. Everything before that
site is the same in every pass, so the N passes of :func:`jaxseg.explain.uncertainty.mc_dropout`
recompute it N times for nothing. Here ``model.encode(x)`` (everything before the first dropout
site, :class:`~jaxseg.models.layers.EncoderFeatures`) runs once and only ``model.decode(features,
dropout_key=k)`` runs per key (one ``jax.vmap`` over the keys, or ``jax.lax.map`` over ``chunk``
keys at a time). Keys, dropout masks and statistics are those of ``mc_dropout``
(``jax.random.split(key, N)``, :func:`~jaxseg.explain.uncertainty.sample_statistics`), so the
results are equal to float rounding.

A model without ``encode``/``decode`` runs its whole forward pass per key, as ``mc_dropout``.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.explain.uncertainty import mc_arguments, sample_statistics
from jaxseg.target import TargetKind, divide_by_temperature


@functools.partial(jax.jit, static_argnames=("graphdef", "n_samples", "target_kind", "chunk"))
def _mc_dropout_shared(graphdef, params, batch_stats, images, key, temperature=None, *, n_samples, target_kind, chunk):
    softmax = target_kind.activation == "softmax"  # one categorical variable, not K Bernoulli ones
    model = nnx.merge(graphdef, params, batch_stats)
    split = hasattr(model, "encode") and hasattr(model, "decode")
    # Computed once, closed over by every pass (vmap broadcasts it, in_axes None).
    features = model.encode(images, train=False) if split else None

    def sample(k):
        module = nnx.merge(graphdef, params, batch_stats)
        logits = (module.decode(features, train=False, dropout_key=k)[0] if split
                  else module(images, train=False, dropout_key=k)[0]).astype(jnp.float32)
        return target_kind.probabilities(divide_by_temperature(logits, temperature))

    keys = jax.random.split(key, n_samples)
    probs = jax.lax.map(sample, keys, batch_size=chunk) if chunk else jax.vmap(sample)(keys)
    return sample_statistics(probs, softmax)


def mc_dropout_shared(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
                      key: jax.Array, n_samples: int = 20, target_kind: str | TargetKind | None = None,
                      chunk: int | None = None, temperature: Any = None) -> dict[str, jax.Array]:
    """Monte-Carlo dropout statistics of a batch, the encoder run once.

    Arguments and returns as :func:`jaxseg.explain.uncertainty.mc_dropout` (same keys, same
    statistics: ``mean``, ``variance`` ``(B, *spatial, K)``; ``entropy``, ``mutual_information``
    per channel for sigmoid targets, ``(B, *spatial)`` for softmax ones; float32). ``chunk``
    bounds the decoder passes held at once; the encoder's activations are held once.
    """
    images, kind, temperature, chunk = mc_arguments(graphdef, params, batch_stats, images, n_samples,
                                                    target_kind, chunk, temperature)
    return _mc_dropout_shared(graphdef, params, batch_stats, images, key, temperature, n_samples=int(n_samples),
                              target_kind=kind, chunk=chunk)
