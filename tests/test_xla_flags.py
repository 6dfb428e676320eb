"""jaxseg's default XLA flags: added on import, never overriding what the user set, and
reaching the compiler."""
import os
import subprocess
import sys

import pytest

import jaxseg


def _flags_after_import(monkeypatch, env: dict) -> str:
    for key in ("XLA_FLAGS", "JAXSEG_XLA_DEFAULTS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    jaxseg._add_default_xla_flags()
    return os.environ.get("XLA_FLAGS", "")


def test_defaults_are_added_after_the_users_flags(monkeypatch):
    flags = _flags_after_import(monkeypatch, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert flags.split() == ["--xla_force_host_platform_device_count=4", *jaxseg.CPU_XLA_FLAGS]
    assert jaxseg.xla_cpu_convolutions()
    assert _flags_after_import(monkeypatch, {}).split() == list(jaxseg.CPU_XLA_FLAGS)


def test_a_flag_the_user_set_is_kept(monkeypatch):
    flags = _flags_after_import(monkeypatch, {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"})
    assert flags == "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
    assert not jaxseg.xla_cpu_convolutions()


def test_defaults_can_be_turned_off(monkeypatch):
    assert _flags_after_import(monkeypatch, {"JAXSEG_XLA_DEFAULTS": "0"}) == ""
    assert not jaxseg.xla_cpu_convolutions()


@pytest.mark.parametrize("value,xla_convs", [
    ("-individual_convolution", True), ("-individual_dot,-individual_convolution", True),
    ("+reduce", False), ("dot,reduce", True), ("individual_convolution", False), ("", True)])
def test_which_library_runs_convolutions(monkeypatch, value, xla_convs):
    """Signed items edit XLA's default list (which has convolutions); plain items replace it."""
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_experimental_ynn_fusion_type={value}")
    assert jaxseg.xla_cpu_convolutions() == xla_convs


_PROBE = ("import jaxseg, jax, jax.numpy as jnp\n"
          "from jax import lax\n"
          "x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))\n"
          "f = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
          "dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
          "print('ynn_fusion' in f.lower(x, w).compile().as_text())\n")


@pytest.mark.parametrize("defaults,ynn", [("1", False), ("0", True)])
def test_the_flags_reach_the_compiler(defaults, ynn):
    """In a fresh process, ``import jaxseg`` before any computation means XLA compiles a
    convolution itself; without jaxseg's defaults, jaxlib hands it to YNNPACK."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXSEG_XLA_DEFAULTS")}
    env.update(JAX_PLATFORMS="cpu", JAXSEG_XLA_DEFAULTS=defaults)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(ynn)


def test_no_flags_for_another_jaxlib(monkeypatch):
    """XLA aborts on a flag it does not know: other jaxlib series get none of ours."""
    monkeypatch.setattr(jaxseg, "_jaxlib_version", lambda: "0.11.0")
    assert _flags_after_import(monkeypatch, {}) == ""
