"""Monte-Carlo dropout (Gal & Ghahramani 2016): where is the model unsure, and why.

``N`` forward passes with dropout on and batch norm in inference mode (``train=False``,
``dropout_key=k`` for ``k`` in ``jax.random.split(key, N)``) sample the predictive distribution.
From the sampled probabilities ``p_n``:

- ``mean`` = the predictive probability ``E[p]``;
- ``variance`` = ``Var[p]`` per output channel;
- ``entropy`` = predictive entropy ``H(E[p])`` (total uncertainty);
- ``mutual_information`` = ``H(E[p]) - E[H(p)]`` (the epistemic part: how much the passes
  disagree; >= 0 by concavity of H, up to float rounding).

Sigmoid targets (``wt``, ``regions``) are independent Bernoulli channels, so entropy and mutual
information are per channel ``(B, *spatial, K)``; softmax targets (``classes``) are one
categorical variable, so they are ``(B, *spatial)``. Entropies are in nats.

The passes run as one ``jax.vmap`` over keys, or ``jax.lax.map`` over ``chunk`` keys at a time
when ``N`` full activations do not fit in memory. The model's dropout must be > 0 for the samples
to differ: with ``dropout = 0`` every pass is the deterministic one and variance and mutual
information are exactly zero.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.scipy.special import xlogy

from jaxseg.explain.gradcam import resolve_kind
from jaxseg.target import TargetKind, divide_by_temperature


def bernoulli_entropy(p: jax.Array) -> jax.Array:
    """Elementwise ``-p log p - (1-p) log(1-p)`` in nats; 0 at p = 0 and p = 1."""
    return -(xlogy(p, p) + xlogy(1.0 - p, 1.0 - p))


def categorical_entropy(p: jax.Array) -> jax.Array:
    """``-sum_k p_k log p_k`` over the last axis, in nats."""
    return -xlogy(p, p).sum(axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "n_samples", "target_kind", "chunk"))
def _mc_dropout(graphdef, params, batch_stats, images, key, temperature=None, *, n_samples, target_kind, chunk):
    # Softmax outputs are one categorical variable; sigmoid outputs independent Bernoulli ones.
    softmax = target_kind.activation == "softmax"

    def sample(k):
        logits, _ = nnx.merge(graphdef, params, batch_stats)(images, train=False, dropout_key=k)
        logits = logits.astype(jnp.float32)
        return target_kind.probabilities(divide_by_temperature(logits, temperature))

    keys = jax.random.split(key, n_samples)
    # The stacked probabilities (N, B, *spatial, K) are small next to the activations of N
    # passes, which is what `chunk` bounds (lax.map vmaps `chunk` keys at a time).
    probs = jax.lax.map(sample, keys, batch_size=chunk) if chunk else jax.vmap(sample)(keys)
    return sample_statistics(probs, softmax)


def sample_statistics(probs: jax.Array, softmax: bool) -> dict[str, jax.Array]:
    """The module docstring's statistics of sampled probabilities ``probs (N, B, *spatial, K)``
    float32 (``softmax``: categorical over K, else K Bernoulli channels), as :func:`mc_dropout`
    returns them."""
    # Moments about the first sample, not about zero: numerically stable, and when all samples
    # are equal (no dropout) the deviations are exactly 0, so the variance is exactly 0 and the
    # mean is exactly the deterministic probability. (Rounding could make the difference of the
    # two moments a hair negative, hence the maximum.)
    shift = probs[:1]
    deviation = probs - shift
    mean_deviation = deviation.mean(axis=0, keepdims=True)
    mean = (shift + mean_deviation)[0]
    variance = jnp.maximum((deviation * deviation).mean(axis=0) - (mean_deviation * mean_deviation)[0], 0.0)
    entropy_of = categorical_entropy if softmax else bernoulli_entropy
    entropy = entropy_of(mean)
    expected_entropy = entropy_of(probs).mean(axis=0)
    return {"mean": mean, "variance": variance, "entropy": entropy,
            "mutual_information": entropy - expected_entropy}


def mc_dropout(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
               key: jax.Array, n_samples: int = 20, target_kind: str | TargetKind | None = None,
               chunk: int | None = None, temperature: Any = None) -> dict[str, jax.Array]:
    """Monte-Carlo dropout statistics of a batch.

    Args:
      graphdef, params, batch_stats: the model (as for :func:`jaxseg.explain.gradcam.gradcam`).
      images: ``(B, *spatial, C)`` float32.
      key: a PRNG key; the result is a pure function of it.
      n_samples: N stochastic passes (keys ``jax.random.split(key, N)``).
      target_kind: a ``data.target`` name or :class:`~jaxseg.target.TargetKind` (its activation
        decides); None infers it from the number of logit channels (1, 3, 4).
      chunk: run at most this many passes at once (``jax.lax.map``); None = all N in one vmap.
        The result does not depend on it beyond float rounding.
      temperature: ``(K,)`` (or scalar) per-channel temperatures each pass divides its logits by
        before the activation (``Predictor.temperature``, docs/calibration.md); None = 1.
    Returns:
      ``{'mean', 'variance'}`` ``(B, *spatial, K)`` float32 and ``{'entropy',
      'mutual_information'}`` ``(B, *spatial, K)`` for sigmoid targets, ``(B, *spatial)`` for
      softmax targets, float32 nats.
    """
    images, kind, temperature, chunk = mc_arguments(graphdef, params, batch_stats, images, n_samples,
                                                    target_kind, chunk, temperature)
    return _mc_dropout(graphdef, params, batch_stats, images, key, temperature, n_samples=int(n_samples),
                       target_kind=kind, chunk=chunk)


def mc_arguments(graphdef: Any, params: Any, batch_stats: Any, images: Any, n_samples: int,
                 target_kind: Any, chunk: int | None, temperature: Any) -> tuple[Any, Any, Any, int | None]:
    """The checked arguments of an MC-dropout call (shared by :func:`mc_dropout` and
    :func:`jaxseg.explain.mc_shared.mc_dropout_shared`): images as float32, the resolved
    TargetKind, the temperature as float32 (or None) and the chunk (None = all passes at once)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of samples, got {chunk}")
    images = jnp.asarray(images, jnp.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images)
    chunk = None if chunk is None or chunk >= n_samples else int(chunk)
    temperature = None if temperature is None else jnp.asarray(temperature, jnp.float32)
    return images, kind, temperature, chunk
