"""TransUNet (Chen et al. 2021): a CNN encoder, a Vision Transformer on its bottleneck tokens and a
U-Net decoder with skip connections, in Flax NNX, channel-last.

- **CNN encoder**: the U-Net's encoder (:class:`~jaxseg.models.layers.ConvBlock` per level,
  2x2 max pooling), activations ``enc0 .. enc{depth}``; ``enc{depth}`` ``(B, h, w, features[-1])``
  with ``h = H / 2**depth`` is the bottleneck.
- **Transformer**: every bottleneck pixel is a token (patch size 1, as TransUNet's hybrid
  encoder). A linear projection to ``dim`` channels plus learned position embeddings (one per
  token of the configured ``image_size``; bilinearly interpolated on the token grid when an input
  of another size comes in), then ``layers`` pre-norm blocks
  ``t = t + MHSA(LN(t)); t = t + MLP(LN(t))`` (``heads`` heads, MLP ``dim -> mlp_dim -> dim``
  with GELU) and a final LayerNorm. Dropout sits in the MLP only (after the GELU and after the
  second linear layer) and runs only with a key, as in the U-Nets. The attention probabilities
  of layer ``l`` are the activation ``attn{l}`` ``(B, heads, T, T)``, ``T = h * w``, rows summing
  to one (query axis 2, key axis 3): :func:`jaxseg.explain.model_maps.attention_rollout` turns
  them into a map.
- **Back to the grid**: the tokens are reshaped to ``(B, h, w, dim)`` and a 3x3 convolution +
  batch norm + ReLU (TransUNet's ``conv_more``) gives ``vit`` ``(B, h, w, features[-1])``.
- **Decoder**: the U-Net's (2x2 transposed convolutions, concatenated skips ``enc{i}``,
  ConvBlocks), activations ``dec{depth-1} .. dec0``, and a 1x1 head.

The skip connections matter: a simplified TransUNet without skips (and without attention) reached
a test Dice of 0.07 in the BraTS-Africa work; the skips carry the full-resolution detail that the
coarse tokens cannot.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxseg.models.conv import Conv, ConvTranspose
from jaxseg.models.layers import (BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, ConvBlock, EncoderFeatures,
                                  add_perturbation, check_perturb_names, dropout, encode_levels)

_KERNEL_INIT = nnx.initializers.xavier_uniform()  # ViT's initialisation of linear layers


def _linear(n_in: int, n_out: int, dtype, rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=_KERNEL_INIT, dtype=dtype, rngs=rngs)


class EncoderBlock(nnx.Module):
    """One pre-norm transformer block on ``(B, T, dim)`` tokens.

    Args:
      dim: token width; divisible by ``heads``.
      heads: attention heads.
      mlp_dim: hidden width of the MLP.
      dropout_rate: MLP dropout (only with a key).
      dropout_index: first of the two ``fold_in`` indices of this block's dropout sites.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout_rate: float, dropout_index: int, *,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"transformer dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
        self.qkv = _linear(dim, 3 * dim, dtype, rngs)
        self.out = _linear(dim, dim, dtype, rngs)
        self.norm2 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
        self.mlp1 = _linear(dim, mlp_dim, dtype, rngs)
        self.mlp2 = _linear(mlp_dim, dim, dtype, rngs)
        self.dropout_rate = dropout_rate
        self.dropout_index = dropout_index

    def attention(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``t (B, T, dim)`` (already normalised) -> (output ``(B, T, dim)``, probabilities
        ``(B, heads, T, T)`` float32)."""
        batch, tokens, dim = t.shape
        head_dim = dim // self.heads
        qkv = self.qkv(t).reshape(batch, tokens, 3, self.heads, head_dim)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, heads, T, head_dim)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(head_dim))
        probs = jax.nn.softmax(logits, axis=-1)  # float32 even under bf16: rows must sum to one
        return probs, v

    def __call__(self, t: jax.Array, *, dropout_key: jax.Array | None, name: str,
                 perturb: dict[str, jax.Array] | None) -> tuple[jax.Array, jax.Array]:
        """``t (B, T, dim)`` -> (``(B, T, dim)``, attention probabilities ``(B, heads, T, T)``)."""
        batch, tokens, dim = t.shape
        probs, v = self.attention(self.norm1(t))
        probs = add_perturbation(probs, name, perturb)
        mixed = jnp.einsum("bhqk,bhkd->bqhd", probs.astype(v.dtype), v).reshape(batch, tokens, dim)
        t = t + self.out(mixed)
        h = jax.nn.gelu(self.mlp1(self.norm2(t)))
        h = dropout(h, self.dropout_rate, dropout_key, self.dropout_index)
        h = dropout(self.mlp2(h), self.dropout_rate, dropout_key, self.dropout_index + 1)
        return t + h, probs


class TransUNet(nnx.Module):
    """TransUNet for ``(B, H, W, in_channels)`` images; ``H``, ``W`` divisible by ``2**depth``.

    Args:
      in_channels, out_channels, features, dropout, dtype, rngs: as :class:`~jaxseg.models.unet.UNet`
        (``dropout`` is the transformer MLP's rate here).
      image_size: the training slice size; sets the number of position embeddings
        ``(image_size / 2**depth)**2``.
      layers, heads, dim, mlp_dim: the transformer (``model.transformer_*`` in the config).

    With features (32, 64, 128, 256, 512), image 128, 4 layers, 8 heads, dim 256 and MLP 1024
    (the config defaults), one input and one output channel it has 12,250,401 parameters: the
    U-Net's 7,762,465 plus 4,487,936 for the transformer (3,159,040 in its four blocks) and the
    3x3 convolution back to 512 channels (1,179,648).
    """

    def __init__(self, in_channels: int, out_channels: int,
                 features: tuple[int, ...] = (32, 64, 128, 256, 512), dropout: float = 0.0, *,
                 image_size: int = 128, layers: int = 4, heads: int = 8, dim: int = 256,
                 mlp_dim: int = 1024, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features must list at least two positive channel counts, got {features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if min(layers, heads, dim, mlp_dim) < 1:
            raise ValueError(f"transformer sizes must be positive, got {layers=}, {heads=}, {dim=}, {mlp_dim=}")
        d = len(features) - 1
        if image_size % 2 ** d:
            raise ValueError(f"image_size {image_size} is not divisible by 2**{d}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.depth = d
        self.dropout_rate = float(dropout)
        self.grid = image_size // 2 ** d  # token grid edge of the configured image size
        self.transformer_dim = dim
        self.encoders = nnx.List([
            ConvBlock(in_channels if i == 0 else features[i - 1], features[i], dtype=dtype, rngs=rngs)
            for i in range(d + 1)])
        self.embed = _linear(features[d], dim, dtype, rngs)
        self.position = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, self.grid ** 2, dim)))
        self.blocks = nnx.List([
            EncoderBlock(dim, heads, mlp_dim, dropout, 2 * layer, dtype=dtype, rngs=rngs)
            for layer in range(layers)])
        self.final_norm = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
        self.unembed = Conv(dim, features[d], (3, 3), padding="SAME", use_bias=False, dtype=dtype, rngs=rngs)
        self.unembed_norm = nnx.BatchNorm(features[d], momentum=BATCH_NORM_MOMENTUM,
                                          epsilon=BATCH_NORM_EPSILON, dtype=dtype, rngs=rngs)
        self.upsamplers = nnx.List([
            ConvTranspose(features[i + 1], features[i], (2, 2), strides=(2, 2), padding="VALID",
                          dtype=dtype, rngs=rngs)
            for i in range(d)])
        self.decoders = nnx.List([
            ConvBlock(2 * features[i], features[i], dtype=dtype, rngs=rngs) for i in range(d)])
        self.head = Conv(features[0], out_channels, (1, 1), dtype=dtype, rngs=rngs)

    @property
    def attention_names(self) -> tuple[str, ...]:
        """The attention probabilities ``attn0 .. attn{layers-1}``, each ``(B, heads, T, T)``."""
        return tuple(f"attn{layer}" for layer in range(len(self.blocks)))

    @property
    def activation_names(self) -> tuple[str, ...]:
        """Names of the returned activations, in forward order."""
        d = self.depth
        return (tuple(f"enc{i}" for i in range(d + 1)) + self.attention_names + ("vit",)
                + tuple(f"dec{i}" for i in range(d - 1, -1, -1)))

    def position_embeddings(self, h: int, w: int) -> jax.Array:
        """``(1, h * w, dim)``: the learned embeddings, bilinearly resized from the configured
        ``grid x grid`` token grid when the input's grid differs (as ViT fine-tuning does)."""
        table = self.position[...]
        if (h, w) == (self.grid, self.grid):
            return table
        dim = table.shape[-1]
        grid = table.reshape(1, self.grid, self.grid, dim)
        return jax.image.resize(grid, (1, h, w, dim), method="linear").reshape(1, h * w, dim)

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                 perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Segment a batch of slices; arguments and returns as :meth:`UNet.__call__
        <jaxseg.models.unet.UNet.__call__>`, plus activations ``attn{l}`` ``(B, heads, T, T)``
        float32 and ``vit`` ``(B, h, w, features[-1])``."""
        batch, height, width, channels = x.shape
        factor = 2 ** self.depth
        if channels != self.in_channels:
            raise ValueError(f"TransUNet expects {self.in_channels} input channels, got input of shape {x.shape}")
        if height % factor or width % factor:
            raise ValueError(f"TransUNet of depth {self.depth} needs H and W divisible by {factor}, got {x.shape}")
        check_perturb_names(perturb, self.activation_names)

        return self.decode(self.encode(x, train=train, perturb=perturb), train=train,
                           dropout_key=dropout_key, perturb=perturb)

    def encode(self, x: jax.Array, *, train: bool = False,
               perturb: dict[str, jax.Array] | None = None) -> EncoderFeatures:
        """Everything before the first dropout site (the first transformer block's MLP): the CNN
        encoder ``enc0 .. enc{depth}`` and the embedded tokens. The carry is the tokens with
        their position embeddings ``(B, h * w, dim)``."""
        size = tuple(x.shape[1:3])
        x, activations = encode_levels(self.encoders, x, self.depth, train=train, perturb=perturb)
        x = add_perturbation(self.encoders[self.depth](x, train=train), f"enc{self.depth}", perturb)
        activations[f"enc{self.depth}"] = x
        batch, h, w = x.shape[:3]
        tokens = self.embed(x.reshape(batch, h * w, -1))
        tokens = tokens + self.position_embeddings(h, w).astype(tokens.dtype)
        return EncoderFeatures(activations, tokens, size)

    def decode(self, features: EncoderFeatures, *, train: bool = False, dropout_key: jax.Array | None = None,
               perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The transformer and the decoder from :meth:`encode`'s features; ``decode(encode(x))``
        is ``__call__(x)``."""
        activations = dict(features.activations)
        tokens = features.carry
        batch, h, w = activations[f"enc{self.depth}"].shape[:3]  # the token grid
        for layer, block in enumerate(self.blocks):
            tokens, probs = block(tokens, dropout_key=dropout_key, name=f"attn{layer}", perturb=perturb)
            activations[f"attn{layer}"] = probs
        tokens = self.final_norm(tokens)
        x = self.unembed(tokens.reshape(batch, h, w, self.transformer_dim))
        x = jax.nn.relu(self.unembed_norm(x, use_running_average=not train))
        x = add_perturbation(x, "vit", perturb)
        activations["vit"] = x

        for i in range(self.depth - 1, -1, -1):
            x = self.upsamplers[i](x)
            x = jnp.concatenate([x, activations[f"enc{i}"].astype(x.dtype)], axis=-1)
            x = self.decoders[i](x, train=train)
            x = add_perturbation(x, f"dec{i}", perturb)
            activations[f"dec{i}"] = x
        logits = self.head(x).astype(jnp.float32)
        return logits, activations
