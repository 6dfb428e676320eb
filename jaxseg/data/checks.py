"""Inputs the model was not made for: refuse them, or warn, instead of a silent wrong answer.

A BraTS model expects co-registered, skull-stripped MRI resampled to 1 mm, as BraTS distributes
it. Four things go wrong in practice, and each gets one line naming the file:

* **a modality that is all zeros or constant** (an empty export, a failed conversion): the model
  reads it as "no signal" and answers, e.g. 0 mL of enhancing tumor from an all-zero T1ce.
  Refused, for training too (the case is named).
* **a label map or mask given as an image** (the ``_seg`` file under a modality's name): very few
  distinct whole-number values, 0 among them. Refused, for training too.
* **voxel spacing far from 1 mm** (thick clinical slices, or a 0.5 mm acquisition): the model
  learned tumor size and texture at 1 mm. Refused for prediction and explanation; resample to
  1 mm first.
* **an image that is not skull-stripped**: much signal at the volume's border, where a
  skull-stripped image is exactly background. Only a warning (stderr, the explain summary and
  report): the segmentation may still be useful, but the brain crop is the whole head.

The thresholds sit far from what the real data show. Measured on the 16 BraTS 2018 training cases and
one BraTS 2023 GLI case this project develops with (``python benchmarks/input_checks.py CASE_DIR...`` prints
these numbers, 68 modality volumes): every one has at least 195 distinct values in a 1-in-13
sample (the label-map threshold is 16); the largest share of border voxels above background is
0.0095 (Brats18_TCIA01_499_1, where the brain touches a face; 32 of 68 are exactly 0; the warning
starts at 0.10); every spacing is 1.0 mm (accepted: 2/3 to 1.5 mm). A raw head MRI has noise in
the air around the head, so most of its border is above background.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseg.errors import file_error

# Fewer distinct values than this (with 0 among them, all whole numbers) is a label map or a
# mask: a real MRI modality has hundreds to thousands.
LABEL_MAP_MAX_VALUES = 16
# Share of the volume's outer shell (1 voxel thick) above the background value at which an image
# is taken as not skull-stripped. Skull-stripped BraTS volumes measure at most 0.0095; a raw
# head, with noise in the air around it, close to 1.
BORDER_SIGNAL_WARN = 0.10
# Accepted voxel spacing (mm, every axis): 1 mm within a factor of 1.5 either way.
SPACING_RANGE_MM = (2 / 3, 1.5)
_SAMPLE_STRIDE = 13  # distinct values are first counted on every 13th voxel (fast, decisive)


def distinct_values(volume: np.ndarray, limit: int = LABEL_MAP_MAX_VALUES) -> np.ndarray | None:
    """The distinct values of ``volume`` if there are at most ``limit`` of them, else None.

    A strided sample decides most volumes (an MRI sample already has more than ``limit``); only
    volumes with few values pay for the full ``np.unique``."""
    flat = volume.ravel()
    if len(np.unique(flat[::_SAMPLE_STRIDE])) > limit:
        return None
    values = np.unique(flat)
    return values if len(values) <= limit else None


def border_signal_fraction(volume: np.ndarray) -> float:
    """Share of the voxels on the border of ``volume`` (X, Y, Z), each counted once, that are
    above its minimum (the background of a skull-stripped image: 0 for BraTS, whatever value a
    normalised one has). A tolerance of 1e-3 of the intensity range ignores interpolation dust."""
    low, high = float(volume.min()), float(volume.max())
    above = volume > low + 1e-3 * (high - low)
    interior = above[1:-1, 1:-1, 1:-1]
    border_voxels = above.size - interior.size
    return (int(np.count_nonzero(above)) - int(np.count_nonzero(interior))) / max(border_voxels, 1)


def check_content(image: np.ndarray, files: Sequence[str | Path]) -> None:
    """Refuse a modality that is constant (all zeros included) or looks like a label map.

    ``image``: (X, Y, Z, C) float32, channel ``c`` read from ``files[c]``. Raises JaxsegError
    naming the file. Used for every case loaded, for training as for inference."""
    for c, path in enumerate(files):
        volume = image[..., c]
        low, high = float(volume.min()), float(volume.max())
        if low == high:
            what = "all zeros" if low == 0 else f"constant (every voxel is {low:g})"
            raise file_error(path, f"the image is {what}: no MRI signal to segment (an empty or failed export?)")
        values = distinct_values(volume)
        if values is not None and values[0] == 0 and np.all(values == np.round(values)):
            shown = ", ".join(f"{v:g}" for v in values)
            raise file_error(path, f"only the values {shown}: a label map or mask, not an MRI image "
                                   "(a segmentation file given as a modality?)")


def check_geometry(spacing: Sequence[float], path: str | Path) -> None:
    """Refuse voxel spacing (mm, per axis) outside :data:`SPACING_RANGE_MM`."""
    low, high = SPACING_RANGE_MM
    if any(not low <= s <= high for s in spacing):
        shown = " x ".join(f"{s:g}" for s in spacing)
        raise file_error(path, f"voxel spacing {shown} mm is far from the 1 mm the model was trained on "
                               f"(accepted: {low:.2f} to {high:g} mm per axis); resample the case to 1 mm first")


def check_header_spacing(path: str | Path) -> None:
    """:func:`check_geometry` from the NIfTI header alone (no voxels read), so that a folder of
    cases can be checked before the first is written. A file nibabel cannot read passes here:
    reading it for real gives the precise error."""
    import nibabel as nib
    try:
        zooms = nib.load(str(path)).header.get_zooms()[:3]
    except Exception:  # noqa: BLE001 -- read_volume reports what is wrong with the file
        return
    if len(zooms) == 3:
        check_geometry(tuple(float(z) for z in zooms), path)


def input_warnings(image: np.ndarray, files: Sequence[str | Path]) -> list[str]:
    """Warnings for a model input a user may still want the answer for: not skull-stripped.
    One line each, naming the file."""
    out = []
    for c, path in enumerate(files):
        fraction = border_signal_fraction(image[..., c])
        if fraction >= BORDER_SIGNAL_WARN:
            out.append(f"{path}: {fraction:.0%} of the volume's border has signal; the image looks not "
                       "skull-stripped, and the model was trained on skull-stripped brains (the result "
                       "may include the skull or scalp)")
    return out


def check_model_input(image: np.ndarray, files: Sequence[str | Path], spacing: Sequence[float]) -> list[str]:
    """Every check of a case about to be segmented or explained: refuses (JaxsegError) a bad
    spacing, prints the warnings on stderr and returns them.
    (:func:`check_content` already ran in :func:`jaxseg.data.brats.load_case`.)"""
    check_geometry(spacing, files[0])
    found = input_warnings(image, files)
    for message in found:
        print(f"warning: {message}", file=sys.stderr)
    return found
