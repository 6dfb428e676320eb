"""On GPU and TPU the models take XLA's own convolutions: the CPU-only forms of
``jaxseg/models/conv.py`` (tap-product weight gradients, 2x2 upsampling as a matrix product, 3D
convolutions as stacked 2D ones) appear only in the CPU lowering of the default ``auto`` mode.

Parameter gradients of the two U-Nets are exported for each platform (``jax.export``
lowers for a platform without its hardware); a GPU or TPU program of ``auto`` must hold exactly
the convolutions of the ``xla`` mode's, none of them turned into matrix products or 2D
convolutions. (tests/models/test_conv.py checks the same for one convolution's gradient.)"""
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxseg.models import conv
from jaxseg.models.unet import UNet
from jaxseg.models.unet3d import UNet3D

CONV = re.compile(r"stablehlo\.convolution\((%\S+), (%\S+)\).*?: \((tensor<[^>]*>), ")


def _gradient_program(nd: int, mode: str, platform: str) -> str:
    model = conv.set_mode((UNet if nd == 2 else UNet3D)(2, 1, (4, 8), rngs=nnx.Rngs(0)), mode)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = jnp.ones((2,) + (8,) * nd + (2,))

    def loss(params, stats):
        logits, _ = nnx.merge(graphdef, params, stats)(x, train=False)  # the same convolutions
        return (logits ** 2).mean()

    return jax.export.export(jax.jit(jax.grad(loss)), platforms=[platform])(params, stats).mlir_module()


def _convolution_ranks(program: str) -> list[int]:
    """The rank of every convolution's input operand, in program order."""
    return [m.group(3).count("x") for m in CONV.finditer(program)]


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_take_xla_convolutions(nd, platform):
    auto_program, plain_program = (_gradient_program(nd, mode, platform) for mode in ("auto", "xla"))
    auto, plain = _convolution_ranks(auto_program), _convolution_ranks(plain_program)
    assert auto and auto == plain
    assert set(auto) == {nd + 2}  # every convolution is nd-dimensional, none 2D in 3D
    # no convolution became a matrix product (the CPU forms' dot_generals)
    assert auto_program.count("stablehlo.dot_general") == plain_program.count("stablehlo.dot_general")


@pytest.mark.parametrize("nd", [2, 3])
def test_the_cpu_lowering_takes_the_cpu_forms(nd):
    """The control: on CPU, ``auto`` does change the program (so the test above can fail)."""
    auto = _convolution_ranks(_gradient_program(nd, "auto", "cpu"))
    plain = _convolution_ranks(_gradient_program(nd, "xla", "cpu"))
    assert len(auto) < len(plain)  # weight gradients and upsamplers as products
    if nd == 3:
        assert set(auto) == {4} and set(plain) == {5}  # 3D as 2D
