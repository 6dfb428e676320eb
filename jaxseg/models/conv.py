"""The one convolution layer every model uses, with a CPU-fast formulation (issue 6).

All models build their convolutions through :func:`Conv` and :func:`ConvTranspose`, so the
convolution primitive is chosen here and nowhere else. Parameters keep Flax's layout whatever
the primitive: ``kernel`` ``(*window, in, out)``, ``bias`` ``(out,)``.

**Why.** On CPU, a 2x2 stride-2 transposed convolution goes through XLA's general convolution
of a stride-dilated input (2.1 s of a 4.9 s train step), a 3D convolution ran 2-3x slower
than the same work as a 2D one, and a weight gradient can be slower than the same sum written
as matrix products. Measurements and the history: benchmarks/NOTES.md (section 10 is current).

- weight gradient of a convolution with window ``k``: for every tap ``t`` of the window,
  ``dW[t] = x_t^T dy`` where ``x_t`` is the (strided) shifted input that tap sees, flattened to
  ``(B * out_pixels, in)`` (:func:`weight_grad`), where that beats XLA's own weight gradient:
  below 16 input channels, or when YNNPACK runs the convolutions (:func:`_tap_weight_grad`).
  The input gradient stays XLA's own (a forward convolution).
- a transposed convolution whose window equals its stride (the U-Nets' 2x2 / 2x2x2 upsampler) is
  one ``(B * pixels, in) @ (in, prod(window) * out)`` product and a reshape
  (:func:`upsample_matmul`); its gradients are matrix products too.
- a 3D convolution is one 2D convolution with the depth taps stacked on the output or the
  input channels (:func:`_conv3d_via_2d`); its gradients follow by autodiff through the 2D one.

The XLA flag that gives convolutions to XLA rather than YNNPACK is set by the CLI
(:mod:`jaxseg.xla_flags`, ``jaxseg.xla_flags.apply()`` for library users); this module only
reads which library runs them.

**Which path.** Every layer's ``mode`` is ``"auto"`` (default), ``"fast"`` or ``"xla"``, a static
attribute fixed when the model is built: :func:`Conv` / :func:`ConvTranspose` take it,
:func:`set_mode` sets it on every convolution of a built model, and
``jaxseg.models.registry.build_model`` applies its ``conv_mode`` argument (default
:func:`default_mode`: ``JAXSEG_CONV`` or ``auto``). Being static, the mode is part of the
model's graphdef, so a jitted function keyed on the graphdef compiles again for another mode
instead of reusing a trace of the old one. ``auto`` lowers both formulations into
``jax.lax.platform_dependent``: the CPU backend runs the fast one, GPUs and TPUs (whose
libraries compute weight gradients well) run XLA's convolution. ``fast`` / ``xla`` force one
everywhere, so tests check both on CPU.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxseg.errors import JaxsegError
from jaxseg.xla_flags import xla_cpu_convolutions

MODES = ("auto", "fast", "xla")
_WGRAD_LOOP = os.environ.get("JAXSEG_WGRAD_LOOP", "1") == "1"  # experiment switch (benchmarks/NOTES.md)
# Which weight gradient the fast path uses: "auto" (see _tap_weight_grad), "taps" or "xla".
_WGRAD = os.environ.get("JAXSEG_WGRAD", "auto")
if _WGRAD not in ("auto", "taps", "xla"):
    raise ValueError(f"JAXSEG_WGRAD must be auto, taps or xla, got {_WGRAD!r}")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else ``ValueError``."""
    if mode not in MODES:
        raise ValueError(f"conv mode must be one of {MODES}, got {mode!r}")
    return mode


def default_mode() -> str:
    """The mode a model gets when its builder is given none: ``JAXSEG_CONV`` or ``"auto"``.
    Read when a model is built (never at trace time), so it ends up in the graphdef."""
    mode = os.environ.get("JAXSEG_CONV", "auto")
    if mode not in MODES:
        raise JaxsegError(f"JAXSEG_CONV: must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def _select(fast, plain, mode: str, *args):
    """``fast(*args)`` on CPU, ``plain(*args)`` elsewhere (or as ``mode`` forces)."""
    if mode == "fast":
        return fast(*args)
    if mode == "xla":
        return plain(*args)
    return lax.platform_dependent(*args, cpu=fast, default=plain)


# --- convolution with a matrix-product weight gradient ---------------------------------------

def weight_grad(x: jax.Array, dy: jax.Array, window: tuple[int, ...], strides: tuple[int, ...],
                padding: tuple[tuple[int, int], ...], out_dtype=None) -> jax.Array:
    """Weight gradient of a channel-last convolution as one matrix product per window tap.

    Args:
      x: ``(B, *spatial, in)`` the convolution's input.
      dy: ``(B, *out_spatial, out)`` the cotangent of its output.
      window: the kernel's spatial size; strides, padding: as given to the convolution
        (``padding`` as explicit ``(low, high)`` pairs per spatial axis).
      out_dtype: dtype of the result (default ``x.dtype``); products accumulate in float32.

    Returns:
      ``(*window, in, out)``: ``dW[t] = sum_{b, p} x_pad[b, t + strides * p] dy[b, p]``.
    """
    out_spatial = dy.shape[1:-1]
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)])
    cin, cout = x.shape[-1], dy.shape[-1]
    g = dy.reshape(-1, cout)
    offsets = list(itertools.product(*(range(k) for k in window)))

    def tap_product(xt):
        # (rows, in)^T (rows, out): contracting the long row axis of both operands.
        return lax.dot_general(xt.reshape(-1, cin), g, (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)

    if len(offsets) > 1 and all(s == 1 for s in strides) and _WGRAD_LOOP:
        # One shifted copy of the input alive at a time (a loop over taps): unrolled, XLA keeps
        # all of them alive together, doubling the train step's peak memory.
        def tap(offset):
            start = (jnp.int32(0),) + tuple(offset[d] for d in range(len(window))) + (jnp.int32(0),)
            return tap_product(lax.dynamic_slice(xp, start, (xp.shape[0], *out_spatial, cin)))
        taps = lax.map(tap, jnp.asarray(offsets, jnp.int32))
    else:
        taps = []
        for tap in offsets:
            start = (0,) + tap + (0,)
            limit = ((xp.shape[0],) + tuple(t + s * (o - 1) + 1 for t, s, o in zip(tap, strides, out_spatial))
                     + (cin,))
            taps.append(tap_product(lax.slice(xp, start, limit, (1,) + tuple(strides) + (1,))))
    dw = (taps if isinstance(taps, jax.Array) else jnp.stack(taps)).reshape(*window, cin, cout)
    return dw.astype(out_dtype or x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _fast_conv(x, w, strides, padding, precision, preferred_element_type):
    return _plain_conv(x, w, strides, padding, precision, preferred_element_type)


def _plain_conv(x, w, strides, padding, precision, preferred_element_type):
    nd = x.ndim - 2
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_channel_last(nd),
                                    precision=precision, preferred_element_type=preferred_element_type)


def _fast_conv_fwd(x, w, strides, padding, precision, preferred_element_type):
    return _plain_conv(x, w, strides, padding, precision, preferred_element_type), (x, w)


def _tap_weight_grad(in_channels: int) -> bool:
    """Whether the fast path computes the weight gradient as tap products (else it runs XLA's
    convolution and its own gradients).

    With XLA's own convolutions (jaxseg's default CPU flags, ``jaxseg.xla_flags.CPU_XLA_FLAGS``) its
    weight-gradient convolution beat the tap products for every U-Net layer of 16 or more input
    channels (e.g. 91 against 115 ms at 256^2 x 32 -> 32, batch 4); with YNNPACK's convolutions
    (jaxlib's default) the tap products won (163 against 277 ms). Below 16 input channels the
    tap products won either way.
    ``JAXSEG_WGRAD=taps|xla`` forces one (benchmarks and tests).
    """
    if _WGRAD != "auto":
        return _WGRAD == "taps"
    return not (xla_cpu_convolutions() and in_channels >= 16)


def _fast_conv_bwd(strides, padding, precision, preferred_element_type, res, dy):
    x, w = res
    # The input gradient is XLA's own transpose: a forward convolution, which is fast.
    _, vjp_x = jax.vjp(lambda x_: _plain_conv(x_, w, strides, padding, precision,
                                              preferred_element_type), x)
    (dx,) = vjp_x(dy)
    dw = weight_grad(x, dy.astype(x.dtype), w.shape[:-2], strides, padding, out_dtype=w.dtype)
    return dx.astype(x.dtype), dw


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def _conv_nd(x, w, strides, padding, precision, preferred_element_type):
    """The CPU path's 1D/2D convolution: tap-product weight gradient where
    :func:`_tap_weight_grad` says it wins, XLA's own convolution (and its autodiff) otherwise."""
    conv = _fast_conv if _tap_weight_grad(x.shape[-1]) else _plain_conv
    return conv(x, w, strides, padding, precision, preferred_element_type)


def _conv3d_via_2d(x, w, strides, padding, precision, preferred_element_type):
    """A channel-last 3D convolution as one 2D convolution (the CPU-fast one).

    XLA's CPU backend ran its 3D convolution 2-3x slower than the same work as a 2D one
    (benchmarks/NOTES.md), so the ``kd`` depth taps go onto a channel axis, on whichever side
    makes the better-shaped product (measured on the 3D U-Net's layers, NOTES.md section 10):

    - **inputs** (fewer input than output channels, or a strided depth): ``x_t = x_pad[:, t + s * d]``
      for ``t < kd`` gives ``(B * D_out, H, W, kd * C)``, the kernel ``(kd, kh, kw, C, O)`` becomes
      ``(kh, kw, kd * C, O)``. Costs ``kd`` copies of the input.
    - **outputs** (at least as many input as output channels, depth stride 1): one 2D
      convolution of every padded depth plane with the kernel ``(kh, kw, C, kd * O)`` gives
      ``z``, and ``y[d] = sum_t z[d + t, ..., t]``. No copy of the input; ``kd`` times the output,
      over ``kd - 1`` extra planes. E.g. 128^3 x 32 -> 16: 1.31 s against 1.91 s.

    Gradients follow by autodiff through the 2D convolution (:func:`_conv_nd`).
    """
    kd = w.shape[0]
    b, depth, _, _, c = x.shape
    (lo, hi), sd = padding[0], strides[0]
    out_depth = (depth + lo + hi - kd) // sd + 1
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (lo, hi, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
    if kd > 1 and sd == 1 and c >= w.shape[-1]:
        o = w.shape[-1]
        planes = xp.reshape(b * xp.shape[1], *xp.shape[2:])
        w2 = jnp.moveaxis(w, 0, -2).reshape(*w.shape[1:3], c, kd * o)  # (kh, kw, C, kd * O)
        z = _conv_nd(planes, w2, strides[1:], padding[1:], precision, preferred_element_type)
        z = z.reshape(b, xp.shape[1], *z.shape[1:3], kd, o)
        y = z[:, 0:out_depth, :, :, 0]
        for t in range(1, kd):
            y = y + z[:, t:t + out_depth, :, :, t]
        return y
    taps = [lax.slice_in_dim(xp, t, t + sd * (out_depth - 1) + 1, sd, axis=1) for t in range(kd)]
    stacked = taps[0] if kd == 1 else jnp.concatenate(taps, axis=-1)  # (B, D_out, H, W, kd * C)
    stacked = stacked.reshape(b * out_depth, *stacked.shape[2:])
    w2 = jnp.moveaxis(w, 0, 2).reshape(*w.shape[1:3], kd * c, w.shape[-1])
    y = _conv_nd(stacked, w2, strides[1:], padding[1:], precision, preferred_element_type)
    return y.reshape(b, out_depth, *y.shape[1:])


def _channel_last(nd: int) -> lax.ConvDimensionNumbers:
    spatial = "DHW"[-nd:] if nd <= 3 else None
    return lax.conv_dimension_numbers((1,) * (nd + 2), (1,) * (nd + 2),
                                      (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, out_sharding=None, *,
                         mode: str = "auto") -> jax.Array:
    """``jax.lax.conv_general_dilated`` (same arguments and result) whose weight gradient is
    :func:`weight_grad` on the fast path (``mode`` as in the module docstring). Cases the fast
    path does not cover (dilations, grouped convolutions, layouts other than channel-last, more
    than 3 spatial axes) always run XLA's convolution (and so does an explicit ``out_sharding``)."""
    check_mode(mode)
    plain = functools.partial(lax.conv_general_dilated, window_strides=window_strides,
                              padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                              dimension_numbers=dimension_numbers,
                              feature_group_count=feature_group_count,
                              batch_group_count=batch_group_count, precision=precision,
                              preferred_element_type=preferred_element_type,
                              out_sharding=out_sharding)
    nd = lhs.ndim - 2
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    ones = (1,) * nd
    simple = (out_sharding is None and 1 <= nd <= 3 and dn == _channel_last(nd) and feature_group_count == 1
              and batch_group_count == 1 and tuple(lhs_dilation or ones) == ones
              and tuple(rhs_dilation or ones) == ones)
    if not simple or mode == "xla":
        return plain(lhs, rhs)
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)

    def fast(l, r):
        if nd == 3:
            return _conv3d_via_2d(l, r, strides, pads, precision, preferred_element_type)
        return _conv_nd(l, r, strides, pads, precision, preferred_element_type)

    return _select(fast, lambda l, r: plain(l, r), mode, lhs, rhs)


# --- transposed convolution whose window equals its stride -----------------------------------

def upsample_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_transpose(x, kernel, strides=window, padding="VALID")`` as one matrix product.

    Args:
      x: ``(B, *spatial, in)``; kernel: ``(*window, in, out)``.

    Returns:
      ``(B, *(spatial * window), out)``. Output pixel ``p * window + q`` is ``x[p] @ kernel[q']``
      where ``q'`` is ``q`` mirrored (``window - 1 - q``): ``lax.conv_transpose`` without
      ``transpose_kernel`` correlates the stride-dilated input with the kernel as given.
    """
    nd = x.ndim - 2
    window = kernel.shape[:nd]
    cin, cout = kernel.shape[-2:]
    k = lax.rev(kernel, tuple(range(nd)))
    k = jnp.moveaxis(k, nd, 0).reshape(cin, -1)  # (in, *window * out)
    y = lax.dot_general(x, k, (((nd + 1,), (0,)), ((), ())))  # (B, *spatial, *window*out)
    y = y.reshape(*x.shape[:-1], *window, cout)
    # Interleave: (B, s1, .., snd, w1, .., wnd, out) -> (B, s1, w1, .., snd, wnd, out).
    perm = [0] + [a for d in range(nd) for a in (1 + d, 1 + nd + d)] + [2 * nd + 1]
    y = jnp.transpose(y, perm)
    return y.reshape(x.shape[0], *(s * w for s, w in zip(x.shape[1:-1], window)), cout)


@dataclasses.dataclass(frozen=True)
class ConvPrimitive:
    """:func:`conv_general_dilated` with its ``mode`` bound: what a :func:`Conv` layer holds as
    its ``conv_general_dilated``. Frozen, so graphdefs compare and hash it by value (two models
    built alike share compilations; another mode is another graphdef)."""
    mode: str = "auto"

    def __post_init__(self):
        check_mode(self.mode)

    def __call__(self, *args, **kwargs) -> jax.Array:
        return conv_general_dilated(*args, **kwargs, mode=self.mode)


class _ConvTranspose(nnx.ConvTranspose):
    """``nnx.ConvTranspose`` (same parameters) computing window == stride upsampling as a matrix
    product on the fast path; ``conv_mode`` is static (part of the graphdef)."""

    def __init__(self, *args, mode: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_mode = check_mode(mode)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        nd = len(self.kernel_size)
        window = tuple(self.kernel_size)
        strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides or (1,) * nd)
        dilation = self.kernel_dilation
        plain_ok = (inputs.ndim == nd + 2 and strides == window and self.padding == "VALID"
                    and self.mask is None and not self.transpose_kernel
                    and dilation in (None, 1, (1,) * nd) and self.preferred_element_type is None)
        if not plain_ok or self.conv_mode == "xla":
            return super().__call__(inputs)
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)

        def plain(x, k):
            return lax.conv_transpose(x, k, strides, "VALID", precision=self.precision)

        y = _select(upsample_matmul, plain, self.conv_mode, inputs, kernel)
        if bias is not None:
            y = y + bias.reshape((1,) * (nd + 1) + (-1,))
        return y


def Conv(in_features: int, out_features: int, kernel_size, strides=1, *, mode: str = "auto",
         **kwargs) -> nnx.Conv:
    """``nnx.Conv`` (same arguments, same parameters) computing through
    :func:`conv_general_dilated` in ``mode`` (a :class:`ConvPrimitive`)."""
    return nnx.Conv(in_features, out_features, kernel_size, strides,
                    conv_general_dilated=ConvPrimitive(mode), **kwargs)


def ConvTranspose(in_features: int, out_features: int, kernel_size, strides=None, *, mode: str = "auto",
                  **kwargs) -> nnx.ConvTranspose:
    """``nnx.ConvTranspose`` (same arguments, same parameters); window == stride upsampling
    runs as :func:`upsample_matmul` on the fast path (``mode``)."""
    return _ConvTranspose(in_features, out_features, kernel_size, strides, mode=mode, **kwargs)


def set_mode(model: nnx.Module, mode: str) -> nnx.Module:
    """Set ``mode`` on every convolution of ``model`` built by :func:`Conv` / :func:`ConvTranspose`
    (in place, outside any trace); returns ``model``. Its graphdef changes with the mode."""
    primitive = ConvPrimitive(mode)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv) and isinstance(node.conv_general_dilated, ConvPrimitive):
            node.conv_general_dilated = primitive
        elif isinstance(node, _ConvTranspose):
            node.conv_mode = mode
    return model


def modes_of(model: nnx.Module) -> set[str]:
    """The modes of ``model``'s convolutions built here (one element for a model built whole)."""
    modes = set()
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv) and isinstance(node.conv_general_dilated, ConvPrimitive):
            modes.add(node.conv_general_dilated.mode)
        elif isinstance(node, _ConvTranspose):
            modes.add(node.conv_mode)
    return modes
