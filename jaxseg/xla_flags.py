"""The XLA flags jaxseg recommends for the CPU backend, and how a process gets them.

XLA reads ``XLA_FLAGS`` once, when jax creates its CPU client (the first computation), so the
flags must be in the environment before that. The ``jaxseg`` command sets them first thing
(:func:`jaxseg.cli.main`); ``import jaxseg`` changes nothing. A program that uses jaxseg as a
library and wants the same speed calls :func:`apply` before it runs anything with jax::

    from jaxseg import xla_flags
    xla_flags.apply()      # adds cpu_flags() to XLA_FLAGS, keeping the user's own
    import jax             # ...

or puts :func:`cpu_flags` into ``XLA_FLAGS`` itself (e.g. in a job script).

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: jaxlib 0.10 hands every
convolution to YNNPACK by default; XLA's own (Eigen) convolution ran the U-Nets' convolutions
up to 2.3x faster on this project's benchmark CPU (2-core AVX-512 EPYC: 256^2 x 32 -> 32
channels, batch 16, 50 -> 115 GFLOP/s; weight gradients 277 -> 91 ms). Matrix products and
reductions stay with YNNPACK. Measurements: benchmarks/NOTES.md, section 10. GPU and TPU
compilers ignore ``xla_cpu_*`` options.

This module imports nothing heavy (no jax), so importing it before jax costs nothing.
"""
from __future__ import annotations

import os
import sys
import warnings

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


def cpu_flags() -> tuple[str, ...]:
    """The flags jaxseg recommends for the installed jaxlib: :data:`CPU_XLA_FLAGS` with jaxlib
    0.10.x (the series they were measured on), none with any other."""
    return CPU_XLA_FLAGS if _jaxlib_version().startswith(_FLAGS_JAXLIB) else ()


def apply() -> str:
    """Append :func:`cpu_flags` to ``os.environ["XLA_FLAGS"]``, except flags already there (the
    user's own setting of a flag wins); returns the resulting ``XLA_FLAGS``.

    ``JAXSEG_XLA_DEFAULTS=0`` adds none. Call it before the first jax computation: afterwards it
    still edits the environment but warns (``RuntimeWarning``) that XLA has read it already.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("JAXSEG_XLA_DEFAULTS", "1") == "0":
        return current
    extra = [flag for flag in cpu_flags() if flag.split("=", 1)[0] not in current]
    if not extra:
        return current
    if _jax_started():
        warnings.warn("jaxseg.xla_flags.apply(): jax has started its backends already, so XLA will not "
                      "read the new XLA_FLAGS; call it before the first jax computation", RuntimeWarning,
                      stacklevel=2)
    os.environ["XLA_FLAGS"] = " ".join(([current] if current.strip() else []) + extra)
    return os.environ["XLA_FLAGS"]


def _jax_started() -> bool:
    """Whether jax has created its backends (after which XLA_FLAGS changes have no effect)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def xla_cpu_convolutions() -> bool:
    """Whether XLA's CPU backend runs convolutions itself (jaxseg's recommended flags) rather
    than through YNNPACK (jaxlib's default), as the ``XLA_FLAGS`` environment says (XLA reads it
    once, when jax creates its CPU client)."""
    for part in os.environ.get("XLA_FLAGS", "").split():
        if part.startswith(_YNN_FLAG + "="):
            items = [item for item in part.split("=", 1)[1].split(",") if item]
            if items and all(item[0] in "+-" for item in items):  # edits of the default list
                return "-individual_convolution" in items
            return "individual_convolution" not in items  # the exact list
    return False
