"""jaxseg's CPU XLA flags: never set by ``import jaxseg``, set by the ``jaxseg`` command (and by
``jaxseg.xla_flags.apply()`` for library users), never overriding what the user set, and
reaching the compiler."""
import os
import subprocess
import sys

import pytest

from jaxseg import xla_flags


def _flags_after_apply(monkeypatch, env: dict) -> str:
    for key in ("XLA_FLAGS", "JAXSEG_XLA_DEFAULTS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(xla_flags, "_jax_started", lambda: False)  # this test process runs jax already
    returned = xla_flags.apply()
    assert returned == os.environ.get("XLA_FLAGS", "")
    return returned


def test_defaults_are_added_after_the_users_flags(monkeypatch):
    flags = _flags_after_apply(monkeypatch, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert flags.split() == ["--xla_force_host_platform_device_count=4", *xla_flags.CPU_XLA_FLAGS]
    assert xla_flags.xla_cpu_convolutions()
    assert _flags_after_apply(monkeypatch, {}).split() == list(xla_flags.CPU_XLA_FLAGS)


def test_a_flag_the_user_set_is_kept(monkeypatch):
    flags = _flags_after_apply(monkeypatch, {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"})
    assert flags == "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
    assert not xla_flags.xla_cpu_convolutions()


def test_defaults_can_be_turned_off(monkeypatch):
    assert _flags_after_apply(monkeypatch, {"JAXSEG_XLA_DEFAULTS": "0"}) == ""
    assert not xla_flags.xla_cpu_convolutions()


def test_applying_after_jax_started_warns(monkeypatch):
    """This process has run jax (conftest): XLA read XLA_FLAGS already, so a late apply says so."""
    import jax
    jax.devices()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAXSEG_XLA_DEFAULTS", raising=False)
    with pytest.warns(RuntimeWarning, match="before the first jax computation"):
        xla_flags.apply()


@pytest.mark.parametrize("value,xla_convs", [
    ("-individual_convolution", True), ("-individual_dot,-individual_convolution", True),
    ("+reduce", False), ("dot,reduce", True), ("individual_convolution", False), ("", True)])
def test_which_library_runs_convolutions(monkeypatch, value, xla_convs):
    """Signed items edit XLA's default list (which has convolutions); plain items replace it."""
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_experimental_ynn_fusion_type={value}")
    assert xla_flags.xla_cpu_convolutions() == xla_convs


def test_no_flags_for_another_jaxlib(monkeypatch):
    """XLA aborts on a flag it does not know: other jaxlib series get none of ours."""
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.11.0")
    assert xla_flags.cpu_flags() == ()
    assert _flags_after_apply(monkeypatch, {}) == ""


def _fresh_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXSEG_XLA_DEFAULTS")}
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


def test_importing_jaxseg_leaves_xla_flags_alone():
    """A library user's process: importing jaxseg and its models, training and inference code
    changes no environment variable jax reads."""
    probe = ("import os\nbefore = dict(os.environ)\n"
             "import jaxseg, jaxseg.models.registry, jaxseg.train.step, jaxseg.infer.sliding_window\n"
             "print(dict(os.environ) == before, os.environ.get('XLA_FLAGS'))\n")
    out = subprocess.run([sys.executable, "-c", probe], env=_fresh_env(XLA_FLAGS="--xla_cpu_use_thunk_runtime=true"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "--xla_cpu_use_thunk_runtime=true"]


@pytest.mark.parametrize("defaults,xla_convs", [("1", True), ("0", False)])
def test_the_command_sets_the_flags(defaults, xla_convs):
    """``python -m jaxseg`` (the console script's main) adds the flags before jax starts, unless
    JAXSEG_XLA_DEFAULTS=0: ``--devices`` reports which library XLA was started with."""
    out = subprocess.run([sys.executable, "-m", "jaxseg", "--devices"], env=_fresh_env(JAXSEG_XLA_DEFAULTS=defaults),
                         capture_output=True, text=True, check=True)
    assert ("CPU convolutions: XLA's own" in out.stdout) == xla_convs, out.stdout


_PROBE = ("from jaxseg import xla_flags\n"
          "APPLY\n"
          "import jax, jax.numpy as jnp\n"
          "from jax import lax\n"
          "x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))\n"
          "f = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
          "dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
          "print('ynn_fusion' in f.lower(x, w).compile().as_text())\n")


@pytest.mark.parametrize("apply,defaults,ynn", [(True, "1", False), (True, "0", True), (False, "1", True)])
def test_the_flags_reach_the_compiler(apply, defaults, ynn):
    """In a fresh process, ``xla_flags.apply()`` before any computation means XLA compiles a
    convolution itself; without it (or with JAXSEG_XLA_DEFAULTS=0), jaxlib hands it to YNNPACK."""
    probe = _PROBE.replace("APPLY", "xla_flags.apply()" if apply else "pass")
    out = subprocess.run([sys.executable, "-c", probe], env=_fresh_env(JAXSEG_XLA_DEFAULTS=defaults),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(ynn)
