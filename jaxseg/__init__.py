"""jaxseg: explainable brain-tumor MRI segmentation in pure JAX."""

__version__ = "0.1.0"
