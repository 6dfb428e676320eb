"""The figures of ``jaxseg evaluate`` (docs/figures.md): ``gallery.png`` (the best and worst
slices by Dice over all cases) and ``panels/<case>.png`` (five slices per plane of each case).

The figures receive arrays: the caller reads each case (:mod:`jaxseg.eval.pairs`) and hands its
classes and background image to :meth:`EvaluationFigures.add_case`, which draws the case's panel
and keeps only its gallery candidates, so memory does not grow with the number of cases;
:meth:`EvaluationFigures.write_gallery` draws the gallery once every case is in. The drawing
itself is :mod:`jaxseg.report.figures` and :mod:`jaxseg.report.slices`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseg import target
from jaxseg.errors import JaxsegError
from jaxseg.report import figures as F
from jaxseg.report import slices as S


class EvaluationFigures:
    """Draws the evaluation figures into ``out_dir``, one case at a time.

    Args:
      region: the region whose per-slice Dice ranks the gallery (WT, TC or ET).
      plane: the gallery's slice plane; ``n``: tiles in each of its rows (best, worst).
      min_pixels, min_gap: see :func:`jaxseg.report.slices.best_and_worst`.
    """

    def __init__(self, out_dir: str | Path, *, region: str = "WT", plane: str = "axial", n: int = 6,
                 min_pixels: int = 50, min_gap: int = 5):
        if region not in target.REGIONS:
            raise JaxsegError(f"figure region must be one of {', '.join(target.REGIONS)}; got {region!r}")
        self.out_dir = Path(out_dir)
        self.region, self.plane, self.n = region, plane, n
        self.min_pixels, self.min_gap = min_pixels, min_gap
        self._channel = target.REGIONS.index(region)
        self._tiles: list[S.SliceTile] = []
        self._modalities: set[str] = set()
        self._cases = 0

    def add_case(self, case: str, prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 image: np.ndarray | None = None, modality: str | None = None) -> Path:
        """Draw ``panels/<case>.png`` and keep the case's gallery candidates; returns the panel's path.

        Args:
          prediction, reference: ``(X, Y, Z)`` uint8 internal classes (0-3), RAS, on one grid.
          spacing: voxel sizes in mm (RAS order).
          image: ``(X, Y, Z)`` float32 background intensities (RAS), or None: black tiles.
          modality: the image's name, for the figures' notes.
        """
        self._cases += 1
        self._modalities.add(modality or "none")
        k = self._channel
        self._tiles += S.case_tiles(case, image, target.region_masks(prediction)[..., k],
                                    target.region_masks(reference)[..., k], spacing, self.n, self.plane,
                                    self.min_pixels, self.min_gap)
        return F.case_panel(case, image, prediction, reference, spacing,
                            self.out_dir / "panels" / f"{case}.png", modality=modality)

    def write_gallery(self) -> Path:
        """Draw ``gallery.png`` from the candidates of every case added; returns its path."""
        return F.slice_gallery(self._tiles, self.out_dir / "gallery.png", n=self.n, region=self.region,
                               min_pixels=self.min_pixels, min_gap=self.min_gap, cases=self._cases,
                               modality=", ".join(sorted(self._modalities)))
