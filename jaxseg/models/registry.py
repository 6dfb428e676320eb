"""Models by name: the one place that turns a config into a network.

Every model follows one interface, so the train step, inference and explanations never ask
which model they hold:

- ``model(x, *, train, dropout_key=None, perturb=None) -> (logits, activations)`` with ``x``
  ``(B, *spatial, in_channels)`` channel-last (2 spatial axes, or 3 for ``unet3d``), logits
  ``(B, *spatial, out_channels)`` float32 and ``activations`` a dict of named intermediates.
- ``model.activation_names``: the keys of ``activations`` in forward order; ``perturb[name]`` is
  added to that activation (zero-valued perturbations make Grad-CAM a ``jax.grad``).
- dropout only with an explicit ``dropout_key`` (Monte-Carlo dropout at inference).
- optional ``model.explanation_maps``: names of activations that are maps in their own right
  (attention-gate coefficients, attention rollout), shown beside Grad-CAM.
- optional ``model.auxiliary_logits(activations)``: deep-supervision logits at coarser levels
  (``unet``, ``unet3d`` with ``model.deep_supervision``); only the train step uses them.
"""
from __future__ import annotations

import math
import typing
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.config import MODEL_SECTIONS, Config, TrainConfig
from jaxseg.errors import JaxsegError
from jaxseg.models import conv
from jaxseg.models.attention_unet import AttentionUNet
from jaxseg.models.resunet import ResUNet
from jaxseg.models.transunet import TransUNet
from jaxseg.models.unet import UNet
from jaxseg.models.unet3d import UNet3D

# The toy size every test uses (CONTRIBUTING.md, habit 7): one pooling, 4 and 8 channels.
TINY_FEATURES = (4, 8)


def _unet(cfg: Config, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Module:
    return UNet(cfg.in_channels, cfg.out_channels, tuple(cfg.model.features), cfg.model.dropout,
                dtype=dtype, deep_supervision=cfg.model.deep_supervision, rngs=rngs)


def _attention_unet(cfg: Config, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Module:
    return AttentionUNet(cfg.in_channels, cfg.out_channels, tuple(cfg.model.features), cfg.model.dropout,
                         dtype=dtype, rngs=rngs)


def _resunet34(cfg: Config, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Module:
    m = cfg.model
    return ResUNet(cfg.in_channels, cfg.out_channels, tuple(m.features), tuple(m.encoder_depths),
                   tuple(m.decoder_features), m.input_mode, m.dropout, dtype=dtype, rngs=rngs)


def _transunet(cfg: Config, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Module:
    m = cfg.model
    return TransUNet(cfg.in_channels, cfg.out_channels, tuple(m.features), m.dropout,
                     image_size=cfg.data.image_size, layers=m.transformer_layers, heads=m.transformer_heads,
                     dim=m.transformer_dim, mlp_dim=m.transformer_mlp_dim, dtype=dtype, rngs=rngs)


def _unet3d(cfg: Config, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Module:
    return UNet3D(cfg.in_channels, cfg.out_channels, tuple(cfg.model.features), cfg.model.dropout,
                  dtype=dtype, deep_supervision=cfg.model.deep_supervision, rngs=rngs)


# name -> builder(cfg, compute dtype, rngs); a new model adds its entry here and its config section
# (the settings its builder reads from cfg.model) in jaxseg/config/model_sections.py, by the same name.
BUILDERS: dict[str, Callable[[Config, jnp.dtype, nnx.Rngs], nnx.Module]] = {
    "unet": _unet, "attention_unet": _attention_unet, "resunet34": _resunet34, "transunet": _transunet,
    "unet3d": _unet3d}
MODELS = BUILDERS  # the known names

# Models whose inputs are volumes (B, X, Y, Z, C) rather than slices (B, H, W, C); their config
# sections say so.
VOLUME_MODELS = frozenset(name for name, section in MODEL_SECTIONS.items() if section.spatial_dims == 3)


# The compute dtypes a model can be built in (the choices of train.precision).
PRECISIONS = typing.get_args(typing.get_type_hints(TrainConfig)["precision"])


def spatial_dims(cfg: Config) -> int:
    """2 for slice models, 3 for volume models."""
    return cfg.model.spatial_dims


def build_model(cfg: Config, rngs: nnx.Rngs, conv_mode: str | None = None,
                precision: str | None = None) -> nnx.Module:
    """The network ``cfg.model`` describes, for ``cfg.in_channels`` modalities and
    ``cfg.out_channels`` targets. Cheap shapes only: ``nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))``.
    ``conv_mode``: the convolution path of every layer (``jaxseg.models.conv``; default
    ``conv.default_mode()``), a static attribute, so part of the model's graphdef.
    ``precision``: the compute dtype, ``"float32"`` or ``"bfloat16"`` (default
    ``cfg.train.precision``); parameters and batch statistics are float32 either way, so one
    checkpoint serves both. The dtype is a static attribute of the layers too.
    """
    builder = BUILDERS[cfg.model.name]  # the config admits the names of MODEL_SECTIONS only
    precision = precision or cfg.train.precision
    if precision not in PRECISIONS:
        raise JaxsegError(f"precision: must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return conv.set_mode(builder(cfg, jnp.dtype(precision), rngs), conv_mode or conv.default_mode())


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` entries; batch statistics excluded).

    Works on abstract models from ``nnx.eval_shape`` too.
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
