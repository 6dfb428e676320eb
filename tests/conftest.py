"""Strict, multi-device test setup (CONTRIBUTING.md, habit 8).

Four emulated CPU devices so sharding is exercised everywhere; rank promotion raises so a
silent broadcast bug fails loudly. Both must be set before jax is imported, and so must jaxseg's
CPU XLA flags (``jaxseg.xla_flags.apply()``, as the ``jaxseg`` command does), so the tests run
the convolutions the command runs.
"""
import os
from pathlib import Path

from jaxseg import xla_flags

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
xla_flags.apply()
# What jaxseg keeps for itself (the demo model) goes to a per-run folder, never the user's own.
if "JAXSEG_HOME" not in os.environ:
    import tempfile
    os.environ["JAXSEG_HOME"] = tempfile.mkdtemp(prefix="jaxseg-test-home-")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Many tests compile the same programs (every smoke-size train step); XLA on 2 CPU cores takes
# seconds per compile, so keep compiled programs across tests and runs.
jax.config.update("jax_compilation_cache_dir",
                  str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data, or skip: users and some machines do not have it."""
    if not (REAL_DATA / "brats2018").is_dir():
        pytest.skip(f"real MRI not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A trained smoke-size run folder (demo config at toy sizes), shared by tests that need one."""
    from jaxseg import config as config_lib
    from jaxseg.train import loop
    cfg = config_lib.load("demo", config_lib.SMOKE_OVERRIDES)
    return loop.train(cfg, tmp_path_factory.mktemp("smoke_run"), quiet=True).workdir


@pytest.fixture(scope="session")
def smoke_run_3d(tmp_path_factory):
    """A trained smoke-size 3D U-Net run (configs/brats2021_3d at toy sizes, on phantoms)."""
    from jaxseg import config as config_lib
    from jaxseg.train import loop
    cfg = config_lib.smoke(config_lib.load("brats2021_3d", ['data.root=""', "model.dropout=0.2"]))
    cfg = config_lib.load_from_dict(config_lib.to_dict(cfg), ["train.batch_size=4", "data.samples_per_case=2"])  # 4 emulated devices
    return loop.train(cfg, tmp_path_factory.mktemp("smoke_run_3d"), quiet=True).workdir


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium page per test module, driven by Playwright (skips without chromium or
    playwright; Playwright's own browser download is not used)."""
    from tests.browser import Browser, chromium_binary
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the browser tests need it")
    pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright)")
    session = Browser(binary)
    yield session
    session.close()


