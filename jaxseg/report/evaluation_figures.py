"""The figures of ``jaxseg evaluate``: ``gallery.png`` (best and worst slices by Dice over all
cases) and ``panels/<case>.png`` (five slices per plane of each case), in the output folder.

The background image is the case's FLAIR (another modality if it has none) found beside the
reference segmentation (``<case>_flair.nii.gz`` / ``<case>-t2f.nii.gz``); without one the tiles
are black. Cases are read one at a time and only each case's gallery candidates are kept, so
memory does not grow with the number of cases.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxseg.data import brats, nifti
from jaxseg.errors import JaxsegError
from jaxseg.report import figures as F
from jaxseg.report import slices as S


def background_image(ref_path: Path, props: nifti.VolumeProperties, modality: str = "flair"
                     ) -> tuple[np.ndarray | None, str | None]:
    """``(image (X, Y, Z) float32 RAS, its modality)`` of the case whose reference is ``ref_path``:
    ``modality`` if the case has it, else its first image; ``(None, None)`` if it has none or the
    image is unreadable or on another grid (a warning says why)."""
    try:
        case = brats.case_from_path(ref_path)
        name = modality if modality in case.images else next(
            (m for m in brats.MODALITIES if m in case.images), None)
        if name is None:
            return None, None
        image, image_props = nifti.read_volume(case.images[name])
        if problem := nifti.geometry_mismatch(image_props, props):
            raise JaxsegError(problem)
        return image, name
    except JaxsegError as e:
        warnings.warn(f"figures of {ref_path.name} have no background image: {e}", stacklevel=2)
        return None, None


def write_evaluation_figures(pairs: Sequence[tuple[str, Path, Path]], out_dir: str | Path, *,
                             region: str = "WT", plane: str = "axial", n: int = 6, modality: str = "flair",
                             min_pixels: int = 50, min_gap: int = 5, progress: Callable[[str], None] | None = None
                             ) -> list[Path]:
    """Write ``gallery.png`` and ``panels/<case>.png`` into ``out_dir``; returns their paths.

    Args:
      pairs: ``(case, prediction path, reference path)`` as :func:`jaxseg.evaluate.find_pairs`.
      region: the region whose per-slice Dice ranks the gallery (WT, TC or ET).
      plane: the gallery's slice plane; ``n``: tiles in each of its rows (best, worst).
      min_pixels, min_gap: see :func:`jaxseg.report.slices.best_and_worst`.
    """
    from jaxseg.evaluate import load_pair  # evaluate imports this module lazily too
    if region not in brats.REGIONS:
        raise JaxsegError(f"figure region must be one of {', '.join(brats.REGIONS)}; got {region!r}")
    out_dir = Path(out_dir)
    k = brats.REGIONS.index(region)
    tiles: list[S.SliceTile] = []
    panels, used = [], set()
    for case, pred_path, ref_path in pairs:
        if progress:
            progress(case)
        prediction, reference, props = load_pair(pred_path, ref_path)
        image, name = background_image(ref_path, props, modality)
        used.add(name or "none")
        tiles += S.case_tiles(case, image, brats.region_masks(prediction)[..., k],
                              brats.region_masks(reference)[..., k], props.spacing, n, plane, min_pixels,
                              min_gap)
        panels.append(F.case_panel(case, image, prediction, reference, props.spacing,
                                   out_dir / "panels" / f"{case}.png", modality=name))
    gallery = F.slice_gallery(tiles, out_dir / "gallery.png", n=n, region=region, min_pixels=min_pixels,
                              min_gap=min_gap, cases=len(pairs), modality=", ".join(sorted(used)))
    return [gallery, *panels]
