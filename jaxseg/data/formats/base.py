"""What a data format is: the interface every module of :mod:`jaxseg.data.formats` implements.

A format answers, for one kind of dataset on disk: which cases (or 2D records) a folder holds
and whose they are (the split keeps a subject's cases together), which of their slices a 2D
model trains on (the index), and the grain source that reads them. How a model samples the
cases (2D slices or 3D patches) is the other axis, :mod:`jaxseg.data.formats.sampling`; the
way back to the input's own space (the inverse of the geometry) is the sampling's for
probabilities and the format's for the files prediction writes (:attr:`DataFormat.output`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxseg.config import Config, DataConfig
from jaxseg.data.pipeline import CaseIndexedSource


class DataFormat:
    """One ``data.format``. Subclasses set the class attributes and implement the methods.

    Attributes:
      name: the ``data.format`` value.
      unit: what one of its cases is called in messages (``cases``, ``records``).
      suffixes: the file name endings that make a folder this format (:func:`formats.detect`).
      samplings: the spatial dims of the models it can feed (2: slices; 3: patches of volumes).
      output: what prediction writes per case: ``nifti`` (a label volume in the input's
        geometry) or ``png`` (a mask in the slice's own size); :mod:`jaxseg.infer.predict` picks
        its writer by this.
    """

    name: str = ""
    unit: str = "cases"
    suffixes: tuple[str, ...] = ()
    samplings: tuple[int, ...] = (2,)
    output: str = "nifti"

    def find_cases(self, cfg: Config, workdir: Path) -> list:
        """The dataset's cases (``data.root``; a format may make synthetic ones in ``workdir``)."""
        raise NotImplementedError

    def subjects(self, cases: Sequence[Any]) -> dict[str, str] | None:
        """``case_id -> subject`` for the subject-level split; None: every case is its own subject."""
        return None

    def input_records(self, path: Path, mask_suffix: str = "_mask") -> list:
        """The 2D slice records ``predict`` reads at ``path`` (a file or folder of this format)."""
        raise NotImplementedError

    def slice_index(self, cases: Sequence[Any], modalities: Sequence[str], data_cfg: DataConfig, seed: int,
                    train: bool, cache_dir: str | Path | None = None) -> np.ndarray:
        """``(N, 2)`` int64 rows ``(case_index, z)``: the 2D slices a loader reads, case by case."""
        raise NotImplementedError

    def slice_source(self, cases: Sequence[Any], modalities: Sequence[str], data_cfg: DataConfig,
                     index: np.ndarray, valid: np.ndarray | None = None,
                     cache_dir: str | Path | None = None) -> CaseIndexedSource:
        """The grain source of the indexed slices; items as ``brats_volumes.SliceSource`` items."""
        raise NotImplementedError

    def inspect(self, root: Path, mask_suffix: str = "_mask") -> tuple[Any, bool]:
        """``(rich table, any problems)``: every file under ``root`` read in full (``jaxseg data inspect``;
        :mod:`jaxseg.data.inspect`)."""
        raise NotImplementedError
