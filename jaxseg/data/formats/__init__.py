"""The registry of data formats and of how models sample them.

A format (``data.format``) is one module here exporting ``FORMAT``, a
:class:`~jaxseg.data.formats.base.DataFormat`: its cases, their subjects, its slice index and
grain source, and what prediction writes. A sampling (2D slices, 3D patches) is one
:class:`~jaxseg.data.formats.sampling.Sampling`, chosen by the model's spatial dims. Training,
prediction, explanation and ``jaxseg data inspect`` ask these two lookups and branch on nothing.

Adding a format: a module ``formats/<name>.py`` with its ``FORMAT``, its entry in
:data:`FORMATS`, the name in the ``data.format`` choices (``jaxseg/config/sections.py``), and a test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from jaxseg.config import Config
from jaxseg.data.formats import brats_volumes, figshare_mat, image_folder
from jaxseg.data.formats.base import DataFormat
from jaxseg.data.formats.sampling import PATCHES, SLICES, ModelInput, Sampling
from jaxseg.errors import JaxsegError, file_error

__all__ = ["FORMATS", "SAMPLINGS", "DataFormat", "Sampling", "ModelInput", "SLICES", "PATCHES", "get",
           "of_config", "detect", "of_input", "prediction_output", "sampling", "inspect_folder"]

FORMATS: dict[str, DataFormat] = {f.name: f for f in (brats_volumes.FORMAT, figshare_mat.FORMAT,
                                                       image_folder.FORMAT)}
SAMPLINGS: dict[int, Sampling] = {s.spatial_dims: s for s in (SLICES, PATCHES)}


def get(name: str) -> DataFormat:
    """The format called ``name``; JaxsegError naming ``data.format`` for an unknown one."""
    try:
        return FORMATS[name]
    except KeyError:
        raise JaxsegError(f"data.format: unknown format {name!r} (known: {', '.join(FORMATS)})") from None


def of_config(cfg: Config) -> DataFormat:
    """The format of ``cfg.data.format``."""
    return get(cfg.data.format)


def sampling(spatial_dims: int) -> Sampling:
    """The sampling of a model with ``spatial_dims`` spatial axes (``models.registry.spatial_dims``)."""
    try:
        return SAMPLINGS[spatial_dims]
    except KeyError:
        raise ValueError(f"no sampling for {spatial_dims} spatial dims (known: {sorted(SAMPLINGS)})") from None


def detect(root: str | Path) -> str:
    """The format of the files under ``root`` (or of the file ``root``), by their endings
    (:attr:`DataFormat.suffixes`); when several occur, the first in :data:`FORMATS` wins (NIfTI
    over ``.mat`` over PNG/TIFF). JaxsegError naming ``root`` if it is missing or none occurs."""
    root = Path(root)
    if not root.exists():
        raise file_error(root, "no such file or folder")
    ranked = list(FORMATS.values())
    files = [root] if root.is_file() else (p for p in root.rglob("*") if not p.name.startswith("."))
    best = len(ranked)
    for p in files:
        name = p.name.lower()
        rank = next((i for i, f in enumerate(ranked[:best]) if name.endswith(f.suffixes)), best)
        best = min(best, rank)
        if best == 0:
            break  # nothing outranks the first format
    if best == len(ranked):
        raise file_error(root, "holds no NIfTI (.nii.gz), MATLAB (.mat) or image (.png, .tif) files")
    return ranked[best].name


def of_input(path: str | Path) -> DataFormat:
    """The format of a prediction input: a file by its ending, a folder by :func:`detect`; BraTS
    for anything else (a NIfTI file, a case folder, a folder of nothing known)."""
    path = Path(path)
    if path.is_dir():
        try:
            return get(detect(path))
        except JaxsegError:
            return FORMATS["brats"]
    name = path.name.lower()
    return next((f for f in FORMATS.values() if f.suffixes and name.endswith(f.suffixes)), FORMATS["brats"])


def prediction_output(paths: Sequence[str | Path], cfg: Config | None = None) -> str:
    """What prediction writes for ``paths`` with a run of ``cfg`` (None: not chosen yet): ``png``
    masks when the run's format or any input's is a 2D-slice format, else ``nifti`` volumes
    (:attr:`DataFormat.output`)."""
    outputs = {of_input(p).output for p in paths} | ({of_config(cfg).output} if cfg is not None else set())
    return "png" if "png" in outputs else "nifti"


def inspect_folder(root: str | Path, fmt: str = "auto", mask_suffix: str = "_mask") -> tuple[Any, bool]:
    """``(rich table, any problems)`` for a dataset folder of any format (``auto``: detected from
    its files, :func:`detect`): ``jaxseg data inspect``."""
    return get(detect(root) if fmt == "auto" else fmt).inspect(Path(root), mask_suffix)
