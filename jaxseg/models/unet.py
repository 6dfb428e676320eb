"""The 2D U-Net of the pediatric-BraTS work, in Flax NNX, channel-last.

Encoder level ``i`` is a :class:`~jaxseg.models.layers.ConvBlock` with ``features[i]`` channels,
followed by 2x2 max pooling (except the last level, the bottleneck). Decoder level ``i`` (from
``depth - 1`` down to 0) upsamples with a 2x2 stride-2 transposed convolution to ``features[i]``
channels, concatenates the skip connection ``enc{i}`` and applies another ConvBlock. A 1x1
convolution maps ``features[0]`` channels to the logits. With the default features
(32, 64, 128, 256, 512), one input and one output channel it has 7,762,465 parameters (the
7.76 M quoted for the PyTorch model).

Dropout sits between the two convolutions of the bottleneck block and of every decoder block
(``model.dropout`` in the config), never in the encoder, and it only runs when a key is given.
:meth:`UNet.encode` computes everything before the bottleneck's dropout and :meth:`UNet.decode`
the rest, so Monte-Carlo dropout runs the encoder once per batch.

The forward pass returns the named activations Grad-CAM needs (CONTRIBUTING.md, habit 1):
``enc0 .. enc{depth}`` (``enc{depth}`` is the bottleneck) and ``dec{depth-1} .. dec0``.

``spatial_dims=3`` gives the same network on volumes (every layer its 3D counterpart); the 3D
U-Net (:mod:`jaxseg.models.unet3d`) is exactly that.

Deep supervision (``deep_supervision=k``, nnU-Net's): 1x1 heads on ``dec1 .. dec{k}`` give
logits at 1/2 .. 1/2**k of the input size (:meth:`UNet.auxiliary_logits`). Only the train step
calls them (:func:`jaxseg.train.losses.deep_supervision_loss`); the forward pass, and so
prediction and every explanation, is the same network without them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.models.conv import Conv, ConvTranspose
from jaxseg.models.layers import (ConvBlock, EncoderFeatures, add_perturbation, check_perturb_names,
                                  encode_levels)


class UNet(nnx.Module):
    """U-Net for ``(B, H, W, in_channels)`` images (or ``(B, X, Y, Z, in_channels)`` volumes with
    ``spatial_dims=3``); every spatial size divisible by ``2**depth``.

    Args:
      in_channels: input channels (MRI modalities).
      out_channels: logit channels K (1 for WT, 3 for WT/TC/ET regions, 4 for classes).
      features: channels per level; ``depth = len(features) - 1`` poolings; the last entry is
        the bottleneck.
      dropout: dropout rate in the bottleneck and decoder blocks, in [0, 1).
      spatial_dims: 2 (slices) or 3 (volumes).
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision); parameters, batch statistics
        and the returned logits are float32 whatever it is.
      deep_supervision: auxiliary 1x1 heads on decoder levels ``1 .. deep_supervision`` (0 = none;
        at most ``depth - 1``). They are created after every other layer, so the rest of the
        network draws the same initial values with or without them.
      rngs: parameter initialisation keys.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 features: tuple[int, ...] = (32, 64, 128, 256, 512), dropout: float = 0.0, *,
                 spatial_dims: int = 2, dtype: jnp.dtype = jnp.float32, deep_supervision: int = 0,
                 rngs: nnx.Rngs):
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features must list at least two positive channel counts, got {features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.depth = len(features) - 1
        self.dropout_rate = float(dropout)
        d = self.depth
        # Dropout sites are numbered by level (bottleneck = depth, decoder i = i), so each block
        # draws its own mask from fold_in(dropout_key, level).
        self.encoders = nnx.List([
            ConvBlock(in_channels if i == 0 else features[i - 1], features[i],
                      dropout=dropout if i == d else 0.0, dropout_index=i, spatial_dims=spatial_dims,
                      dtype=dtype, rngs=rngs)
            for i in range(d + 1)])
        self.upsamplers = nnx.List([
            ConvTranspose(features[i + 1], features[i], (2,) * spatial_dims, strides=(2,) * spatial_dims,
                          padding="VALID", dtype=dtype, rngs=rngs)
            for i in range(d)])
        self.decoders = nnx.List([
            ConvBlock(2 * features[i], features[i], dropout=dropout, dropout_index=i,
                      spatial_dims=spatial_dims, dtype=dtype, rngs=rngs)
            for i in range(d)])
        self.head = Conv(features[0], out_channels, (1,) * spatial_dims, dtype=dtype, rngs=rngs)
        if not 0 <= deep_supervision <= d - 1:
            raise ValueError(f"deep_supervision must be in [0, {d - 1}] for depth {d}, got {deep_supervision}")
        self.deep_supervision = int(deep_supervision)
        if deep_supervision:  # absent otherwise: a run without it keeps its parameter tree
            self.auxiliary_heads = nnx.List([
                Conv(features[i], out_channels, (1,) * spatial_dims, dtype=dtype, rngs=rngs)
                for i in range(1, deep_supervision + 1)])

    @property
    def activation_names(self) -> tuple[str, ...]:
        """Names of the returned activations, in forward order."""
        d = self.depth
        return tuple(f"enc{i}" for i in range(d + 1)) + tuple(f"dec{i}" for i in range(d - 1, -1, -1))

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                 perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Segment a batch of slices (or volumes with ``spatial_dims=3``).

        Args:
          x: ``(B, H, W, in_channels)`` float images, ``(B, X, Y, Z, in_channels)`` for 3D.
          train: batch norm normalises with batch statistics and updates its running averages
            iff True (so a train-mode call mutates the module; run it under ``nnx.split`` /
            ``nnx.merge`` in a pure step).
          dropout_key: switches dropout on (in any mode); None = no dropout.
          perturb: optional ``name -> array`` added to that activation before it is used
            downstream; shapes as the activation. ``jax.grad`` with respect to a zero entry is
            the gradient with respect to the activation.

        Returns:
          ``(logits, activations)``: logits ``(B, H, W, out_channels)`` float32; activations
          maps each name of :attr:`activation_names` to its (perturbed) value in the compute
          dtype: ``enc{i}`` and ``dec{i}`` have shape ``(B, H / 2**i, W / 2**i, features[i])``.
        """
        name, factor = type(self).__name__, 2 ** self.depth
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"{name} expects {self.spatial_dims} spatial axes plus batch and channels, "
                             f"got input of shape {x.shape}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"{name} expects {self.in_channels} input channels, got input of shape {x.shape}")
        if any(size % factor for size in x.shape[1:-1]):
            raise ValueError(f"{name} of depth {self.depth} needs every spatial size divisible by {factor}, "
                             f"got {x.shape}")
        check_perturb_names(perturb, self.activation_names)
        return self.decode(self.encode(x, train=train, perturb=perturb), train=train,
                           dropout_key=dropout_key, perturb=perturb)

    def encode(self, x: jax.Array, *, train: bool = False,
               perturb: dict[str, jax.Array] | None = None) -> EncoderFeatures:
        """Everything before the first dropout site: the encoder levels ``enc0 ..
        enc{depth-1}`` and the bottleneck's first convolution (its dropout comes next). The
        carry is that half-done bottleneck ``(B, *spatial / 2**depth, features[depth])``."""
        size = tuple(x.shape[1:-1])
        x, activations = encode_levels(self.encoders, x, self.depth, train=train, perturb=perturb)
        return EncoderFeatures(activations, self.encoders[self.depth].first(x, train=train), size)

    def decode(self, features: EncoderFeatures, *, train: bool = False, dropout_key: jax.Array | None = None,
               perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The rest of the forward pass from :meth:`encode`'s features; ``decode(encode(x))``
        is ``__call__(x)`` (same arguments and returns)."""
        activations = dict(features.activations)
        d = self.depth
        x = self.encoders[d].second(features.carry, train=train, dropout_key=dropout_key)
        x = add_perturbation(x, f"enc{d}", perturb)
        activations[f"enc{d}"] = x
        for i in range(d - 1, -1, -1):
            x = self.upsamplers[i](x)
            x = jnp.concatenate([x, activations[f"enc{i}"].astype(x.dtype)], axis=-1)
            x = self.decoders[i](x, train=train, dropout_key=dropout_key)
            x = add_perturbation(x, f"dec{i}", perturb)
            activations[f"dec{i}"] = x
        logits = self.head(x).astype(jnp.float32)
        return logits, activations

    def auxiliary_logits(self, activations: dict[str, jax.Array]) -> list[jax.Array]:
        """The deep-supervision logits ``[dec1 head, .., dec{k} head]`` float32 from a forward
        pass's ``activations``: level ``i`` has ``(B, *spatial / 2**i, out_channels)``. Empty
        without deep supervision."""
        if not self.deep_supervision:
            return []
        return [head(activations[f"dec{i}"]).astype(jnp.float32)
                for i, head in enumerate(self.auxiliary_heads, start=1)]
