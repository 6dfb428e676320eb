"""The one convolution layer every model uses.

All models build their convolutions through :func:`Conv` and :func:`ConvTranspose` so that the
convolution primitive is chosen in one place: a platform-specific formulation (issue 6, a
``jax.custom_vjp`` convolution whose weight gradient XLA's CPU backend computes fast) plugs in
here without touching any model, and the parameter layout stays Flax's (``kernel`` as
``(*window, in, out)``, ``bias`` as ``(out,)``) whatever the primitive.
"""
from __future__ import annotations

import jax
from flax import nnx


def conv_general_dilated(*args, **kwargs) -> jax.Array:
    """The convolution primitive the layers call; today ``jax.lax.conv_general_dilated``."""
    return jax.lax.conv_general_dilated(*args, **kwargs)


def Conv(in_features: int, out_features: int, kernel_size, strides=1, **kwargs) -> nnx.Conv:
    """``nnx.Conv`` (same arguments, same parameters) computing through
    :func:`conv_general_dilated`."""
    return nnx.Conv(in_features, out_features, kernel_size, strides,
                    conv_general_dilated=conv_general_dilated, **kwargs)


def ConvTranspose(in_features: int, out_features: int, kernel_size, strides=None, **kwargs
                  ) -> nnx.ConvTranspose:
    """``nnx.ConvTranspose`` (same arguments, same parameters)."""
    return nnx.ConvTranspose(in_features, out_features, kernel_size, strides, **kwargs)
