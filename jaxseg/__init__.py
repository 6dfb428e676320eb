"""jaxseg: explainable brain-tumor MRI segmentation in pure JAX.

Importing jaxseg changes nothing in the process: the XLA flags jaxseg recommends for CPUs are
set by the ``jaxseg`` command, and library users apply them with :func:`jaxseg.xla_flags.apply`
before their first jax computation (docs/speed.md).
"""
from __future__ import annotations

__version__ = "0.1.0"
