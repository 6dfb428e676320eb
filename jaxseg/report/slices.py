"""Slices for figures, as plain numpy: display orientation, intensity windows, overlay colours,
per-slice Dice, which slices to show. No matplotlib here, so every pixel a figure shows can be
tested as an array.

Volumes are canonical RAS ``(X, Y, Z)`` arrays (docs/architecture.md): index 0 grows toward the
patient's Right, 1 toward Anterior, 2 toward Superior. Slices are shown in the **radiological**
convention, as in the HTML report: the patient's right on the viewer's left in axial and coronal
views, anterior on the left in sagittal views, superior (axial: anterior) at the top.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from jaxseg.overlap import dice

PLANES = ("axial", "coronal", "sagittal")
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
# Patient directions at the (left, right, top, bottom) edges of a displayed slice.
EDGE_LABELS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"),
               "sagittal": ("A", "P", "S", "I")}
CONVENTION = ("radiological convention: the patient's right on the viewer's left (axial, coronal), "
              "anterior on the left (sagittal)")
# Agreement colours: prediction only, reference only, both.
PREDICTION_RGB = (1.0, 0.0, 0.0)
REFERENCE_RGB = (0.0, 1.0, 0.0)
OVERLAP_RGB = (1.0, 1.0, 0.0)
OVERLAY_ALPHA = 0.55
WINDOW_PERCENTILES = (0.5, 99.5)


def display_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Slice ``index`` of ``plane`` from a RAS ``(X, Y, Z, ...)`` volume, as the figure shows it.

    Returns ``(rows, cols, ...)``: rows run from superior (axial: anterior) at the top down,
    columns from the patient's right (sagittal: anterior) on the left, i.e. radiological.
    """
    section = np.take(volume, index, axis=PLANE_AXIS[plane])  # (a, b, ...) the other two axes
    # Rows are the later axis (Y for axial, Z otherwise), columns the earlier one; both reversed
    # so that A/S are at the top and R/A on the left.
    return np.swapaxes(section, 0, 1)[::-1, ::-1]


def display_aspect(plane: str, spacing: Sequence[float]) -> float:
    """Height/width of one displayed pixel (matplotlib ``imshow(aspect=...)``) for voxel sizes
    ``spacing`` (mm, canonical order), so that millimetres look square."""
    a, b = (axis for axis in range(3) if axis != PLANE_AXIS[plane])
    return float(spacing[b]) / float(spacing[a])


def intensity_window(image: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES
                     ) -> tuple[float, float]:
    """``(low, high)`` intensity percentiles of the nonzero (brain) voxels of ``image``; (0, 1) if
    there are none. One window per volume, so every slice of a case is shown alike."""
    brain = image[image != 0]
    if brain.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(brain, percentiles)
    return float(low), float(max(high, low + 1e-6))


def to_gray(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Intensities -> float32 in [0, 1] over ``window`` (clipped)."""
    low, high = window
    return np.clip((np.asarray(image, np.float32) - low) / (high - low), 0.0, 1.0)


def agreement_rgb(gray: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                  alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The overlay the gallery shows: ``(H, W)`` gray in [0, 1] and two ``(H, W)`` bool masks ->
    ``(H, W, 3)`` float32 RGB: prediction only red, reference only green, both yellow, blended
    with weight ``alpha``; gray elsewhere."""
    rgb = np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=-1)
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    for mask, colour in ((prediction & ~reference, PREDICTION_RGB), (reference & ~prediction, REFERENCE_RGB),
                         (prediction & reference, OVERLAP_RGB)):
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return rgb


def classes_rgb(gray: np.ndarray, classes: np.ndarray, colours: dict[int, tuple[float, float, float]],
                alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``(H, W)`` gray and ``(H, W)`` internal classes -> ``(H, W, 3)`` float32 RGB, each class in
    ``colours`` blended over the gray with weight ``alpha``."""
    rgb = np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=-1)
    for value, colour in colours.items():
        mask = classes == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return rgb


def slice_dice(prediction: np.ndarray, reference: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Dice of every slice along ``axis`` of two bool ``(X, Y, Z)`` masks.

    Returns ``(dice, union)``: float64 ``(N,)`` (:func:`jaxseg.overlap.dice`: 1.0 where both
    slices are empty, so ask ``union == 0`` for "no tumor"), and int64 ``(N,)`` voxel counts of
    prediction | reference per slice.
    """
    others = tuple(a for a in range(3) if a != axis)
    union = np.sum(prediction | reference, axis=others, dtype=np.int64)
    return dice(prediction, reference, axis=others), union


def pick_slices(tumor: np.ndarray, axis: int, n: int = 5, brain: np.ndarray | None = None) -> list[int]:
    """``n`` representative slice indices (sorted) along ``axis``.

    With tumor voxels: the slices at the 10/30/50/70/90 % (for n=5: ``(i + 0.5) / n``) quantiles
    of the tumor's voxel mass along the axis, so every picked slice cuts through the tumor; if the
    tumor spans fewer than ``n`` slices, its neighbours fill up. Without: evenly spaced through
    the brain (nonzero ``brain`` voxels), or through the whole volume.
    """
    size = tumor.shape[axis]
    others = tuple(a for a in range(3) if a != axis)
    counts = np.sum(tumor, axis=others, dtype=np.int64)
    if counts.sum() == 0:
        present = np.flatnonzero(np.any(brain != 0, axis=others)) if brain is not None else np.zeros(0, int)
        low, high = (present[0], present[-1]) if present.size else (0, size - 1)
        return sorted({int(round(v)) for v in np.linspace(low, high, n + 2)[1:-1]})
    cdf = np.cumsum(counts) / counts.sum()
    # The first slice whose cumulative mass reaches q has tumor in it (q > 0).
    chosen = list(dict.fromkeys(int(i) for i in np.searchsorted(cdf, (np.arange(n) + 0.5) / n)))
    centre = chosen[len(chosen) // 2]
    for i in sorted(range(size), key=lambda i: (counts[i] == 0, abs(i - centre), i)):
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def content_box(*volumes: np.ndarray, margin: int = 3) -> tuple[slice, slice, slice]:
    """The bounding box (with ``margin`` voxels) of the nonzero voxels of any of ``volumes``
    ``(X, Y, Z)``; the whole volume if all are empty. Figures crop to it: BraTS volumes are mostly air."""
    shape = volumes[0].shape[:3]
    present = np.zeros(shape, bool)
    for v in volumes:
        present |= np.asarray(v) != 0
    if not present.any():
        return tuple(slice(0, s) for s in shape)  # type: ignore[return-value]
    box = []
    for axis in range(3):
        hit = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, shape[axis])))
    return tuple(box)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class SliceTile:
    """One slice of one case as the gallery shows it (arrays already in display orientation)."""
    case: str
    plane: str
    index: int  # slice index in the case's RAS volume
    dice: float
    union: int  # voxels of prediction | reference in the slice
    gray: np.ndarray  # (H, W) float32 in [0, 1]
    prediction: np.ndarray  # (H, W) bool
    reference: np.ndarray  # (H, W) bool
    aspect: float

    def rgb(self) -> np.ndarray:
        return agreement_rgb(self.gray, self.prediction, self.reference)


def _spread(ranked: Sequence, n: int, min_gap: int, key: Callable[[Any], tuple[str, int]]) -> list:
    """The first ``n`` of ``ranked``, skipping any within ``min_gap`` slices of one already taken
    from the same case (``key(item) = (case, slice index)``): neighbouring slices look alike, and
    a gallery of them shows one thing."""
    taken: list = []
    for item in ranked:
        if len(taken) >= n:
            break
        case, index = key(item)
        if all(c != case or abs(i - index) >= min_gap for c, i in map(key, taken)):
            taken.append(item)
    return taken


def case_tiles(case: str, image: np.ndarray | None, prediction: np.ndarray, reference: np.ndarray,
               spacing: Sequence[float], n: int, plane: str = "axial", min_pixels: int = 50,
               min_gap: int = 5) -> list[SliceTile]:
    """The gallery candidates of one case: its ``n`` best and ``n`` worst slices by Dice.

    Args:
      image: ``(X, Y, Z)`` float intensities (one modality) or None (a black background).
      prediction, reference: ``(X, Y, Z)`` bool masks of one region.
      min_pixels: slices whose prediction | reference has fewer voxels are left out (a 3-voxel
        edge slice says little), unless no slice of the case has that many.
    Keeping only these per case is enough: the best ``n`` over all cases are among the best
    ``n`` of each case, so evaluating many cases never holds more than ``2 n`` slices per case.
    """
    axis = PLANE_AXIS[plane]
    dice, union = slice_dice(prediction, reference, axis)
    eligible = np.flatnonzero(union >= min_pixels)
    if eligible.size == 0:
        eligible = np.flatnonzero(union > 0)
    best_first = sorted(eligible, key=lambda i: (-dice[i], -union[i], i))
    worst_first = sorted(eligible, key=lambda i: (dice[i], -union[i], i))
    by_index = lambda i: (case, int(i))  # noqa: E731
    keep = sorted(set(_spread(best_first, n, min_gap, by_index)) | set(_spread(worst_first, n, min_gap, by_index)))
    if image is None:
        image = np.zeros(prediction.shape, np.float32)
    window = intensity_window(image)
    box = content_box(image, prediction, reference)
    crop = lambda v: v[box]  # noqa: E731
    offset = box[axis].start
    tiles = []
    for i in keep:
        local = int(i) - offset
        tiles.append(SliceTile(
            case=case, plane=plane, index=int(i), dice=float(dice[i]), union=int(union[i]),
            gray=to_gray(display_slice(crop(image), plane, local), window),
            prediction=display_slice(crop(prediction), plane, local).astype(bool),
            reference=display_slice(crop(reference), plane, local).astype(bool),
            aspect=display_aspect(plane, spacing)))
    return tiles


def best_and_worst(tiles: Sequence[SliceTile], n: int, min_pixels: int = 50, min_gap: int = 5
                   ) -> tuple[list[SliceTile], list[SliceTile]]:
    """The ``n`` highest-Dice and ``n`` lowest-Dice tiles (best first, worst first).

    Ties go to the larger tumor; tiles under ``min_pixels`` count only if no tile reaches it;
    within one list, tiles of one case are at least ``min_gap`` slices apart. A tile is in at
    most one list, so with fewer than ``2 n`` tiles the best half are best.
    """
    big = [t for t in tiles if t.union >= min_pixels]
    pool = big or list(tiles)
    by_slice = lambda t: (t.case, t.index)  # noqa: E731
    ranked = sorted(pool, key=lambda t: (-t.dice, -t.union, t.case, t.index))
    best = _spread(ranked, min(n, (len(ranked) + 1) // 2), min_gap, by_slice)
    rest = [t for t in ranked if t not in best]
    worst = _spread(sorted(rest, key=lambda t: (t.dice, -t.union, t.case, t.index)), n, min_gap, by_slice)
    return best, worst
