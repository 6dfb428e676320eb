"""jaxseg: explainable brain-tumor MRI segmentation in pure JAX."""
from __future__ import annotations

import os

__version__ = "0.1.0"

# XLA flags jaxseg turns on by default, for the CPU backend only (GPU and TPU compilers ignore
# ``xla_cpu_*`` options). They must be in ``XLA_FLAGS`` before jax creates its CPU client, so
# this runs on ``import jaxseg``, before any submodule imports jax.
#
# ``xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: jaxlib 0.10 hands every
# convolution to YNNPACK by default; XLA's own (Eigen) convolution ran the U-Nets' convolutions
# up to 2.3x faster on this project's benchmark CPU (2-core AVX-512 EPYC: 256^2 x 32 -> 32
# channels, batch 16, 50 -> 115 GFLOP/s; weight gradients 277 -> 91 ms). Matrix products and
# reductions stay with YNNPACK. Measurements: benchmarks/NOTES.md, section 10.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# XLA aborts the process on a flag it does not know, and experimental flags come and go: add
# them only for the jaxlib series they were measured on.
_FLAGS_JAXLIB = "0.10."


def _jaxlib_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return ""


def _add_default_xla_flags() -> None:
    """Append :data:`CPU_XLA_FLAGS` to ``XLA_FLAGS``, except flags the user already set.
    ``JAXSEG_XLA_DEFAULTS=0`` turns this off; so does a jaxlib other than 0.10.x."""
    if os.environ.get("JAXSEG_XLA_DEFAULTS", "1") == "0" or not _jaxlib_version().startswith(_FLAGS_JAXLIB):
        return
    current = os.environ.get("XLA_FLAGS", "")
    extra = [flag for flag in CPU_XLA_FLAGS if flag.split("=", 1)[0] not in current]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join(([current] if current.strip() else []) + extra)


def xla_cpu_convolutions() -> bool:
    """Whether XLA's CPU backend runs convolutions itself (jaxseg's default flags) rather than
    through YNNPACK (jaxlib's default), as the ``XLA_FLAGS`` environment says (XLA reads it
    once, when jax creates its CPU client)."""
    for part in os.environ.get("XLA_FLAGS", "").split():
        if part.startswith(_YNN_FLAG + "="):
            items = [item for item in part.split("=", 1)[1].split(",") if item]
            if items and all(item[0] in "+-" for item in items):  # edits of the default list
                return "-individual_convolution" in items
            return "individual_convolution" not in items  # the exact list
    return False


_add_default_xla_flags()
