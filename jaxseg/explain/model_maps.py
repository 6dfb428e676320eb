"""Explanation maps that some models carry in their own forward pass, beside Grad-CAM.

- **Attention gates** (:class:`~jaxseg.models.attention_unet.AttentionUNet`): the gate
  coefficients ``att{i}`` ``(B, H_i, W_i, 1)`` in [0, 1], the share of each skip pixel the
  decoder lets through, listed in ``model.explanation_maps``. :func:`gate_maps` brings them to
  the image size (bilinear); their values are kept (no renormalisation), so 1 means "passed in
  full".
- **Attention rollout** (Abnar & Zuidema 2020, "Quantifying attention flow in transformers";
  :class:`~jaxseg.models.transunet.TransUNet`, whose ``model.attention_names`` are the attention
  probabilities ``attn{l}`` ``(B, heads, T, T)``): per layer average the heads, add the identity
  for the residual connection and renormalise the rows, ``A_l = 0.5 mean_h(attn_l) + 0.5 I``,
  then multiply through the layers, ``R = A_{L-1} ... A_1 A_0`` (:func:`attention_rollout`).
  Row ``i`` of ``R`` is how much each input token contributes to output token ``i``; each row
  sums to one. Without a class token, :func:`rollout_map` explains a set of query tokens: the
  weighted mean of their rows (weights = the predicted whole-tumor probability pooled to the
  token grid in :func:`model_maps`, i.e. "which tokens fed the tokens that became tumor"),
  reshaped to the token grid, upsampled bilinearly and divided by its maximum like Grad-CAM.

All functions are pure and jittable; :func:`model_maps` runs one forward pass for every map of a
batch, :func:`model_maps_volume` covers a volume's slices.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseg.explain.gradcam import _batch_sharding, resolve_kind
from jaxseg.infer import chunks
from jaxseg.target import TargetKind

ROLLOUT = "rollout"


def attention_rollout(attentions: Sequence[jax.Array], residual: float = 0.5) -> jax.Array:
    """Attention rollout of a stack of layers.

    Args:
      attentions: per layer, in forward order, ``(B, heads, T, T)`` attention probabilities
        (query axis 2, key axis 3; rows sum to one).
      residual: weight of the identity added for the residual connection (0.5 in Abnar &
        Zuidema).
    Returns:
      ``(B, T, T)`` float32 ``R = A_{L-1} ... A_0`` with ``A_l = (1 - residual) mean_h attn_l +
      residual I``, rows renormalised to sum to one.
    """
    if not attentions:
        raise ValueError("attention rollout needs at least one layer")
    rollout = None
    for attention in attentions:
        a = attention.astype(jnp.float32).mean(axis=1)
        a = (1.0 - residual) * a + residual * jnp.eye(a.shape[-1], dtype=jnp.float32)[None]
        a = a / a.sum(axis=-1, keepdims=True)
        # Later layers mix the outputs of earlier ones: multiply on the left.
        rollout = a if rollout is None else jnp.einsum("bij,bjk->bik", a, rollout)
    return rollout


def rollout_map(attentions: Sequence[jax.Array], grid: tuple[int, int], size: tuple[int, int],
                query_weights: jax.Array | None = None, residual: float = 0.5) -> jax.Array:
    """Per-pixel rollout map of a set of query tokens.

    Args:
      attentions: as :func:`attention_rollout`, ``T = grid[0] * grid[1]`` tokens in row-major
        grid order.
      grid: ``(h, w)`` token grid.
      size: ``(H, W)`` image size to resize to.
      query_weights: ``(B, T)`` non-negative weights of the query tokens; None (or an all-zero
        row) = every token equally.
    Returns:
      ``(B, H, W)`` float32 in [0, 1], each sample divided by its maximum.
    """
    rollout = attention_rollout(attentions, residual)
    batch, tokens, _ = rollout.shape
    if tokens != grid[0] * grid[1]:
        raise ValueError(f"{tokens} tokens do not fill a {grid[0]} x {grid[1]} grid")
    uniform = jnp.ones((batch, tokens), jnp.float32)
    if query_weights is None:
        weights = uniform
    else:
        weights = jnp.maximum(query_weights.astype(jnp.float32), 0.0)
        total = weights.sum(axis=-1, keepdims=True)
        weights = jnp.where(total > 1e-6, weights, uniform)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    token_map = jnp.einsum("bi,bij->bj", weights, rollout)  # (B, T), sums to one
    image = jax.image.resize(token_map.reshape(batch, *grid), (batch, *size), method="linear")
    peak = image.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, image / jnp.where(peak > 0, peak, 1.0), 0.0)


def gate_maps(activations: dict[str, jax.Array], names: Sequence[str], size: tuple[int, int]
              ) -> dict[str, jax.Array]:
    """Attention-gate coefficients at the image size.

    Args:
      activations: a model's activations; ``activations[name]`` ``(B, H_i, W_i, 1)``.
      names: the gate names (``model.explanation_maps``).
      size: ``(H, W)``.
    Returns:
      ``name -> (B, H, W)`` float32 in [0, 1] (bilinear; values unchanged at full resolution).
    """
    out = {}
    for name in names:
        a = activations[name][..., 0].astype(jnp.float32)
        out[name] = a if a.shape[1:] == tuple(size) else jax.image.resize(a, (a.shape[0], *size), method="linear")
    return out


def map_names(model: nnx.Module) -> tuple[str, ...]:
    """Names of the maps :func:`model_maps` returns for ``model`` (empty for a plain U-Net)."""
    names = tuple(getattr(model, "explanation_maps", ()))
    return names + ((ROLLOUT,) if getattr(model, "attention_names", ()) else ())


def _pool(x: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Mean of ``(B, H, W)`` over the pixels of each token -> ``(B, h * w)``."""
    batch, height, width = x.shape
    fy, fx = height // grid[0], width // grid[1]
    return x.reshape(batch, grid[0], fy, grid[1], fx).mean(axis=(2, 4)).reshape(batch, -1)


@functools.partial(jax.jit, static_argnames=("graphdef", "target_kind"))
def _model_maps(graphdef, params, batch_stats, images, *, target_kind):
    model = nnx.merge(graphdef, params, batch_stats)
    logits, activations = model(images, train=False)
    size = images.shape[1:3]
    maps = gate_maps(activations, tuple(getattr(model, "explanation_maps", ())), size)
    attention_names = tuple(getattr(model, "attention_names", ()))
    if attention_names:
        factor = 2 ** model.depth
        grid = (size[0] // factor, size[1] // factor)
        whole_tumor = target_kind.whole_tumor_probability(target_kind.probabilities(logits.astype(jnp.float32)))
        maps[ROLLOUT] = rollout_map([activations[n] for n in attention_names], grid, size,
                                    _pool(whole_tumor, grid))
    return maps


def model_maps(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, images: Any,
               target_kind: str | TargetKind | None = None) -> dict[str, jax.Array]:
    """Every model-carried map of a batch, from one inference-mode forward pass.

    Args:
      graphdef, params, batch_stats: the model (as for :func:`jaxseg.explain.gradcam.gradcam`).
      images: ``(B, H, W, C)`` float32.
      target_kind: ``'wt'``, ``'regions'`` or ``'classes'``; None infers it from the logits.
    Returns:
      ``name -> (B, H, W)`` float32 in [0, 1]: the gate names of ``model.explanation_maps`` and,
      for a model with ``attention_names``, ``'rollout'`` (query tokens weighted by the predicted
      whole-tumor probability). Empty for a model with neither.
    """
    images = jnp.asarray(images, jnp.float32)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, images)
    return _model_maps(graphdef, params, batch_stats, images, target_kind=kind)


def model_maps_volume(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, slices: Any,
                      target_kind: str | TargetKind | None = None, batch_size: int = 16) -> dict[str, np.ndarray]:
    """:func:`model_maps` of every slice of a volume, ``batch_size`` slices at a time.

    Args:
      slices: ``(Z, S, S, C)`` float32 preprocessed slices.
    Returns:
      ``name -> (Z, S, S)`` float32 numpy. The last chunk is zero-padded (one compiled program)
      and split over the parameters' ``'data'`` mesh axis when that divides ``batch_size``.
    """
    slices = np.asarray(slices, np.float32)
    names = map_names(nnx.merge(graphdef, params, batch_stats))
    if not names:
        return {}
    sharding = _batch_sharding(params, batch_size)
    kind = resolve_kind(target_kind, graphdef, params, batch_stats, slices[:1])
    empty = np.zeros((0, *slices.shape[1:-1]), np.float32)
    return chunks.map_chunks(lambda _, chunk: model_maps(graphdef, params, batch_stats, chunk, kind),
                             slices, batch_size=batch_size, sharding=sharding,
                             empty={name: empty for name in names})
