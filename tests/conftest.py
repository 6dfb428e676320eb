"""Strict, multi-device test setup (STYLE.md habit 8).

Four emulated CPU devices so sharding is exercised everywhere; rank promotion raises so a
silent broadcast bug fails loudly. Both must be set before jax is imported.
"""
import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data, or skip: users and some machines do not have it."""
    if not (REAL_DATA / "brats2018").is_dir():
        pytest.skip(f"real MRI not found at {REAL_DATA}")
    return REAL_DATA
