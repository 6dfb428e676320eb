"""User-facing errors.

Everything that a user can cause (a missing or corrupt file, a bad config value, a volume of the
wrong shape) is raised as :class:`JaxsegError` with one sentence that names the file (or the
setting) and the problem. The CLI prints that sentence and exits non-zero, with no traceback.
"""
from __future__ import annotations

from pathlib import Path


class JaxsegError(Exception):
    """A problem with the user's input, reported as one clear line."""


def file_error(path: str | Path, problem: str) -> JaxsegError:
    """An error about one file: ``<path>: <problem>``."""
    return JaxsegError(f"{path}: {problem}")
