"""The 3D U-Net of the BraTS 2021 3D work, in Flax NNX, channel-last volumes.

The 2D U-Net (:class:`jaxseg.models.unet.UNet`) with ``spatial_dims=3``: every 2D layer replaced
by its 3D counterpart. Encoder level ``i`` is a :class:`~jaxseg.models.layers.ConvBlock` (two
3x3x3 conv -> batch norm -> ReLU) with ``features[i]`` channels followed by 2x2x2 max pooling
(except the bottleneck); decoder level ``i`` upsamples with a 2x2x2 stride-2 transposed
convolution, concatenates the skip ``enc{i}`` and applies another ConvBlock; a 1x1x1 convolution
gives the logits.

Dropout sits in the bottleneck and every decoder block and only runs with a key, so
Monte-Carlo dropout is ``train=False`` with a fresh key per sample. The forward pass returns the
named activations ``enc0 .. enc{depth}`` and ``dec{depth-1} .. dec0`` for 3D Grad-CAM: for input
``(B, X, Y, Z, C)``, ``enc{i}``/``dec{i}`` have shape ``(B, X / 2**i, Y / 2**i, Z / 2**i, features[i])``.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxseg.models.unet import UNet


class UNet3D(UNet):
    """U-Net for ``(B, X, Y, Z, in_channels)`` volumes; X, Y and Z divisible by ``2**depth``.

    Arguments as :class:`~jaxseg.models.unet.UNet` (``spatial_dims`` is 3).
    """

    def __init__(self, in_channels: int, out_channels: int,
                 features: tuple[int, ...] = (16, 32, 64, 128, 256), dropout: float = 0.0, *,
                 dtype: jnp.dtype = jnp.float32, deep_supervision: int = 0, rngs: nnx.Rngs):
        super().__init__(in_channels, out_channels, features, dropout, spatial_dims=3, dtype=dtype,
                         deep_supervision=deep_supervision, rngs=rngs)
