"""Where jaxseg keeps what it makes for itself: the demo model and XLA's compilation cache.

Everything lives below one per-user folder: ``$JAXSEG_HOME`` when set, else the platform's user
data folder (``platformdirs.user_data_dir("jaxseg")``: ``~/.local/share/jaxseg`` on Linux,
``~/Library/Application Support/jaxseg`` on macOS, ``%LOCALAPPDATA%\\jaxseg`` on Windows). Never
relative to the current folder, so every command works the same from anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The per-user folder (``$JAXSEG_HOME``, else the platform's user data folder)."""
    configured = os.environ.get("JAXSEG_HOME", "").strip()
    if configured:
        return Path(configured).expanduser().absolute()
    import platformdirs
    return Path(platformdirs.user_data_dir("jaxseg", appauthor=False))


def demo_model_dir() -> Path:
    """The model `jaxseg demo` trained last (`--checkpoint demo`)."""
    return home() / "models" / "demo"


def compilation_cache_dir() -> Path:
    """XLA's persistent compilation cache (compiled programs kept between runs)."""
    return home() / "cache" / "xla"
