"""Rule-based captions for clinicians: size, location, sub-regions, saliency and uncertainty in words.

Captions are pure functions of a prediction (internal classes in canonical RAS+ order), its affine,
a brain mask and, optionally, a saliency map (Grad-CAM) and an uncertainty map (MC dropout).
Every number comes from the arrays; every word comes from one of the documented thresholds below.

**Location is in the patient's frame.** Positions are world coordinates from the affine (RAS+ mm:
+x patient Right, +y Anterior, +z Superior), never array index directions, so a caption is right
for any storage orientation the affine describes. The reference point is the brain mask's
centroid (its x is taken as the mid-sagittal plane); the brain's extent along a world axis comes
from the world positions of its voxel bounding box's 8 corners (exact for axis-aligned affines).
Along each axis, a tumor centroid within ``CENTRAL_FRACTION`` (5 %) of the brain's extent from
the reference is 'midline' (x) or 'central' (y, z); otherwise 'left'/'right', 'anterior'/'posterior',
'superior'/'inferior'. The tumor *crosses the midline* when at least ``CROSSING_SHARE`` (10 %) of its
voxels lie beyond that margin on each side. For a slice, superior/inferior is the slice's level
(the world z of the brain centroid's column in that slice), not the tumor's position within it.

**Size** of the whole tumor (WT), from voxel spacing = the affine's column norms:
volume < 10 mL small, 10-50 mL moderate, > 50 mL large; slice area < 100 mm² small,
100-1000 mm² moderate, > 1000 mm² large (1000 mm² is a disc 36 mm across).

**Sub-regions** (necrotic core NCR, edema ED, enhancing tumor ET) are listed only when the model
predicts them (``regions=('WT', 'TC', 'ET')``); a whole-tumor model (``('WT',)``) gives 0/1 maps,
in which class 1 means "tumor", not NCR.

**Saliency** (``(X, Y, Z)``, non-negative; scale-free: divided by its maximum) is summarised by two
numbers. *Inside share*: the fraction of saliency mass on predicted-tumor voxels; >= 0.5 "mostly
inside", 0.2-0.5 "partly inside", < 0.2 "mostly outside" the predicted tumor. *Focus*: the
smallest number of voxels holding half the mass, as a fraction of the brain's voxels (in the
slice, for slices); <= 0.10 "concentrated", > 0.25 "diffuse", else "moderately focused". The focus
comes from a 100-bin histogram of the normalised values (exact up to a bin), which keeps the
per-slice version vectorised. No saliency note is made where no tumor is predicted.

**Uncertainty** (``(X, Y, Z)`` float, e.g. predictive entropy): a voxel is *uncertain* when its
value >= ``uncertainty_threshold`` (default 0.3 nats of predictive entropy, as
``explain.uncertainty`` computes it: a sigmoid probability between about 0.08 and 0.92; the maximum
is ln 2 = 0.69 for a sigmoid, ln 4 = 1.39 for four classes; for a variance use about 0.02).
"Low uncertainty" when the uncertain voxels number at most 5 % of the predicted tumor's voxels
(1 % of the brain's, if no tumor). Otherwise uncertain voxels are split into the *border band*
(within 2 voxels, city-block, of the predicted tumor boundary on either side; in-plane for
slices), the tumor *interior* (deeper inside) and *elsewhere*; the caption names the region with
>= 60 % of them (border) or >= 50 % (interior, elsewhere), else calls them spread out.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from jaxseg.data.brats import REGIONS

SMALL_ML, LARGE_ML = 10.0, 50.0  # whole-tumor volume thresholds
SMALL_MM2, LARGE_MM2 = 100.0, 1000.0  # whole-tumor slice-area thresholds
CENTRAL_FRACTION = 0.05  # of the brain's extent along an axis: "midline" / "central" zone
# A 2D image: a tumor centre in the middle third of the image's nonzero extent is "central" on that axis.
IMAGE_CENTRAL_FRACTION = 1 / 6
CROSSING_SHARE = 0.10  # of the tumor on each side beyond the midline zone: "crossing the midline"
INSIDE_MOSTLY, INSIDE_PARTLY = 0.5, 0.2  # saliency mass share on the predicted tumor
CONCENTRATED, DIFFUSE = 0.10, 0.25  # brain fraction holding half the saliency mass
LOW_UNCERTAIN_SHARE = 0.05  # uncertain voxels per tumor voxel at most this: "low uncertainty"
LOW_UNCERTAIN_SHARE_NO_TUMOR = 0.01  # ... per brain voxel, when no tumor is predicted
UNCERTAIN_NATS = 0.3  # default uncertainty threshold (predictive entropy)
BORDER_VOXELS = 2  # width of the border band on each side of the tumor boundary
BORDER_MAJORITY, OTHER_MAJORITY = 0.6, 0.5
_BINS = 100
_SUBREGIONS = (("NCR", 1, "necrotic core"), ("ED", 2, "edema"), ("ET", 3, "enhancing tumor"))


@dataclass(frozen=True)
class VolumeCaption:
    """A volume's caption and the facts behind it.

    ``side`` is 'left' / 'right' / 'midline' (patient's frame), ``anteroposterior`` 'anterior' /
    'posterior' / 'central', ``superoinferior`` 'superior' / 'inferior' / 'central'; all three are None
    when no tumor is predicted. ``volumes_ml`` holds WT (and TC, ET, NCR, ED for region models).
    """

    text: str
    side: str | None
    anteroposterior: str | None
    superoinferior: str | None
    crosses_midline: bool
    size: str | None  # 'small' / 'moderate' / 'large', None without tumor
    volumes_ml: dict[str, float] = field(default_factory=dict)
    saliency_note: str | None = None
    uncertainty_note: str | None = None


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm per array axis: the column norms of the ``(4, 4)`` affine's 3x3 part."""
    return np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))


def describe_volume(classes: np.ndarray, affine: np.ndarray, brain: np.ndarray,
                    saliency: np.ndarray | None = None, uncertainty: np.ndarray | None = None,
                    regions: tuple[str, ...] = REGIONS, *, uncertainty_threshold: float = UNCERTAIN_NATS
                    ) -> VolumeCaption:
    """One caption for a whole volume.

    Args:
      classes: ``(X, Y, Z)`` uint8 internal classes (0 bg, 1 NCR, 2 ED, 3 ET; or 0/1 for a WT
        model), canonical RAS order.
      affine: ``(4, 4)`` voxel -> world (RAS+ mm) affine of that array (``props.canonical_affine``).
      brain: ``(X, Y, Z)`` bool brain mask (e.g. any modality > 0); its centroid is the reference.
      saliency: optional ``(X, Y, Z)`` float, non-negative (e.g. Grad-CAM in [0, 1]).
      uncertainty: optional ``(X, Y, Z)`` float (e.g. predictive entropy).
      regions: ('WT', 'TC', 'ET') for region/class models, ('WT',) for a whole-tumor model.
      uncertainty_threshold: a voxel is uncertain when its uncertainty >= this.
    Returns:
      a :class:`VolumeCaption`.
    """
    classes, affine, brain, subregions = _check(classes, affine, brain, saliency, uncertainty, regions)
    ref = _Reference(affine, brain)
    wt = classes > 0
    spacing = spacing_from_affine(affine)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(classes.ravel(), minlength=4)
    volumes = {"WT": float(counts[1:].sum()) * voxel_ml}
    if subregions:
        volumes |= {"TC": float(counts[1] + counts[3]) * voxel_ml, "ET": float(counts[3]) * voxel_ml,
                    "NCR": float(counts[1]) * voxel_ml, "ED": float(counts[2]) * voxel_ml}
    n_tumor, n_brain = int(counts[1:].sum()), int(brain.sum())
    uncertainty_note = None
    if uncertainty is not None:
        uncertainty_note = _uncertainty_notes(uncertainty, uncertainty_threshold, wt, False,
                                              [n_tumor], [n_brain], voxel_ml, "{:.1f} mL")[0]
    if n_tumor == 0:
        text = " ".join(p for p in ("No tumor predicted in this volume.", uncertainty_note) if p)
        return VolumeCaption(text, None, None, None, False, None, volumes, None, uncertainty_note)

    i, j, k = np.nonzero(wt)
    world = ref.world(np.stack([i, j, k], axis=1).astype(np.float64))  # (N, 3) mm
    centre = world.mean(axis=0)
    side, ap, si = (ref.word(axis, centre[axis]) for axis in range(3))
    left_share = np.mean(world[:, 0] < ref.centre[0] - ref.margin[0])
    right_share = np.mean(world[:, 0] > ref.centre[0] + ref.margin[0])
    crosses = bool(min(left_share, right_share) >= CROSSING_SHARE)
    size = _size(volumes["WT"], SMALL_ML, LARGE_ML)
    parts = [f"{size.capitalize()} tumor ({volumes['WT']:.1f} mL) {_where(side, ap, si, crosses)}."]
    if subregions:
        parts.append(_subregion_list(volumes, "mL") + f" (tumor core {volumes['TC']:.1f} mL).")
    saliency_note = None
    if saliency is not None:
        inside, half = _saliency_stats(saliency, wt, per_slice=False)
        saliency_note = _saliency_phrase(inside, half / max(n_brain, 1), "brain volume")[0]
    parts += [p for p in (saliency_note, uncertainty_note) if p]
    return VolumeCaption(" ".join(parts), side, ap, si, crosses, size, volumes, saliency_note, uncertainty_note)


def describe_slices(classes: np.ndarray, affine: np.ndarray, brain: np.ndarray,
                    saliency: np.ndarray | None = None, uncertainty: np.ndarray | None = None,
                    regions: tuple[str, ...] = REGIONS, *, uncertainty_threshold: float = UNCERTAIN_NATS
                    ) -> list[str]:
    """One caption per axial slice ``classes[:, :, z]``; arguments as in :func:`describe_volume`.

    Left/right and anterior/posterior come from the slice's tumor centroid, superior/inferior from
    the slice's level; reference, thresholds and rules are the volume's, with areas in mm² and an
    in-plane border band. All statistics are computed for every slice at once (per-slice
    reductions and bincounts), so 155 slices of 240 x 240 take a fraction of a second.
    Returns:
      ``Z`` strings, index z describing slice z.
    """
    classes, affine, brain, subregions = _check(classes, affine, brain, saliency, uncertainty, regions)
    ref = _Reference(affine, brain)
    n_z = classes.shape[2]
    spacing = spacing_from_affine(affine)
    pixel_mm2 = float(spacing[0] * spacing[1])
    wt = classes > 0
    i, j, k = np.nonzero(wt)
    # Per-slice class counts and tumor centroids from the tumor voxels only (small next to the volume).
    counts = np.bincount(k * 4 + classes[i, j, k], minlength=n_z * 4).reshape(n_z, 4)
    n_tumor = counts[:, 1:].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.stack([np.bincount(k, weights=i, minlength=n_z) / n_tumor,
                             np.bincount(k, weights=j, minlength=n_z) / n_tumor,
                             np.arange(n_z, dtype=np.float64)], axis=1)
    world_centre = ref.world(centroid)  # (Z, 3); nan rows where a slice has no tumor
    world_x = ref.world(np.stack([i, j, k], axis=1).astype(np.float64))[:, 0]
    mid, margin = ref.centre[0], ref.margin[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        left_share = np.bincount(k, weights=world_x < mid - margin, minlength=n_z) / n_tumor
        right_share = np.bincount(k, weights=world_x > mid + margin, minlength=n_z) / n_tumor
    level_voxels = np.stack([np.full(n_z, ref.centroid_voxel[0]), np.full(n_z, ref.centroid_voxel[1]),
                             np.arange(n_z, dtype=np.float64)], axis=1)
    level_z = ref.world(level_voxels)[:, 2]
    n_brain = brain.sum(axis=(0, 1))

    saliency_notes: list[str | None] = [None] * n_z
    if saliency is not None:
        inside, half = _saliency_stats(saliency, wt, per_slice=True)
        saliency_notes = _saliency_phrase(inside, half / np.maximum(n_brain, 1), "brain area")
    uncertainty_notes: list[str | None] = [None] * n_z
    if uncertainty is not None:
        uncertainty_notes = _uncertainty_notes(uncertainty, uncertainty_threshold, wt, True, n_tumor, n_brain,
                                               pixel_mm2, "{:.0f} mm²")

    captions = []
    for z in range(n_z):
        level = ref.word(2, level_z[z])
        head = f"Slice {z} ({'level of the brain centre' if level == 'central' else level + ' level'}):"
        if n_tumor[z] == 0:
            captions.append(" ".join(p for p in (head, "No tumor predicted in this slice.",
                                                 uncertainty_notes[z]) if p))
            continue
        area = n_tumor[z] * pixel_mm2
        side, ap = ref.word(0, world_centre[z, 0]), ref.word(1, world_centre[z, 1])
        crosses = min(left_share[z], right_share[z]) >= CROSSING_SHARE
        parts = [head, f"{_size(area, SMALL_MM2, LARGE_MM2).capitalize()} tumor area {area:.0f} mm² "
                       f"{_where(side, ap, 'central', crosses)}."]
        if subregions:
            areas = {key: counts[z, c] * pixel_mm2 for key, c, _ in _SUBREGIONS}
            parts.append(_subregion_list(areas, "mm²") + ".")
        parts += [p for p in (saliency_notes[z], uncertainty_notes[z]) if p]
        captions.append(" ".join(parts))
    return captions


def describe_image(classes: np.ndarray, brain: np.ndarray, saliency: np.ndarray | None = None,
                   uncertainty: np.ndarray | None = None, regions: tuple[str, ...] = ("WT",), *,
                   uncertainty_threshold: float = UNCERTAIN_NATS) -> VolumeCaption:
    """The caption of a 2D image (a one-slice ``(H, W, 1)`` map; rows along the first axis).

    A 2D file (``.mat``, PNG, TIFF) carries no orientation and no pixel size, so the tumor is
    placed in the *image* (upper / lower, left / right of its centre, as the image is displayed)
    and measured in pixels and as a share of the nonzero image area; saliency and uncertainty are
    described by the rules of :func:`describe_slices`. ``side``, ``anteroposterior`` and
    ``superoinferior`` are None: no patient direction is known.
    """
    classes, _, brain, subregions = _check(classes, np.eye(4), brain, saliency, uncertainty, regions)
    if classes.shape[2] != 1:
        raise ValueError(f"an image is one slice (H, W, 1), got shape {classes.shape}")
    wt = classes > 0
    n_tumor, n_brain = int(wt.sum()), int(brain.sum())
    uncertainty_note = None
    if uncertainty is not None:
        uncertainty_note = _uncertainty_notes(uncertainty, uncertainty_threshold, wt, True, [n_tumor], [n_brain],
                                              1.0, "{:.0f}", "pixels")[0]
    saliency_note = None
    if saliency is not None:
        inside, half = _saliency_stats(saliency, wt, per_slice=True)
        saliency_note = _saliency_phrase(inside, half / max(n_brain, 1), "image area")[0]
    if n_tumor == 0:
        text = " ".join(p for p in ("No tumor predicted in this image.", uncertainty_note) if p)
        return VolumeCaption(text, None, None, None, False, None, {}, saliency_note, uncertainty_note)
    rows, cols = np.nonzero(wt[:, :, 0])
    ref = brain[:, :, 0] if n_brain else np.ones(wt.shape[:2], bool)
    ref_rows, ref_cols = np.nonzero(ref)
    where = []
    for value, lo, hi, words in ((rows.mean(), ref_rows.min(), ref_rows.max(), ("upper", "lower")),
                                 (cols.mean(), ref_cols.min(), ref_cols.max(), ("left", "right"))):
        centre, margin = (lo + hi) / 2, IMAGE_CENTRAL_FRACTION * (hi - lo)
        if abs(value - centre) > margin:
            where.append(words[int(value > centre)])
    place = f"in the {' '.join(where)} part of the image" if where else "near the centre of the image"
    share = n_tumor / max(n_brain, 1)
    parts = [f"Tumor predicted: {n_tumor} pixels ({share:.1%} of the image's nonzero area), {place}."]
    if subregions:
        counts = np.bincount(classes.ravel(), minlength=4)
        parts.append(_subregion_list({key: float(counts[c]) for key, c, _ in _SUBREGIONS}, "pixels") + ".")
    parts += [p for p in (saliency_note, uncertainty_note) if p]
    return VolumeCaption(" ".join(parts), None, None, None, False, None, {}, saliency_note, uncertainty_note)


# ---------------------------------------------------------------------------------------------
# Geometry

class _Reference:
    """The brain's centroid, extent margins and the voxel -> world map, for words about location."""

    def __init__(self, affine: np.ndarray, brain: np.ndarray):
        self.affine = affine
        shape = np.array(brain.shape)
        sums = [brain.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
        n = sums[0].sum()
        if n == 0:  # no brain mask: fall back on the array's box
            self.centroid_voxel = (shape - 1) / 2.0
            lo, hi = np.zeros(3), shape - 1.0
        else:  # marginal sums: a centroid without listing the brain's million voxels
            self.centroid_voxel = np.array([(np.arange(len(s)) * s).sum() / n for s in sums])
            lo = np.array([np.flatnonzero(s)[0] for s in sums], np.float64)
            hi = np.array([np.flatnonzero(s)[-1] for s in sums], np.float64)
        self.centre = self.world(self.centroid_voxel[None])[0]
        world_corners = self.world(np.array(list(itertools.product(*zip(lo, hi)))))
        self.margin = CENTRAL_FRACTION * (world_corners.max(axis=0) - world_corners.min(axis=0))

    def world(self, voxels: np.ndarray) -> np.ndarray:
        """``(N, 3)`` voxel coordinates -> ``(N, 3)`` world RAS+ mm."""
        return voxels @ self.affine[:3, :3].T + self.affine[:3, 3]

    def word(self, axis: int, value: float) -> str:
        """World coordinate along ``axis`` -> 'left'/'midline'/'right' etc. relative to the brain."""
        offset = value - self.centre[axis]
        if abs(offset) <= self.margin[axis]:
            return "midline" if axis == 0 else "central"
        return (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))[axis][int(offset > 0)]


def _border_band(wt: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels within BORDER_VOXELS of the tumor boundary (both sides), and the tumor beyond them.

    Works in the tumor's bounding box padded by the band width (dilation and erosion over the whole
    240 x 240 x 155 volume would dominate the run time). Returns two ``(X, Y, Z)`` bool arrays.
    """
    band, interior = np.zeros_like(wt), np.zeros_like(wt)
    if not wt.any():
        return band, interior
    pad = BORDER_VOXELS + 1
    box = tuple(slice(max(int(idx.min()) - pad, 0), int(idx.max()) + pad + 1) for idx in np.nonzero(wt))
    core = wt[box]
    grown = ndimage.binary_dilation(core, structure, iterations=BORDER_VOXELS)
    shrunk = ndimage.binary_erosion(core, structure, iterations=BORDER_VOXELS)
    band[box], interior[box] = grown & ~shrunk, shrunk
    return band, interior


# ---------------------------------------------------------------------------------------------
# Saliency and uncertainty statistics

def _saliency_stats(saliency: np.ndarray, wt: np.ndarray, per_slice: bool) -> tuple[np.ndarray, np.ndarray]:
    """Inside share and half-mass voxel count, for the volume (G = 1) or per slice (G = Z).

    Args:
      saliency: ``(X, Y, Z)`` float, negative values count as 0; wt: ``(X, Y, Z)`` bool tumor.
    Returns:
      ``(G,)`` float64 each: the share of saliency mass on ``wt``, and the fewest voxels holding half
      the mass (from a 100-bin histogram of the values divided by their maximum, per slice when
      ``per_slice`` so that a faint slice keeps its resolution; linear within the bin that crosses
      half). Both are nan where there is no mass.
    """
    s = np.maximum(np.asarray(saliency, np.float32), np.float32(0))  # float32: half the memory traffic
    axes = (0, 1) if per_slice else None
    peak = s.max(axis=axes, keepdims=True)
    s /= np.where(peak > 0, peak, np.float32(1))
    n_groups = s.shape[2] if per_slice else 1
    bins = (s * np.float32(_BINS)).astype(np.int32)
    np.minimum(bins, _BINS - 1, out=bins)
    if per_slice:  # z is the last (fastest) axis: one broadcast add gives slice-major bin ids
        bins += np.arange(s.shape[2], dtype=np.int32) * _BINS
    mass = np.bincount(bins.ravel(), weights=s.ravel(), minlength=n_groups * _BINS)
    count = np.bincount(bins.ravel(), minlength=n_groups * _BINS)
    mass, count = (a.reshape(n_groups, _BINS)[:, ::-1] for a in (mass, count))  # brightest bin first
    total = mass.sum(axis=1)
    inside = np.atleast_1d(np.where(wt, s, np.float32(0)).sum(axis=axes, dtype=np.float64))
    cum_mass, cum_count = np.cumsum(mass, axis=1), np.cumsum(count, axis=1)
    target = 0.5 * total
    crossing = np.argmax(cum_mass >= target[:, None] * (1 - 1e-9), axis=1)
    rows = np.arange(n_groups)
    bin_mass, bin_count = mass[rows, crossing], count[rows, crossing]
    with np.errstate(invalid="ignore", divide="ignore"):
        within = np.where(bin_mass > 0, (target - (cum_mass[rows, crossing] - bin_mass)) / bin_mass, 0.0)
        half = np.where(total > 0, cum_count[rows, crossing] - bin_count + within * bin_count, np.nan)
        return inside / np.where(total > 0, total, np.nan), half


def _uncertainty_notes(uncertainty: np.ndarray, threshold: float, wt: np.ndarray, per_slice: bool,
                       n_tumor, n_brain, unit_size: float, unit_fmt: str, element: str = "voxels") -> list[str]:
    """One uncertainty note per group (the volume, or each slice with an in-plane border band).

    Args:
      uncertainty: ``(X, Y, Z)`` float; wt: ``(X, Y, Z)`` bool; n_tumor, n_brain: G voxel counts;
      unit_size: mL or mm² per voxel, formatted with ``unit_fmt``; element: what a voxel is
        called ("pixels" in a 2D image).
    """
    uncertain = np.asarray(uncertainty) >= threshold
    structure = ndimage.generate_binary_structure(3, 1)
    if per_slice:  # a slice's border is its in-plane outline, whatever the neighbouring slices hold
        structure[:, :, 0] = structure[:, :, 2] = False
    band, interior = _border_band(wt, structure)
    axes = (0, 1) if per_slice else None
    n = np.atleast_1d(uncertain.sum(axis=axes))
    with np.errstate(invalid="ignore", divide="ignore"):
        at_border = np.atleast_1d((uncertain & band).sum(axis=axes)) / n
        inside = np.atleast_1d((uncertain & interior).sum(axis=axes)) / n
    return [_uncertainty_phrase(int(n[g]), (at_border[g], inside[g], 1 - at_border[g] - inside[g]),
                                int(n_tumor[g]), int(n_brain[g]), unit_fmt.format(n[g] * unit_size), element)
            for g in range(n.size)]


# ---------------------------------------------------------------------------------------------
# Words

def _size(value: float, small: float, large: float) -> str:
    return "small" if value < small else "large" if value > large else "moderate"


def _where(side: str, ap: str, si: str, crosses: bool) -> str:
    """'in the patient's left hemisphere, posterior and superior, crossing the midline'."""
    text = "at the midline" if side == "midline" else f"in the patient's {side} hemisphere"
    others = [w for w in (ap, si) if w != "central"]
    if others:
        text += ", " + " and ".join(others)
    if crosses:
        text += ", extending into both hemispheres" if side == "midline" else ", crossing the midline"
    return text


def _subregion_list(amounts: dict[str, float], unit: str) -> str:
    """'Sub-regions: edema 40.1 mL, enhancing tumor 20.0 mL; no necrotic core', largest first.

    ``amounts`` maps 'NCR', 'ED', 'ET' to a volume (mL) or an area (mm²).
    """
    fmt = "{:.1f}" if unit == "mL" else "{:.0f}"
    present = sorted(((amounts[key], name) for key, _, name in _SUBREGIONS if amounts[key] > 0),
                     key=lambda item: -item[0])
    listed = ", ".join(f"{name} {fmt.format(value)} {unit}" for value, name in present)
    absent = [name for key, _, name in _SUBREGIONS if amounts[key] == 0]
    return f"Sub-regions: {listed}" + (f"; no {' or '.join(absent)}" if absent else "")


def _saliency_phrase(inside: np.ndarray, focus: np.ndarray, brain_extent: str) -> list[str]:
    """Per group: 'Saliency is concentrated (half its mass in 4% of the brain area) and lies mostly ...'."""
    notes = []
    for share, spread in zip(np.atleast_1d(inside), np.atleast_1d(focus)):
        if not np.isfinite(share):  # the map is zero here
            notes.append("No saliency.")
            continue
        how = ("concentrated" if spread <= CONCENTRATED else "diffuse" if spread > DIFFUSE
               else "moderately focused")
        where = ("mostly inside" if share >= INSIDE_MOSTLY else "partly inside" if share >= INSIDE_PARTLY
                 else "mostly outside")
        notes.append(f"Saliency is {how} (half its mass in {100 * spread:.0f}% of the {brain_extent}) and lies "
                     f"{where} the predicted tumor ({100 * share:.0f}% of its mass).")
    return notes


def _uncertainty_phrase(n: int, shares: tuple[float, float, float], n_tumor: int, n_brain: int, amount: str,
                        element: str = "voxels") -> str:
    """'Uncertain mainly at the tumor border (3.1 mL of uncertain voxels, 85% within 2 voxels ...)'."""
    allowed = LOW_UNCERTAIN_SHARE * n_tumor if n_tumor else LOW_UNCERTAIN_SHARE_NO_TUMOR * n_brain
    if n == 0 or n <= allowed:
        return "Low uncertainty."
    border, interior, elsewhere = shares
    # "3.1 mL of uncertain voxels"; a bare count (a 2D image has no pixel size): "412 uncertain pixels"
    detail = f"{amount} uncertain {element}" if amount[-1:].isdigit() else f"{amount} of uncertain {element}"
    if border >= BORDER_MAJORITY:
        return (f"Uncertain mainly at the tumor border ({detail}, {100 * border:.0f}% within "
                f"{BORDER_VOXELS} {element} of the predicted boundary).")
    if interior >= OTHER_MAJORITY:
        return f"Uncertain inside the tumor, away from its border ({detail}, {100 * interior:.0f}% there)."
    if elsewhere >= OTHER_MAJORITY:
        where = "the predicted tumor" if n_tumor else "any predicted tumor"
        return (f"Uncertain away from {where} ({detail}, {100 * elsewhere:.0f}% there): "
                "check for missed lesions.")
    return (f"Uncertainty is spread across the tumor and its surroundings ({detail}: {100 * border:.0f}% "
            f"at the border, {100 * interior:.0f}% inside, {100 * elsewhere:.0f}% elsewhere).")


def _check(classes, affine, brain, saliency, uncertainty, regions):
    """Validate shapes and regions; returns classes (uint8), affine (float64), brain (bool), subregions."""
    classes = np.asarray(classes)
    if classes.ndim != 3:
        raise ValueError(f"classes must be (X, Y, Z), got shape {classes.shape}")
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got shape {affine.shape}")
    brain = np.asarray(brain, bool)
    for name, array in (("brain", brain), ("saliency", saliency), ("uncertainty", uncertainty)):
        if array is not None and np.shape(array) != classes.shape:
            raise ValueError(f"{name} has shape {np.shape(array)}, expected {classes.shape} like classes")
    regions = tuple(r.upper() for r in regions)
    if regions not in (("WT",), REGIONS):
        raise ValueError(f"regions must be ('WT',) or {REGIONS}, got {regions}")
    if classes.size and (classes.min() < 0 or classes.max() > 3):
        raise ValueError("classes must be internal classes 0..3")
    return classes.astype(np.uint8, copy=False), affine, brain, regions == REGIONS


__all__ = ["VolumeCaption", "describe_volume", "describe_slices", "describe_image", "spacing_from_affine"]


# How a caption names a sequence (canonical modality names, jaxseg.data.brats.MODALITIES) and a region.
MODALITY_NAMES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}
REGION_NAMES = {"WT": "whole tumor", "TC": "tumor core", "ET": "enhancing tumor", "NCR": "necrotic core",
                "ED": "edema", "BG": "background"}


def modality_caption(region: str, shares: dict[str, float] | None) -> str:
    """``'enhancing tumor: mainly T1ce (64%)'``: the sequence with the largest share of a
    region's attribution (:func:`jaxseg.explain.modality.modality_attribution`); ``'<region>:
    not predicted'`` for a region without shares. Ties go to the first sequence."""
    name = REGION_NAMES.get(region, region)
    if not shares:
        return f"{name}: not predicted"
    top = max(shares, key=shares.get)
    return f"{name}: mainly {MODALITY_NAMES.get(top, top)} ({shares[top]:.0%})"
