"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: learning where to look for the pancreas"),
the 2D model of the BraTS 2020 four-modality multi-label work, in Flax NNX, channel-last.

It is the :class:`~jaxseg.models.unet.UNet` (same encoder, bottleneck, transposed-convolution
upsampling, ConvBlocks, head and dropout sites) with one change: before decoder level ``i``
concatenates the skip connection ``enc{i}``, an **additive attention gate** scales every skip
pixel by a coefficient in [0, 1] computed from the skip and from the coarser decoder level (the
gating signal ``g``, i.e. the bottleneck for the deepest level and ``dec{i+1}`` otherwise):

    q     = ReLU(W_x * x_skip + W_g * g)       at g's resolution, F_int = max(1, features[i] // 2) channels
    alpha = sigmoid(psi * q)                   one channel
    alpha = bilinear resize of alpha to the skip's size
    skip  = alpha * x_skip

``W_g`` and ``psi`` are 1x1 convolutions with bias. ``W_x`` is a 1x1 convolution applied with
stride 2 in Oktay's description of the gate; like Oktay's reference code we give it a 2x2 window
(kernel = stride = 2, no bias), so it sees all four skip pixels under each gating pixel instead of
one in four. The coefficients are returned as activations ``att{i}`` ``(B, H_i, W_i, 1)`` and
listed in :attr:`AttentionUNet.explanation_maps`: they are where the network chose to pass
encoder detail to the decoder, an explanation map of their own beside Grad-CAM.

Activations in forward order: ``enc0 .. enc{depth}``, then per decoder level ``att{i}``,
``dec{i}`` for ``i = depth - 1 .. 0``; enc*/dec* have the U-Net's names and shapes, so Grad-CAM's
default layer ``dec0`` works unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.models.conv import Conv, ConvTranspose
from jaxseg.models.layers import (ConvBlock, EncoderFeatures, add_perturbation, check_perturb_names,
                                  encode_levels)


class AttentionGate(nnx.Module):
    """Additive attention gate for one skip connection.

    Args:
      skip_features: channels of the skip ``x`` ``(B, H, W, skip_features)``.
      gate_features: channels of the gating signal ``g`` ``(B, H / 2, W / 2, gate_features)``.
      inter_features: F_int, the channels of the joint representation.
      dtype: compute dtype.
    """

    def __init__(self, skip_features: int, gate_features: int, inter_features: int, *,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.w_x = Conv(skip_features, inter_features, (2, 2), strides=(2, 2), padding="VALID",
                        use_bias=False, dtype=dtype, rngs=rngs)
        self.w_g = Conv(gate_features, inter_features, (1, 1), dtype=dtype, rngs=rngs)
        self.psi = Conv(inter_features, 1, (1, 1), dtype=dtype, rngs=rngs)

    def coefficients(self, x: jax.Array, g: jax.Array) -> jax.Array:
        """``x (B, H, W, Cx)``, ``g (B, H/2, W/2, Cg)`` -> ``alpha (B, H, W, 1)`` in [0, 1]."""
        q = jax.nn.relu(self.w_x(x) + self.w_g(g.astype(x.dtype)))
        alpha = jax.nn.sigmoid(self.psi(q).astype(jnp.float32))
        # Bilinear with half-pixel centres (PyTorch align_corners=False); upsampling only, and a
        # convex combination of values in [0, 1] stays in [0, 1].
        alpha = jax.image.resize(alpha, (*x.shape[:3], 1), method="linear")
        return alpha.astype(x.dtype)


class AttentionUNet(nnx.Module):
    """Attention U-Net for ``(B, H, W, in_channels)`` images; ``H``, ``W`` divisible by ``2**depth``.

    Arguments as :class:`~jaxseg.models.unet.UNet`. With the default features
    (32, 64, 128, 256, 512), one input and one output channel it has 8,024,069 parameters: the
    U-Net's 7,762,465 plus 261,604 in the four gates.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 features: tuple[int, ...] = (32, 64, 128, 256, 512), dropout: float = 0.0, *,
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
        # The U-Net's dropout sites and numbering (bottleneck = depth, decoder i = i).
        self.encoders = nnx.List([
            ConvBlock(in_channels if i == 0 else features[i - 1], features[i],
                      dropout=dropout if i == d else 0.0, dropout_index=i, dtype=dtype, rngs=rngs)
            for i in range(d + 1)])
        self.gates = nnx.List([
            AttentionGate(features[i], features[i + 1], max(1, features[i] // 2), dtype=dtype, rngs=rngs)
            for i in range(d)])
        self.upsamplers = nnx.List([
            ConvTranspose(features[i + 1], features[i], (2, 2), strides=(2, 2), padding="VALID",
                          dtype=dtype, rngs=rngs)
            for i in range(d)])
        self.decoders = nnx.List([
            ConvBlock(2 * features[i], features[i], dropout=dropout, dropout_index=i, dtype=dtype,
                      rngs=rngs)
            for i in range(d)])
        self.head = Conv(features[0], out_channels, (1, 1), dtype=dtype, rngs=rngs)

    @property
    def activation_names(self) -> tuple[str, ...]:
        """Names of the returned activations, in forward order."""
        d = self.depth
        decoder = tuple(name for i in range(d - 1, -1, -1) for name in (f"att{i}", f"dec{i}"))
        return tuple(f"enc{i}" for i in range(d + 1)) + decoder

    @property
    def explanation_maps(self) -> tuple[str, ...]:
        """The attention-gate coefficients ``att{depth-1} .. att0``, each ``(B, H_i, W_i, 1)``."""
        return tuple(f"att{i}" for i in range(self.depth - 1, -1, -1))

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                 perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Segment a batch of slices; arguments and returns as :meth:`UNet.__call__
        <jaxseg.models.unet.UNet.__call__>`, plus activations ``att{i}``
        ``(B, H / 2**i, W / 2**i, 1)`` in [0, 1] (a perturbation of ``att{i}`` is added to the
        coefficients before they scale the skip)."""
        batch, height, width, channels = x.shape
        factor = 2 ** self.depth
        if channels != self.in_channels:
            raise ValueError(f"AttentionUNet expects {self.in_channels} input channels, got input of shape {x.shape}")
        if height % factor or width % factor:
            raise ValueError(f"AttentionUNet of depth {self.depth} needs H and W divisible by {factor}, got {x.shape}")
        check_perturb_names(perturb, self.activation_names)

        return self.decode(self.encode(x, train=train, perturb=perturb), train=train,
                           dropout_key=dropout_key, perturb=perturb)

    def encode(self, x: jax.Array, *, train: bool = False,
               perturb: dict[str, jax.Array] | None = None) -> EncoderFeatures:
        """Everything before the first dropout site, as :meth:`UNet.encode
        <jaxseg.models.unet.UNet.encode>` (the same encoder and bottleneck)."""
        size = tuple(x.shape[1:-1])
        x, activations = encode_levels(self.encoders, x, self.depth, train=train, perturb=perturb)
        return EncoderFeatures(activations, self.encoders[self.depth].first(x, train=train), size)

    def decode(self, features: EncoderFeatures, *, train: bool = False, dropout_key: jax.Array | None = None,
               perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The rest of the forward pass; ``decode(encode(x))`` is ``__call__(x)``."""
        activations = dict(features.activations)
        d = self.depth
        x = self.encoders[d].second(features.carry, train=train, dropout_key=dropout_key)
        x = add_perturbation(x, f"enc{d}", perturb)
        activations[f"enc{d}"] = x
        for i in range(d - 1, -1, -1):
            skip = activations[f"enc{i}"].astype(x.dtype)
            alpha = self.gates[i].coefficients(skip, x)  # x is the gating signal: one level coarser
            alpha = add_perturbation(alpha, f"att{i}", perturb)
            activations[f"att{i}"] = alpha
            up = self.upsamplers[i](x)
            x = jnp.concatenate([up, alpha * skip], axis=-1)
            x = self.decoders[i](x, train=train, dropout_key=dropout_key)
            x = add_perturbation(x, f"dec{i}", perturb)
            activations[f"dec{i}"] = x
        logits = self.head(x).astype(jnp.float32)
        return logits, activations
