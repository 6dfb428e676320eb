"""The ResNet-34 U-Net of segmentation_models_pytorch (``smp.Unet('resnet34')``), in Flax NNX.

Encoder: torchvision's ResNet-34 without its classifier. A 7x7 stride-2 convolution, batch norm
and ReLU (``enc0``, the first skip, taken BEFORE pooling), a 3x3 stride-2 max pool with padding
1, then four stages of :class:`BasicBlock` (``encoder_depths`` blocks, default 3, 4, 6, 3;
``enc1 .. enc4``); stages 2-4 start with a stride-2 block. ``features`` are the widths of the stem
and the four stages (ResNet-34: 64, 64, 128, 256, 512).

Decoder: five :class:`DecoderBlock` (``decoder_features``, default 256, 128, 64, 32, 16). Each
upsamples to the exact spatial size of the next skip (the last one to the input size), appends
that skip (``enc3, enc2, enc1, enc0``, none for the last block) and applies two 3x3
conv-BN-ReLU. A 3x3 convolution with bias maps the last block to the logits.

Conventions copied on purpose so that imported PyTorch weights give the same numbers
(``tests/models/test_torch_import.py`` compares with a torch twin):

- every padding is torch's explicit symmetric padding (a stride-2 layer maps ``n`` to
  ``ceil(n / 2)``); Flax's ``'SAME'`` pads stride-2 layers asymmetrically and would shift them;
- upsampling is torch's legacy ``F.interpolate(mode="nearest", size=...)``: output index ``i``
  reads input ``min(floor(i * float32(n_in / n_out)), n_in - 1)`` (not ``nearest-exact``).

So any ``H, W`` works, as in smp >= 0.4 whose decoder upsamples to the skip sizes.

Named activations (CONTRIBUTING.md, habit 1): ``enc0`` (H/2), ``enc1`` (H/4) .. ``enc4`` (H/32), and
``dec4 .. dec0`` for the five decoder blocks, ``dec{i}`` at resolution ``H / 2**i`` (``dec0``
at full resolution, Grad-CAM's default layer). Sizes are ceil-rounded for odd inputs.

``input_mode="pseudo_rgb"``: the model takes one channel and copies it three times before the
stem, so ImageNet (RGB) stem weights load unchanged. Dropout (``dropout``, off by default as in
smp) sits between the two convolutions of every decoder block and only runs with a key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxseg.models.conv import Conv
from jaxseg.models.layers import (BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, EncoderFeatures,
                                  add_perturbation, check_perturb_names, dropout)

RESNET34_FEATURES = (64, 64, 128, 256, 512)
RESNET34_DEPTHS = (3, 4, 6, 3)
UNET_DECODER_FEATURES = (256, 128, 64, 32, 16)


def _norm(features: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                         dtype=dtype, rngs=rngs)


def _conv(in_features: int, out_features: int, kernel: int, stride: int, dtype: jnp.dtype,
          rngs: nnx.Rngs, *, bias: bool = False) -> nnx.Conv:
    """A torch-style convolution: symmetric padding ``kernel // 2`` on each side."""
    pad = kernel // 2
    return Conv(in_features, out_features, (kernel, kernel), strides=(stride, stride),
                padding=((pad, pad), (pad, pad)), use_bias=bias, dtype=dtype, rngs=rngs)


def torch_max_pool(x: jax.Array) -> jax.Array:
    """torch's ``MaxPool2d(3, stride=2, padding=1)`` on ``(B, H, W, C)``: padding never wins."""
    # A Python -inf init makes this the differentiable reduce_window_max primitive.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source indices of torch's legacy ``nearest`` interpolation from ``size_in`` to ``size_out``
    (``upsample_nearest2d`` with an explicit size; computed in float32 as torch does)."""
    if size_out == size_in:
        return np.arange(size_out)
    if size_out == 2 * size_in:
        return np.arange(size_out) // 2
    scale = np.float32(size_in) / np.float32(size_out)
    index = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, size_in - 1)


def upsample_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
    """``(B, h, w, C)`` -> ``(B, height, width, C)`` as ``F.interpolate(mode="nearest")``."""
    x = jnp.take(x, jnp.asarray(nearest_indices(x.shape[1], height)), axis=1)
    return jnp.take(x, jnp.asarray(nearest_indices(x.shape[2], width)), axis=2)


class BasicBlock(nnx.Module):
    """torchvision's ResNet BasicBlock: two 3x3 conv-BN (the first with ``stride``), a 1x1
    conv-BN shortcut when the stride or the width changes, then ReLU of the sum."""

    def __init__(self, in_features: int, out_features: int, stride: int, *, dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        self.conv1 = _conv(in_features, out_features, 3, stride, dtype, rngs)
        self.norm1 = _norm(out_features, dtype, rngs)
        self.conv2 = _conv(out_features, out_features, 3, 1, dtype, rngs)
        self.norm2 = _norm(out_features, dtype, rngs)
        self.has_downsample = stride != 1 or in_features != out_features
        if self.has_downsample:
            self.downsample_conv = _conv(in_features, out_features, 1, stride, dtype, rngs)
            self.downsample_norm = _norm(out_features, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """``(B, H, W, in)`` -> ``(B, ceil(H / stride), ceil(W / stride), out)``."""
        y = jax.nn.relu(self.norm1(self.conv1(x), use_running_average=not train))
        y = self.norm2(self.conv2(y), use_running_average=not train)
        if self.has_downsample:
            x = self.downsample_norm(self.downsample_conv(x), use_running_average=not train)
        return jax.nn.relu(y + x)


class DecoderBlock(nnx.Module):
    """smp's Unet ``DecoderBlock``: nearest upsampling to the skip's size, concatenation, and two
    3x3 conv-BN-ReLU (dropout between them when a key is given)."""

    def __init__(self, in_features: int, skip_features: int, out_features: int, *, dropout: float,
                 dropout_index: int, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.conv1 = _conv(in_features + skip_features, out_features, 3, 1, dtype, rngs)
        self.norm1 = _norm(out_features, dtype, rngs)
        self.conv2 = _conv(out_features, out_features, 3, 1, dtype, rngs)
        self.norm2 = _norm(out_features, dtype, rngs)
        self.dropout_rate = dropout
        self.dropout_index = dropout_index

    def __call__(self, x: jax.Array, size: tuple[int, int], skip: jax.Array | None, *, train: bool,
                 dropout_key: jax.Array | None) -> jax.Array:
        x = upsample_nearest(x, *size)
        if skip is not None:
            x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
        x = jax.nn.relu(self.norm1(self.conv1(x), use_running_average=not train))
        x = dropout(x, self.dropout_rate, dropout_key, self.dropout_index)
        return jax.nn.relu(self.norm2(self.conv2(x), use_running_average=not train))


class ResUNet(nnx.Module):
    """ResNet U-Net for ``(B, H, W, in_channels)`` images of any size (at least 1 x 1).

    Args:
      in_channels: input channels (MRI modalities); 1 with ``input_mode="pseudo_rgb"``.
      out_channels: logit channels K.
      features: widths of the stem and the four stages (five entries).
      encoder_depths: BasicBlocks per stage (four entries).
      decoder_features: widths of the five decoder blocks.
      input_mode: ``"channels"`` (the stem reads ``in_channels``) or ``"pseudo_rgb"`` (one
        channel, copied three times for a 3-channel stem).
      dropout: rate of the decoder blocks' dropout, in [0, 1).
      dtype: compute dtype; parameters, batch statistics and logits stay float32.
      rngs: parameter initialisation keys.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 features: tuple[int, ...] = RESNET34_FEATURES,
                 encoder_depths: tuple[int, ...] = RESNET34_DEPTHS,
                 decoder_features: tuple[int, ...] = UNET_DECODER_FEATURES,
                 input_mode: str = "channels", dropout: float = 0.0, *,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        features, encoder_depths = tuple(map(int, features)), tuple(map(int, encoder_depths))
        decoder_features = tuple(map(int, decoder_features))
        if len(features) != 5 or len(encoder_depths) != 4 or len(decoder_features) != 5:
            raise ValueError("ResUNet needs five features, four encoder_depths and five decoder_features; got "
                             f"{features}, {encoder_depths}, {decoder_features}")
        if input_mode not in ("channels", "pseudo_rgb"):
            raise ValueError(f"input_mode must be channels or pseudo_rgb, got {input_mode!r}")
        if input_mode == "pseudo_rgb" and in_channels != 1:
            raise ValueError(f"pseudo_rgb takes one input channel, got in_channels={in_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input_mode = input_mode
        self.features = features
        self.encoder_depths = encoder_depths
        self.decoder_features = decoder_features
        self.dropout_rate = float(dropout)
        stem_in = 3 if input_mode == "pseudo_rgb" else in_channels
        self.stem_conv = Conv(stem_in, features[0], (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                              use_bias=False, dtype=dtype, rngs=rngs)
        self.stem_norm = _norm(features[0], dtype, rngs)
        stages = []
        for s, depth in enumerate(encoder_depths):
            stride = 1 if s == 0 else 2
            stages.append(nnx.List([
                BasicBlock(features[s] if b == 0 else features[s + 1], features[s + 1], stride if b == 0 else 1,
                           dtype=dtype, rngs=rngs)
                for b in range(depth)]))
        self.stages = nnx.List(stages)
        # Block i reads the previous block (the encoder's head for i = 0) and skip enc{3 - i}.
        ins = (features[4],) + decoder_features[:-1]
        skips = (features[3], features[2], features[1], features[0], 0)
        self.decoder = nnx.List([
            DecoderBlock(ins[i], skips[i], decoder_features[i], dropout=dropout, dropout_index=i,
                         dtype=dtype, rngs=rngs)
            for i in range(5)])
        self.head = _conv(decoder_features[-1], out_channels, 3, 1, dtype, rngs, bias=True)

    @property
    def activation_names(self) -> tuple[str, ...]:
        """Names of the returned activations, in forward order."""
        return tuple(f"enc{i}" for i in range(5)) + tuple(f"dec{i}" for i in range(4, -1, -1))

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                 perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Segment a batch of slices.

        Args:
          x: ``(B, H, W, in_channels)`` float images, any ``H, W``.
          train: batch statistics (and running-average updates) iff True.
          dropout_key: switches the decoder's dropout on (in any mode); None = no dropout.
          perturb: optional ``name -> array`` added to that activation (see ``UNet``).

        Returns:
          ``(logits, activations)``: logits ``(B, H, W, out_channels)`` float32; activations as
          described in the module docstring, in the compute dtype.
        """
        batch, height, width, channels = x.shape
        if channels != self.in_channels:
            raise ValueError(f"ResUNet expects {self.in_channels} input channels, got input of shape {x.shape}")
        check_perturb_names(perturb, self.activation_names)
        return self.decode(self.encode(x, train=train, perturb=perturb), train=train,
                           dropout_key=dropout_key, perturb=perturb)

    def encode(self, x: jax.Array, *, train: bool = False,
               perturb: dict[str, jax.Array] | None = None) -> EncoderFeatures:
        """The whole ResNet encoder (dropout sits only in the decoder blocks): ``enc0 .. enc4``;
        the carry is ``enc4``."""
        input_size = x.shape[1:3]
        if self.input_mode == "pseudo_rgb":
            x = jnp.concatenate([x, x, x], axis=-1)
        activations: dict[str, jax.Array] = {}
        x = jax.nn.relu(self.stem_norm(self.stem_conv(x), use_running_average=not train))
        x = add_perturbation(x, "enc0", perturb)
        activations["enc0"] = x
        x = torch_max_pool(x)
        for s, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, train=train)
            x = add_perturbation(x, f"enc{s + 1}", perturb)
            activations[f"enc{s + 1}"] = x
        return EncoderFeatures(activations, x, tuple(input_size))

    def decode(self, features: EncoderFeatures, *, train: bool = False, dropout_key: jax.Array | None = None,
               perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The decoder from :meth:`encode`'s features; ``decode(encode(x))`` is ``__call__(x)``."""
        activations = dict(features.activations)
        x = features.carry
        # Decoder block i upsamples to skip enc{3 - i}'s size; the last one to the input's.
        skips = [activations[f"enc{i}"] for i in (3, 2, 1, 0)] + [None]
        sizes = [s.shape[1:3] for s in skips[:-1]] + [features.input_size]
        for i, block in enumerate(self.decoder):
            x = block(x, sizes[i], skips[i], train=train, dropout_key=dropout_key)
            name = f"dec{4 - i}"
            x = add_perturbation(x, name, perturb)
            activations[name] = x
        logits = self.head(x).astype(jnp.float32)
        return logits, activations
