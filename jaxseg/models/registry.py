"""Models by name: the one place that turns a config into a network."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.config import Config
from jaxseg.errors import JaxsegError
from jaxseg.models.unet import UNet

# The toy size every test uses (STYLE.md habit 7): one pooling, 4 and 8 channels.
TINY_FEATURES = (4, 8)

MODELS = {"unet": UNet}


def build_model(cfg: Config, rngs: nnx.Rngs) -> nnx.Module:
    """The network ``cfg.model`` describes, for ``cfg.in_channels`` modalities and
    ``cfg.out_channels`` targets; computes in bfloat16 iff ``cfg.train.bf16`` (parameters stay
    float32). Cheap shapes only: ``nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))``.
    """
    try:
        model_class = MODELS[cfg.model.name]
    except KeyError:
        raise JaxsegError(f"model.name: unknown model {cfg.model.name!r} (known: {', '.join(MODELS)})") from None
    dtype = jnp.bfloat16 if cfg.train.bf16 else jnp.float32
    return model_class(cfg.in_channels, cfg.out_channels, tuple(cfg.model.features), cfg.model.dropout,
                       dtype=dtype, rngs=rngs)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` entries; batch statistics excluded).

    Works on abstract models from ``nnx.eval_shape`` too.
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
