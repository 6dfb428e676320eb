"""Building blocks shared by the segmentation models (U-Net now; attention, residual and 3D
U-Nets later): the double convolution block, explicit dropout, max pooling and the
perturbation hook that makes named activations differentiable for Grad-CAM.

Everything is channel-last and works for any number of spatial dimensions (2 for slices, 3 for
volumes), so a 3D U-Net reuses these with ``spatial_dims=3``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxseg.models.conv import Conv

# PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (Flax keeps `momentum` of the old average). The
# U-Nets we compare against are PyTorch models, so running statistics follow the same recurrence.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def dropout(x: jax.Array, rate: float, key: jax.Array | None, index: int) -> jax.Array:
    """Inverted dropout that is a pure function of ``(key, index)``.

    Args:
      x: any shape and dtype.
      rate: probability of zeroing an element, in [0, 1).
      key: a PRNG key, or None for the identity. Passing a key switches dropout on whatever the
        batch-norm mode is, so Monte-Carlo dropout is ``train=False`` with a new key per sample.
      index: distinguishes the dropout sites of one model; the site's mask comes from
        ``jax.random.fold_in(key, index)``, so two sites never share a mask.

    Returns:
      ``x`` with dropped elements zeroed and kept ones scaled by ``1 / (1 - rate)``, so the
      expected activation equals the one without dropout.
    """
    if key is None or rate == 0.0:
        return x
    keep = keep_mask(jax.random.fold_in(key, index), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


def _lowbias32(x: jax.Array) -> jax.Array:
    """C. Wellons' ``lowbias32`` integer hash (a bijection of uint32 with full avalanche; "Hash
    Prospector", 2018): xor-shift, odd multiply, xor-shift, odd multiply, xor-shift."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def keep_mask(key: jax.Array, keep: float, shape: tuple[int, ...]) -> jax.Array:
    """A ``shape`` bool array, each element True with probability ``keep`` (to 2^-32),
    independently, as a pure function of ``key``: the dropout mask of :func:`dropout`.

    Counter-based: two 32-bit seeds come from ``key`` by threefry (``jax.random.bits``), then
    element ``i`` (its row-major index) is kept iff ``h(h(i ^ s0) + s1) < keep * 2^32`` with ``h``
    :func:`_lowbias32`. This is what ``jax.random.bernoulli`` does with threefry bits per element,
    at a fraction of the cost: a few vectorised integer operations per element, fused with the
    select, instead of threefry's 20 rounds, which XLA's CPU backend does not vectorise. On the
    2-core benchmark CPU a 16 x 128 x 128 x 16 mask took 44 ms with ``bernoulli`` and 1.1 ms with
    this (vmapped over 5 keys: 297 vs 5 ms); the masks were most of the cost of a Monte-Carlo
    dropout pass (docs/speed.md). Each seed pair gives a bijection of the counters, so one mask
    holds no repeated draw.
    """
    size = 1
    for n in shape:
        size *= int(n)
    if size >= 2**32:
        raise ValueError(f"a dropout mask of {size} elements needs more than 32-bit counters; shape {shape}")
    seed = jax.random.bits(key, (2,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    bits = _lowbias32(_lowbias32(counter ^ seed[0]) + seed[1])
    return bits < jnp.uint32(min(round(float(keep) * 2.0**32), 2**32 - 1))


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping max pooling over every spatial axis of ``(B, *spatial, C)``.

    Spatial sizes must be divisible by ``window`` (the U-Nets check this on their input).
    """
    batch, *spatial, channels = x.shape
    shape = [batch]
    for size in spatial:
        shape += [size // window, window]
    x = x.reshape(*shape, channels)
    return x.max(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def add_perturbation(x: jax.Array, name: str, perturb: dict[str, jax.Array] | None) -> jax.Array:
    """``x + perturb[name]`` if that entry exists, else ``x``.

    A model calls this on each named activation before anything downstream uses it, so
    ``jax.grad`` of a score with respect to a zero ``perturb[name]`` is exactly the gradient with
    respect to that activation (Grad-CAM without hooks, CONTRIBUTING.md, habit 1). The perturbation is
    cast to the activation's dtype so bf16 models stay bf16.
    """
    if perturb is None or name not in perturb:
        return x
    delta = perturb[name]
    if delta.shape != x.shape:
        raise ValueError(f"perturb[{name!r}] has shape {delta.shape}; the activation has {x.shape}")
    return x + delta.astype(x.dtype)


def check_perturb_names(perturb: dict[str, jax.Array] | None, names: tuple[str, ...]) -> None:
    """Raise on a perturbation for an activation the model does not have (a typo would
    otherwise give an all-zero Grad-CAM silently)."""
    if perturb:
        unknown = sorted(set(perturb) - set(names))
        if unknown:
            raise ValueError(f"perturb names {unknown} are not activations of this model; known: {names}")


class ConvBlock(nnx.Module):
    """Two (3x3 conv 'SAME' -> batch norm -> ReLU) layers, optionally with dropout between them.

    The convolutions have no bias: the batch norm that follows subtracts the mean anyway (as in
    the PyTorch U-Nets whose parameter counts we match).

    Args:
      in_features, out_features: channels in and out.
      dropout: rate applied after the first ReLU (only when ``__call__`` gets a key).
      dropout_index: the ``fold_in`` index of this block's dropout site; unique per model.
      spatial_dims: 2 for (B, H, W, C), 3 for (B, X, Y, Z, C).
      dtype: compute dtype (parameters are always float32).
    """

    def __init__(self, in_features: int, out_features: int, *, dropout: float = 0.0,
                 dropout_index: int = 0, spatial_dims: int = 2, kernel_size: int = 3,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        kernel = (kernel_size,) * spatial_dims
        self.conv1 = Conv(in_features, out_features, kernel, padding="SAME", use_bias=False,
                          dtype=dtype, rngs=rngs)
        self.norm1 = nnx.BatchNorm(out_features, momentum=BATCH_NORM_MOMENTUM,
                                   epsilon=BATCH_NORM_EPSILON, dtype=dtype, rngs=rngs)
        self.conv2 = Conv(out_features, out_features, kernel, padding="SAME", use_bias=False,
                          dtype=dtype, rngs=rngs)
        self.norm2 = nnx.BatchNorm(out_features, momentum=BATCH_NORM_MOMENTUM,
                                   epsilon=BATCH_NORM_EPSILON, dtype=dtype, rngs=rngs)
        self.dropout_rate = dropout
        self.dropout_index = dropout_index

    def __call__(self, x: jax.Array, *, train: bool, dropout_key: jax.Array | None = None) -> jax.Array:
        """``x (B, *spatial, in_features)`` -> ``(B, *spatial, out_features)`` in the compute dtype.

        ``train=True`` normalises with batch statistics and updates the running averages;
        ``train=False`` uses the running averages.
        """
        return self.second(self.first(x, train=train), train=train, dropout_key=dropout_key)

    def first(self, x: jax.Array, *, train: bool) -> jax.Array:
        """The part before the dropout site: first conv -> batch norm -> ReLU."""
        return jax.nn.relu(self.norm1(self.conv1(x), use_running_average=not train))

    def second(self, x: jax.Array, *, train: bool, dropout_key: jax.Array | None = None) -> jax.Array:
        """The part from the dropout site on: dropout -> second conv -> batch norm -> ReLU."""
        x = dropout(x, self.dropout_rate, dropout_key, self.dropout_index)
        return jax.nn.relu(self.norm2(self.conv2(x), use_running_average=not train))


@struct.dataclass
class EncoderFeatures:
    """What ``model.encode(x)`` computed before the model's first dropout site, for
    ``model.decode(features, dropout_key=k)`` to continue from: Monte-Carlo dropout computes it
    once per batch and only the rest per key (:mod:`jaxseg.explain.mc_shared`).

    Attributes:
      activations: the named activations finished so far (``enc0 ..``), as ``__call__`` returns them.
      carry: the array the decoder continues from (model-specific; the model's docstring says).
      input_size: the input's spatial shape (static, not traced).
    """
    activations: dict[str, jax.Array]
    carry: jax.Array
    input_size: tuple[int, ...] = struct.field(pytree_node=False, default=())


def encode_levels(blocks, x: jax.Array, levels: int, *, train: bool,
                  perturb: dict[str, jax.Array] | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The U-Net encoder's first ``levels`` levels: block ``i`` (no dropout there), the
    perturbation of ``enc{i}``, 2x max pooling. Returns the pooled output and ``enc0 ..
    enc{levels-1}``."""
    activations: dict[str, jax.Array] = {}
    for i in range(levels):
        x = add_perturbation(blocks[i](x, train=train), f"enc{i}", perturb)
        activations[f"enc{i}"] = x
        x = max_pool(x)
    return x, activations
