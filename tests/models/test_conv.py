"""The convolution layer's CPU-fast path (custom weight gradient, matmul upsampling) against
XLA's own convolution: values, gradients (finite differences and autodiff), and which path each
platform lowers."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError
from jaxseg.models import conv as C
from jaxseg.models.registry import build_model
from jaxseg.models.unet import UNet


def _conv_fn(nd, stride, padding, dtype=jnp.float32, mode="fast"):
    """A conv through the layer's primitive, channel-last, as the models call it."""
    def f(x, w):
        return C.conv_general_dilated(x.astype(dtype), w.astype(dtype), (stride,) * nd, padding,
                                      dimension_numbers=C._channel_last(nd), mode=mode)
    return f


# (spatial dims, kernel, stride, padding): every form our models use, plus odd sizes.
CASES = [
    (2, 3, 1, "SAME"), (2, 1, 1, "SAME"), (2, 3, 2, "SAME"), (2, 3, 1, "VALID"),
    (2, 7, 2, ((3, 3), (3, 3))), (2, 3, 2, ((1, 0), (0, 1))),
    (3, 3, 1, "SAME"), (3, 1, 1, "VALID"), (3, 3, 2, "SAME"),
]


def _inputs(nd, k, cin=3, cout=4, size=7, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (2,) + (size,) * nd + (cin,))
    w = jax.random.normal(kw, (k,) * nd + (cin, cout)) / np.sqrt(k ** nd * cin)
    return x, w


def _assert_fast_matches_xla(make_f, x, w, tol=1e-5, seed=5):
    """``make_f(mode)``'s value and both gradients on the fast path equal XLA's convolution's."""
    results = {}
    for mode in ("fast", "xla"):
        y, vjp = jax.vjp(jax.jit(make_f(mode)), x, w)
        results[mode] = (y, *vjp(jax.random.normal(jax.random.key(seed), y.shape)))
    for a, b, name in zip(results["fast"], results["xla"], ("y", "dx", "dw")):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("nd,k,stride,padding", CASES)
def test_fast_gradients_match_xla_autodiff(nd, k, stride, padding):
    x, w = _inputs(nd, k)
    _assert_fast_matches_xla(lambda mode: _conv_fn(nd, stride, padding, mode=mode), x, w)


@pytest.mark.parametrize("nd,k,stride,padding,order", [(*CASES[0], 2), (*CASES[2], 1), (*CASES[4], 1),
                                                        (*CASES[6], 1), (*CASES[8], 1)])
def test_fast_gradients_check_grads(nd, k, stride, padding, order):
    x, w = _inputs(nd, k, size=5)
    # Finite differences in float32, reverse mode (the custom VJP); order 2 once: the custom
    # backward pass is itself differentiable.
    check_grads(_conv_fn(nd, stride, padding), (x, w), order=order, modes=("rev",), atol=2e-2, rtol=2e-2)


def test_bf16_weight_gradient_close_to_float32():
    x, w = _inputs(2, 3, cin=8, cout=8, size=8)
    f32 = _conv_fn(2, 1, "SAME")
    b16 = _conv_fn(2, 1, "SAME", jnp.bfloat16)
    loss = lambda f: (lambda x, w: (f(x, w).astype(jnp.float32) ** 2).sum())
    gx, gw = jax.grad(loss(b16), argnums=(0, 1))(x, w)
    rx, rw = jax.grad(loss(f32), argnums=(0, 1))(x, w)
    assert gw.dtype == jnp.float32 and gx.dtype == jnp.float32  # cast back to the inputs' dtype
    # bf16 has 8 bits of mantissa: agree to a few per cent of the gradient's scale.
    np.testing.assert_allclose(gw, rw, atol=0.03 * float(jnp.abs(rw).max()))
    np.testing.assert_allclose(gx, rx, atol=0.03 * float(jnp.abs(rx).max()))


def test_weight_grad_is_the_definition():
    """dW[t] = sum over batch and output pixels of x_pad[t + stride * p] dy[p], written as loops."""
    x, w = _inputs(2, 3, cin=2, cout=3, size=5)
    dy = jax.random.normal(jax.random.key(1), (2, 3, 3, 3))
    got = C.weight_grad(x, dy, (3, 3), (2, 2), ((1, 1), (1, 1)))
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((3, 3, 2, 3), np.float32)
    for i, j, p, q in itertools.product(range(3), range(3), range(3), range(3)):
        want[i, j] += np.einsum("bc,bd->cd", xp[:, i + 2 * p, j + 2 * q], np.asarray(dy)[:, p, q])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nd", [2, 3])
def test_conv_transpose_matmul_matches_xla(nd):
    x = jax.random.normal(jax.random.key(0), (2,) + (3,) * nd + (5,))
    outs = {}
    for mode in ("fast", "xla"):
        layer = C.ConvTranspose(5, 4, (2,) * nd, strides=(2,) * nd, padding="VALID", mode=mode, rngs=nnx.Rngs(0))
        ct = jax.random.normal(jax.random.key(1), (2,) + (6,) * nd + (4,))
        loss = lambda m, x: (m(x) * ct).sum()
        y = layer(x)
        gm, gx = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(layer, x)
        outs[mode] = (y, gx, gm["kernel"][...], gm["bias"][...])
    assert outs["fast"][0].shape == (2,) + (6,) * nd + (4,)
    for a, b in zip(outs["fast"], outs["xla"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_transpose_other_shapes_fall_back():
    """A window larger than the stride is not a plain product: XLA's transposed conv runs."""
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
    y_fast = C.ConvTranspose(2, 3, (3, 3), strides=(2, 2), padding="SAME", mode="fast", rngs=nnx.Rngs(0))(x)
    y_ref = nnx.ConvTranspose(2, 3, (3, 3), strides=(2, 2), padding="SAME", rngs=nnx.Rngs(0))(x)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-6)


def test_unet_gradients_same_on_both_paths():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 2))
    grads = {}
    for mode in ("fast", "xla"):
        model = C.set_mode(UNet(2, 1, (4, 8, 16), dropout=0.0, rngs=nnx.Rngs(0)), mode)
        loss = lambda m: (m(x, train=True)[0] ** 2).mean()
        # Jitted: the same gradients, computed in one program instead of op by op.
        grads[mode] = jax.tree.map(np.asarray, nnx.state(nnx.jit(nnx.grad(loss))(model), nnx.Param))
    flat_f, flat_x = jax.tree.leaves(grads["fast"]), jax.tree.leaves(grads["xla"])
    assert len(flat_f) == len(flat_x) > 10
    for a, b in zip(flat_f, flat_x):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


def _count_convs(platform: str, mode: str) -> int:
    x, w = _inputs(2, 3)
    f = jax.jit(jax.grad(lambda x, w: (_conv_fn(2, 1, "SAME", mode=mode)(x, w) ** 2).sum(), argnums=(0, 1)))
    text = jax.export.export(f, platforms=[platform])(x, w).mlir_module()
    return text.count("stablehlo.convolution")


def test_auto_mode_is_selected_by_platform():
    """auto: the CPU lowering computes the weight gradient as products (forward conv and input
    gradient only), a GPU or TPU lowering keeps XLA's three convolutions."""
    assert _count_convs("cpu", "auto") == 2
    assert _count_convs("cuda", "auto") == 3
    assert _count_convs("tpu", "auto") == 3
    assert _count_convs("cpu", "xla") == 3


def test_bad_mode_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="conv mode"):
        C.Conv(2, 2, (3, 3), mode="fastest", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="conv mode"):
        C.set_mode(UNet(2, 1, (4, 8), rngs=nnx.Rngs(0)), "fastest")
    monkeypatch.setenv("JAXSEG_CONV", "fastest")
    with pytest.raises(JaxsegError, match="JAXSEG_CONV"):
        C.default_mode()


def test_mode_comes_from_the_builder_or_the_environment(monkeypatch):
    """build_model gives every convolution its conv_mode; without one, JAXSEG_CONV (or auto)."""
    cfg = config_lib.load("demo", config_lib.SMOKE_OVERRIDES)
    build = lambda mode=None: nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0), mode))
    monkeypatch.delenv("JAXSEG_CONV", raising=False)
    assert C.modes_of(build()) == {"auto"}
    assert C.modes_of(build("xla")) == {"xla"}
    monkeypatch.setenv("JAXSEG_CONV", "fast")
    assert C.modes_of(build()) == {"fast"}
    assert C.modes_of(build("auto")) == {"auto"}


def test_switching_the_mode_compiles_again_with_the_same_numbers():
    """The mode is static in the graphdef: one jitted function keyed on the graphdef traces once
    per mode (a second model of the same mode reuses the trace; another mode never gets a stale
    one), lowers a different program and gives the same loss and gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 2))
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def loss_and_grads(graphdef, params, x):
        traces.append(graphdef)
        loss = lambda p: (nnx.merge(graphdef, p)(x, train=False)[0] ** 2).mean()
        return jax.value_and_grad(loss)(params)

    def split(mode):
        return nnx.split(C.set_mode(UNet(2, 1, (4, 8), dropout=0.0, rngs=nnx.Rngs(0)), mode))

    results, texts = {}, {}
    for mode in ("fast", "xla", "fast"):
        graphdef, params = split(mode)
        results[mode] = loss_and_grads(graphdef, params, x)
        texts[mode] = loss_and_grads.lower(graphdef, params, x).as_text()
    assert len(traces) == 2 and C.modes_of(nnx.merge(traces[0], split("fast")[1])) == {"fast"}
    # XLA's path keeps the transposed convolution; the fast one makes it a matrix product.
    assert texts["xla"].count("stablehlo.convolution") > texts["fast"].count("stablehlo.convolution")
    for a, b in zip(jax.tree.leaves(results["fast"]), jax.tree.leaves(results["xla"])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("cin", [3, 5])
def test_fast_3d_lowers_to_2d_convolutions(cin):
    """The fast 3D path stacks depth taps on channels (inputs for 3 -> 4, outputs for 5 -> 4):
    only 2D (4-D operand) convolutions remain."""
    x, w = _inputs(3, 3, cin=cin, size=4)
    f = jax.jit(jax.grad(lambda x, w: (_conv_fn(3, 1, "SAME")(x, w) ** 2).sum(), argnums=(0, 1)))
    text = f.lower(x, w).as_text()
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert convs and all("tensor<2x4x4x4x" not in line.split("->")[0] for line in convs)


@pytest.mark.parametrize("wgrad", ["taps", "xla", "auto"])
@pytest.mark.parametrize("cin", [3, 16])
def test_fast_path_weight_gradient_choices_match_xla(monkeypatch, wgrad, cin):
    """Whichever weight gradient the fast path picks (tap products, or XLA's convolution and
    its autodiff) gives XLA's gradients, below and above the 16-channel switch."""
    monkeypatch.setattr(C, "_WGRAD", wgrad)
    x, w = _inputs(2, 3, cin=cin, cout=8, size=6)
    _assert_fast_matches_xla(lambda mode: _conv_fn(2, 1, "SAME", mode=mode), x, w, tol=1e-4)


def test_weight_gradient_choice_follows_the_convolution_library(monkeypatch):
    """auto: XLA's weight gradient where XLA (not YNNPACK) runs convolutions and the layer has
    16+ input channels, the tap products otherwise; JAXSEG_WGRAD forces either."""
    monkeypatch.setattr(C, "_WGRAD", "auto")
    monkeypatch.setattr(C, "xla_cpu_convolutions", lambda: True)
    assert C._tap_weight_grad(4) and not C._tap_weight_grad(16) and not C._tap_weight_grad(512)
    monkeypatch.setattr(C, "xla_cpu_convolutions", lambda: False)
    assert C._tap_weight_grad(4) and C._tap_weight_grad(512)
    monkeypatch.setattr(C, "_WGRAD", "xla")
    assert not C._tap_weight_grad(4)


@pytest.mark.parametrize("cin,cout", [(3, 4), (5, 4), (4, 4)])
@pytest.mark.parametrize("k,stride,padding", [(3, 1, "SAME"), (3, 1, "VALID"), (3, 1, ((2, 0), (1, 1), (0, 1))),
                                              (3, 2, "SAME"), (1, 1, "SAME")])
def test_fast_3d_both_stackings_match_xla(cin, cout, k, stride, padding):
    """Depth taps stacked on the inputs (cin < cout or strided) or on the outputs (cin >= cout):
    values and both gradients equal XLA's 3D convolution's."""
    x, w = _inputs(3, k, cin=cin, cout=cout, size=6)
    _assert_fast_matches_xla(lambda mode: _conv_fn(3, stride, padding, mode=mode), x, w, tol=1e-4, seed=3)
