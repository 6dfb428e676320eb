"""The 3D U-Net of the BraTS 2021 3D work, in Flax NNX, channel-last volumes.

The 2D U-Net (:mod:`jaxseg.models.unet`) with every 2D layer replaced by its 3D counterpart:
encoder level ``i`` is a :class:`~jaxseg.models.layers.ConvBlock` (two 3x3x3 conv -> batch norm
-> ReLU) with ``features[i]`` channels followed by 2x2x2 max pooling (except the bottleneck);
decoder level ``i`` upsamples with a 2x2x2 stride-2 transposed convolution, concatenates the skip
``enc{i}`` and applies another ConvBlock; a 1x1x1 convolution gives the logits.

Dropout sits in the bottleneck and every decoder block and only runs with a key, so
Monte-Carlo dropout is ``train=False`` with a fresh key per sample. The forward pass returns the
named activations ``enc0 .. enc{depth}`` and ``dec{depth-1} .. dec0`` for 3D Grad-CAM.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.models.conv import Conv, ConvTranspose
from jaxseg.models.layers import ConvBlock, add_perturbation, check_perturb_names, max_pool


class UNet3D(nnx.Module):
    """U-Net for ``(B, X, Y, Z, in_channels)`` volumes; X, Y and Z divisible by ``2**depth``.

    Args:
      in_channels: input channels (MRI modalities).
      out_channels: logit channels K (1 WT, 3 WT/TC/ET regions, 4 classes bg/NCR/ED/ET).
      features: channels per level; ``depth = len(features) - 1`` poolings; the last entry is
        the bottleneck.
      dropout: dropout rate in the bottleneck and decoder blocks, in [0, 1).
      dtype: compute dtype; parameters, batch statistics and logits are float32 whatever it is.
      rngs: parameter initialisation keys.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 features: tuple[int, ...] = (16, 32, 64, 128, 256), dropout: float = 0.0, *,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features must list at least two positive channel counts, got {features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.depth = len(features) - 1
        self.dropout_rate = float(dropout)
        d = self.depth
        # Dropout sites are numbered by level (bottleneck = depth, decoder i = i), as in UNet.
        self.encoders = nnx.List([
            ConvBlock(in_channels if i == 0 else features[i - 1], features[i],
                      dropout=dropout if i == d else 0.0, dropout_index=i, spatial_dims=3,
                      dtype=dtype, rngs=rngs)
            for i in range(d + 1)])
        self.upsamplers = nnx.List([
            ConvTranspose(features[i + 1], features[i], (2, 2, 2), strides=(2, 2, 2), padding="VALID",
                          dtype=dtype, rngs=rngs)
            for i in range(d)])
        self.decoders = nnx.List([
            ConvBlock(2 * features[i], features[i], dropout=dropout, dropout_index=i, spatial_dims=3,
                      dtype=dtype, rngs=rngs)
            for i in range(d)])
        self.head = Conv(features[0], out_channels, (1, 1, 1), dtype=dtype, rngs=rngs)

    @property
    def activation_names(self) -> tuple[str, ...]:
        """Names of the returned activations, in forward order."""
        d = self.depth
        return tuple(f"enc{i}" for i in range(d + 1)) + tuple(f"dec{i}" for i in range(d - 1, -1, -1))

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                 perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Segment a batch of volumes (patches).

        Args:
          x: ``(B, X, Y, Z, in_channels)`` float volumes.
          train: batch norm uses (and updates) batch statistics iff True.
          dropout_key: switches dropout on (in any mode); None = no dropout.
          perturb: optional ``name -> array`` added to that activation (zero entries make
            Grad-CAM a ``jax.grad``); shapes as the activation.

        Returns:
          ``(logits, activations)``: logits ``(B, X, Y, Z, out_channels)`` float32;
          ``enc{i}``/``dec{i}`` have shape ``(B, X / 2**i, Y / 2**i, Z / 2**i, features[i])``.
        """
        if x.ndim != 5:
            raise ValueError(f"UNet3D expects (B, X, Y, Z, C) volumes, got input of shape {x.shape}")
        *_, channels = x.shape
        factor = 2 ** self.depth
        if channels != self.in_channels:
            raise ValueError(f"UNet3D expects {self.in_channels} input channels, got input of shape {x.shape}")
        if any(size % factor for size in x.shape[1:4]):
            raise ValueError(f"UNet3D of depth {self.depth} needs X, Y and Z divisible by {factor}, got {x.shape}")
        check_perturb_names(perturb, self.activation_names)

        activations: dict[str, jax.Array] = {}
        skips = []
        for i, block in enumerate(self.encoders):
            x = block(x, train=train, dropout_key=dropout_key)
            x = add_perturbation(x, f"enc{i}", perturb)
            activations[f"enc{i}"] = x
            if i < self.depth:
                skips.append(x)
                x = max_pool(x)
        for i in range(self.depth - 1, -1, -1):
            x = self.upsamplers[i](x)
            x = jnp.concatenate([x, skips[i].astype(x.dtype)], axis=-1)
            x = self.decoders[i](x, train=train, dropout_key=dropout_key)
            x = add_perturbation(x, f"dec{i}", perturb)
            activations[f"dec{i}"] = x
        logits = self.head(x).astype(jnp.float32)
        return logits, activations
