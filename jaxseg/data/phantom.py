"""Synthetic brain-tumor MRI cases: the built-in data that the demo and most tests use.

A phantom is procedural (no downloads) and deterministic by seed. It is skull-stripped like
BraTS (background exactly 0) and has four co-registered modalities with plausible relative
contrasts: a folded cortex over white matter, deep grey nuclei, paired lateral ventricles, an
interhemispheric fissure, a cerebellum and brain stem, cortical vessels that enhance on T1ce, a
mild bias field and Rician noise. One glioma-like tumor sits in the cerebrum: a distorted blob
whose core is a necrotic centre (NCR) inside an enhancing rim (ET, 1-3 voxels thick), inside an
irregular halo of edema (ED).

The anatomy is laid out in box-relative coordinates, so the brain fills any ``shape`` the same
way; a 240 x 240 x 155 phantom is the same kind of brain as a 96 x 96 x 64 one, just finer.
Tumor size is drawn as a fraction of the brain volume, so at 240 x 240 x 155 (1 mm voxels)
the whole tumor ranges from about 1 mL to about 100 mL, and scales with the shape.

Every case has all three sub-regions: the core is never drawn narrower than 2.5 voxels in
radius, which leaves room for a necrotic centre inside a one-voxel rim even when the size draw
asks for less (so at small shapes the smallest tumors are a little above their share). Only a
core cut down by the edge of the cerebrum could lose its centre; the centre is placed to avoid
that, and 100 seeds at 96 x 96 x 64 and 20 at 64 x 64 x 40 all have NCR, ED and ET.

Images are float32 but integer-valued (rounded, at least 1 inside the brain), because files
hold int16: reading a written phantom back gives exactly the arrays :func:`make_phantom` made.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from jaxseg.data import brats
from jaxseg.errors import JaxsegError, file_error
from jaxseg.files import atomic_path

MODALITIES = ("flair", "t1", "t1ce", "t2")
# Codes of the healthy-tissue map that :func:`make_tissues` returns (index = code).
TISSUES = ("background", "csf", "grey_matter", "white_matter", "deep_grey", "vessel")

# Render codes: the tissues, then the tumor classes (6 + internal class - 1).
_BG, _CSF, _GM, _WM, _DGM, _VESSEL, _NCR, _ED, _ET = range(9)
# Relative signal per tissue code (columns as above), white matter of T1 = 1. Orderings follow
# clinical MRI: T1 WM > GM > CSF; T2 CSF >> GM > WM; FLAIR suppresses CSF, GM > WM; edema is
# bright on FLAIR and T2; T1ce enhances the tumor rim and vessels around a dark necrotic core.
_CONTRAST = {
    "flair": (0, 0.22, 0.80, 0.64, 0.74, 0.30, 1.05, 1.25, 1.12),
    "t1": (0, 0.32, 0.70, 1.00, 0.80, 0.40, 0.42, 0.76, 0.68),
    "t1ce": (0, 0.32, 0.68, 0.94, 0.78, 1.55, 0.38, 0.78, 1.70),
    "t2": (0, 1.75, 0.86, 0.58, 0.74, 0.35, 1.55, 1.28, 1.05),
}
# White-matter signal range per modality in file units, one draw per case (scanner variation);
# chosen so values stay within about 0..1500 like BraTS int16 images.
_WM_LEVEL = {"flair": (260, 380), "t1": (450, 650), "t1ce": (380, 560), "t2": (300, 440)}
_NOISE = 0.025  # Rician noise sigma as a fraction of the white-matter level (SNR about 40)


def make_phantom(seed: int, shape: Sequence[int] = (96, 96, 64),
                 spacing: Sequence[float] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One synthetic case in canonical RAS+ voxel order, deterministic by ``seed``.

    Args:
        seed: a non-negative integer; the only source of randomness (``np.random.default_rng``).
        shape: ``(X, Y, Z)`` voxels, each at least 16.
        spacing: voxel size in mm ``(X, Y, Z)``, default 1 mm. The anatomy fills the box
            whatever the spacing; spacing only enters the enhancing rim, whose 1-3 voxel
            thickness is measured in mm (in units of the finest axis), so an anisotropic grid
            does not get a thicker rim along its coarse axis.

    Returns:
        ``(images, classes)``: ``images`` maps ``'flair', 't1', 't1ce', 't2'`` to ``(X, Y, Z)``
        float32 volumes (integer-valued, 0 outside the brain, >= 1 inside, at most ~1500);
        ``classes`` is ``(X, Y, Z)`` uint8 with 0 background, 1 NCR, 2 ED, 3 ET.
    """
    shape, spacing = _check_geometry(shape, spacing)
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    tissue, cerebrum_rho, brain = _anatomy(rng, shape)
    classes = _tumor(rng, shape, spacing, cerebrum_rho, brain, tissue)
    images = _render(rng, tissue, classes, brain)
    return images, classes


def make_tissues(seed: int, shape: Sequence[int] = (96, 96, 64)) -> np.ndarray:
    """The healthy anatomy under ``make_phantom(seed, shape)``'s tumor: ``(X, Y, Z)`` uint8 codes.

    Codes index :data:`TISSUES` (0 background, 1 CSF, 2 grey matter, 3 white matter, 4 deep
    grey nuclei, 5 vessels). Useful to check contrasts, or where an explanation looks.
    """
    shape, _ = _check_geometry(shape, None)
    _check_seed(seed)
    return _anatomy(np.random.default_rng(seed), shape)[0]  # the phantom draws its anatomy first


def case_id(seed: int, index: int) -> str:
    """The BraTS-2021-style id of phantom ``index`` of a set: ``Phantom_<seed>_<index:03d>``."""
    return f"Phantom_{seed}_{index:03d}"


def case_seed(seed: int, index: int) -> int:
    """The :func:`make_phantom` seed of case ``index`` of the set written with ``seed``.

    Derived with ``SeedSequence([seed, index])`` so neighbouring sets and cases are unrelated.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def phantom_affine(shape: Sequence[int], spacing: Sequence[float] | None = None,
                   orientation: str = "LPS") -> np.ndarray:
    """The ``(4, 4)`` affine of a written phantom.

    ``'LPS'`` mirrors BraTS (``[[-1,0,0,-0],[0,-1,0,239],[0,0,1,0]]`` for 240 x 240 x 155 at
    1 mm): stored index 0 runs toward Left, 1 toward Posterior. ``'RAS'`` describes the same
    physical volume with the canonical array stored as is, so both files put every voxel at the
    same world position.
    """
    shape, spacing = _check_geometry(shape, spacing)
    (nx, ny, _), (sx, sy, sz) = shape, spacing
    if orientation == "LPS":
        return np.array([[-sx, 0, 0, 0], [0, -sy, 0, (ny - 1) * sy], [0, 0, sz, 0], [0, 0, 0, 1]])
    if orientation == "RAS":
        return np.array([[sx, 0, 0, -(nx - 1) * sx], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]])
    raise JaxsegError(f"phantom orientation: must be LPS or RAS; got {orientation!r}")


def write_phantoms(out: str | Path, cases: int, seed: int, shape: Sequence[int] = (96, 96, 64),
                   spacing: Sequence[float] | None = None, orientation: str = "LPS") -> list[Path]:
    """Write ``cases`` phantoms as a BraTS 2021 style dataset; return the case folders.

    Case ``i`` is ``make_phantom(case_seed(seed, i), shape, spacing)`` written to
    ``<out>/Phantom_<seed>_<i:03d>/Phantom_<seed>_<i:03d>_{flair,t1,t1ce,t2,seg}.nii.gz``:
    images int16, ``seg`` uint8 with the BraTS 2017-2021 labels 0, 1, 2, 4 (4 = ET). With
    ``orientation='LPS'`` (default, like BraTS) the stored arrays are the canonical ones flipped
    on axes 0 and 1; with ``'RAS'`` they are stored as is (see :func:`phantom_affine`).
    Existing files of the same names are replaced; every file is written atomically.
    """
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise JaxsegError(f"phantom cases: must be at least 1; got {cases!r}")
    _check_seed(seed)
    affine = phantom_affine(shape, spacing, orientation)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a folder")
    folders = []
    for i in range(cases):
        images, classes = make_phantom(case_seed(seed, i), shape, spacing)
        name = case_id(seed, i)
        folder = out / name
        labels = brats.from_internal(classes, "brats2021").astype(np.uint8)  # ET is 4 in 2021 files
        volumes = {m: images[m].astype(np.int16) for m in MODALITIES} | {"seg": labels}
        for suffix, volume in volumes.items():
            if orientation == "LPS":
                volume = volume[::-1, ::-1, :]
            _save_nifti(np.ascontiguousarray(volume), affine, folder / f"{name}_{suffix}.nii.gz")
        folders.append(folder)
    return folders


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)  # stored as is: no scaling slope
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    try:
        with atomic_path(path) as tmp:
            nib.save(image, tmp)
    except OSError as err:
        raise file_error(path, f"cannot write ({err.strerror or err})") from None


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise JaxsegError(f"phantom seed: must be a non-negative integer; got {seed!r}")


def _check_geometry(shape: Sequence[int], spacing: Sequence[float] | None
                    ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    try:
        shape = tuple(int(n) for n in shape)
        spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise JaxsegError(f"phantom shape/spacing: must be three numbers; got {shape!r}, {spacing!r}") from None
    if len(shape) != 3 or min(shape) < 16:
        raise JaxsegError(f"phantom shape: must be three sizes of at least 16; got {shape}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise JaxsegError(f"phantom spacing: must be three positive sizes in mm; got {spacing}")
    return shape, spacing


# ---------------------------------------------------------------------------------------------
# Random fields

def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: Sequence[float]) -> np.ndarray:
    """A zero-mean random field (std about 0.9), smooth on the scale ``shape / cells``.

    White noise on a coarse grid of about ``cells`` points per axis, smoothed there and brought
    to ``shape`` with separable cubic B-spline weights: cheap (the work is at coarse size until
    the last axis) and smooth enough that thresholding it gives curved, not faceted, surfaces.
    The coarse grid does not depend on ``shape`` at its resolution, only on ``cells``.
    """
    coarse_shape = tuple(max(2, int(round(c))) + 4 for c in cells)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.7, mode="wrap")
    field /= field.std()
    for axis, n in enumerate(shape):
        field = _bspline_upsample(field, axis, n)
    return np.ascontiguousarray(field) * np.float32(1.35)  # makes up for the B-spline smoothing


def _bspline_upsample(field: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Resample one axis of ``field`` to ``n`` points with cubic B-spline weights (a matmul)."""
    inner = field.shape[axis] - 4  # two cells of support on each side
    pos = (np.arange(n) + 0.5) / n * inner + 1.5
    base = np.floor(pos).astype(int)
    t = pos - base
    weights = np.zeros((field.shape[axis], n), np.float32)
    for k, w in enumerate(((1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6,
                           (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6)):
        weights[base + k - 1, np.arange(n)] = w
    return np.moveaxis(np.tensordot(field.astype(np.float32), weights, axes=([axis], [0])), -1, axis)


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box-relative coordinates in (-1, 1) per axis, as broadcastable (X,1,1), (1,Y,1), (1,1,Z)."""
    axes = [((np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1) for n in shape]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _ellipsoid(u, centre, radii) -> np.ndarray:
    """Normalized ellipsoidal radius: < 1 inside the ellipsoid (float32, broadcast shape)."""
    return np.sqrt(sum(((u[i] - centre[i]) / radii[i]) ** 2 for i in range(3))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Anatomy

def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue codes ``(X, Y, Z)`` uint8, the cerebrum's normalized radius, and the brain mask."""
    u = _grid(shape)
    jitter = lambda scale: 1 + scale * rng.uniform(-1, 1)  # noqa: E731 - per-case size variation
    radii = (0.68 * jitter(0.05), 0.82 * jitter(0.05), 0.78 * jitter(0.05))
    centre = (0.0, 0.02, 0.12)
    # The cerebrum: an egg (wider at the back) with a smooth, irregular boundary.
    wide_back = 1 - 0.08 * u[1]
    rho = np.sqrt((u[0] / (radii[0] * wide_back)) ** 2 + ((u[1] - centre[1]) / radii[1]) ** 2
                  + ((u[2] - centre[2]) / radii[2]) ** 2).astype(np.float32)
    rho /= 1 + 0.035 * _smooth_field(rng, shape, (5, 5, 4))
    cerebrum = rho < 1
    # Cerebellum below the occipital lobes, brain stem in front of it.
    cerebellum_rho = _ellipsoid(u, (0.0, -0.50, -0.50), (0.48, 0.30, 0.28))
    stem_rho = _ellipsoid(u, (0.0, -0.14, -0.55), (0.13, 0.15, 0.40))
    cerebellum = cerebellum_rho < 1
    brain = cerebrum | cerebellum | (stem_rho < 1)

    # Folded cortex: sulci are thin sheets where a smooth field crosses zero, reaching inward
    # from the surface; grey matter lines the surface and the sulci.
    depth = 1 - rho
    sulcal = np.abs(_smooth_field(rng, shape, (24, 28, 20)))
    thickness = 0.045 * (1 + 0.3 * _smooth_field(rng, shape, (6, 6, 5)))
    sulcus = (sulcal < 0.10) & (depth < 0.22)
    grey = (depth < thickness) | ((sulcal < 0.42) & (depth < 0.22 + thickness))
    tissue = np.full(shape, _WM, np.uint8)
    tissue[grey] = _GM
    tissue[sulcus] = _CSF
    # Cerebellum: grey folia around a white core; the brain stem is white matter.
    folia = np.abs(np.sin(np.pi * (6 * cerebellum_rho + 0.5 * sulcal))) < 0.35  # curved leaves
    tissue[cerebellum & ~cerebrum & ((cerebellum_rho > 0.55) | folia)] = _GM
    tissue[cerebellum & ~cerebrum & (cerebellum_rho > 0.55) & folia & (cerebellum_rho > 0.8)] = _CSF

    # Deep grey nuclei (thalami, lentiform nuclei), mirrored about the midline.
    for side in (-1, 1):
        for c, r in (((0.16, -0.10, 0.02), (0.11, 0.15, 0.12)), ((0.30, 0.14, 0.06), (0.07, 0.16, 0.12))):
            tissue[(_ellipsoid(u, (side * c[0], c[1], c[2]), r) < 1) & cerebrum] = _DGM
    # Lateral ventricles: paired bananas whose horns diverge and dip at both ends.
    ventricles = np.zeros(shape, bool)
    vr = rng.uniform(0.8, 1.25)  # ventricle size varies between people
    for side in (-1, 1):
        y = (u[1] - 0.05) / 0.40
        cx = side * (0.075 + 0.07 * np.abs(y)) * vr ** 0.5
        cz = 0.22 - 0.16 * y**2
        ventricles |= ((u[0] - cx) / (0.065 * vr)) ** 2 + y**2 + ((u[2] - cz) / (0.11 * vr)) ** 2 < 1
    ventricles |= _ellipsoid(u, (0.0, -0.05, 0.02), (0.018 * vr, 0.14, 0.10)) < 1  # third ventricle
    tissue[ventricles] = _CSF
    # Interhemispheric fissure: a thin CSF sheet in the midline down to the corpus callosum.
    half_width = max(0.6, shape[0] / 200) * 2 / shape[0]
    fissure = (np.abs(u[0]) < half_width) & ((depth < 0.42) | (u[2] > 0.35) | (np.abs(u[1]) > 0.45))
    tissue[fissure & cerebrum & ~ventricles] = _CSF
    # Cortical vessels run in the sulci: the sulcal sheets cut by a second zero-crossing sheet.
    vessels = (sulcal < 0.16) & (depth < 0.22) & (np.abs(_smooth_field(rng, shape, (10, 10, 8))) < 0.12)
    tissue[vessels & cerebrum] = _VESSEL
    tissue[~brain] = _BG
    return tissue, rho, brain


# ---------------------------------------------------------------------------------------------
# Tumor

def _tumor(rng, shape, spacing, rho, brain, tissue) -> np.ndarray:
    """Internal classes ``(X, Y, Z)`` uint8 of one tumor in the cerebrum."""
    brain_voxels = float(brain.sum())
    # Whole-tumor volume: 0.1 % to 9 % of the brain (about 1 to 100 mL in a full-size brain),
    # log-scaled and skewed toward the larger tumors that BraTS mostly holds.
    fraction = float(np.exp(np.log(1e-3) + np.log(90.0) * rng.uniform() ** 0.6))
    core_share = rng.uniform(0.12, 0.45)  # tumor core (NCR + ET) / whole tumor, by volume
    halo = core_share ** (-1 / 3)  # edema reaches this many core radii out
    core_radius = (3 * fraction * core_share * brain_voxels / (4 * np.pi)) ** (1 / 3)
    core_radius = max(core_radius, 2.5)  # below this, rim and necrosis cannot both be resolved
    aspect = np.exp(rng.normal(0, 0.18, 3))
    core_radii = core_radius * aspect / np.prod(aspect) ** (1 / 3)
    reach = halo * core_radii.max() * 1.5 + 3

    # Centre: in the cerebrum, deep enough for the core; usually away from the midline.
    u = _grid(shape)
    edge = 1 - 0.6 * core_radius / (np.array(shape) / 2 * 0.74).min()
    allowed = (rho < max(edge, 0.35)) & (tissue != _CSF)
    if rng.uniform() < 0.85:  # one hemisphere; otherwise free to straddle (a butterfly glioma)
        allowed &= np.abs(u[0]) * shape[0] / 2 > min(halo * core_radius, 0.35 * shape[0] / 2)
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        candidates = np.flatnonzero(brain & (tissue != _CSF))
    centre = np.array(np.unravel_index(rng.choice(candidates), shape))

    # Work in the tumor's bounding box only.
    lo = np.maximum(centre - int(np.ceil(reach)), 0)
    hi = np.minimum(centre + int(np.ceil(reach)) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    offsets = np.ix_(*[np.arange(a, b, dtype=np.float32) - c for a, b, c in zip(lo, hi, centre)])
    rotation = _random_rotation(rng)
    scale = reach / 2.5  # the edema's fields vary over about a core radius, however big
    cells = [max(2.0, n / scale) for n in box_shape]
    halo_noise = _smooth_field(rng, box_shape, [c * 2.0 for c in cells])
    halo_noise -= halo_noise.mean()  # a small box sees few cells: keep the size on average
    rim_noise = _smooth_field(rng, box_shape, cells)
    # Ellipsoidal radius in the tumor's own (rotated) frame, 1 on the undistorted core surface.
    along = [sum(rotation[row, k] * offsets[k] for k in range(3)) / core_radii[row] for row in range(3)]
    norm = np.sqrt(sum(a * a for a in along))
    # Lobulated core: the surface radius depends on direction only (a smooth random function on
    # the sphere), so the core stays star-shaped around its centre and keeps its size.
    lobes = ndimage.gaussian_filter(rng.standard_normal((7, 7, 7)), 1.0, mode="wrap")
    lobes /= lobes.std()
    direction = [np.broadcast_to(a / np.maximum(norm, 1e-6), box_shape) for a in along]
    coords = np.stack([(d + 1) * 3 for d in direction]).reshape(3, -1)
    surface = 1 + 0.25 * np.clip(ndimage.map_coordinates(lobes, coords, order=1), -2.5, 2.5)
    radius = norm / surface.reshape(box_shape).astype(np.float32)
    core = radius < 1
    whole = core | (radius < halo * (1 + 0.35 * np.clip(halo_noise, -2, 2)))
    box_brain = (rho[box] < 1) & brain[box]  # the cerebrum: gliomas here are supratentorial
    core &= box_brain
    whole &= box_brain & ~((tissue[box] == _CSF) & ~core)  # edema spares the CSF spaces
    whole = _largest_component(whole) | core  # no detached islands of edema

    # Enhancing rim: core voxels within 1-3 voxels (finest axis, in mm) of the core's edge.
    finest = min(spacing)
    depth = ndimage.distance_transform_edt(np.pad(core, 1), sampling=np.array(spacing) / finest)
    depth = depth[1:-1, 1:-1, 1:-1]
    thickness = rng.uniform(1.0, 3.0)
    thickness = min(thickness, max(1.0, 0.35 * core_radii.min()))  # keep room for a necrotic centre
    # The rim is closed (every edge voxel of the core enhances) and varies in thickness.
    rim = core & (depth <= np.maximum(1.0, thickness * (1 + 0.25 * np.clip(rim_noise, -2, 2))))
    if not (core & ~rim).any():  # too thin for a centre: a rim of one voxel, if that leaves one
        rim = core & (depth <= 1.0)
    box_classes = np.zeros(box_shape, np.uint8)
    box_classes[whole] = 2
    box_classes[core] = 1
    box_classes[rim] = 3
    classes = np.zeros(shape, np.uint8)
    classes[box] = box_classes
    return classes


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)  # uniform over orientations


# ---------------------------------------------------------------------------------------------
# Images

def _render(rng, tissue, classes, brain) -> dict[str, np.ndarray]:
    """Four modalities from tissue codes and tumor classes: contrast, texture, blur, bias, noise."""
    shape = tissue.shape
    codes = tissue.copy()
    codes[classes > 0] = classes[classes > 0] + (_NCR - 1)
    tumor = classes > 0
    n_brain = int(brain.sum())
    texture = _smooth_field(rng, shape, (24, 24, 18))  # shared: it is anatomy, not the scanner
    images = {}
    for name in MODALITIES:
        wm = rng.uniform(*_WM_LEVEL[name])
        lut = np.asarray(_CONTRAST[name], np.float32) * np.float32(wm / _CONTRAST[name][_WM])
        clean = lut[codes] * (1 + np.float32(0.03) * texture)
        clean[tumor] *= 1 + np.float32(0.06) * texture[tumor]  # tumors are more heterogeneous
        clean = ndimage.gaussian_filter(clean, 0.5)  # partial-volume blur at tissue borders
        bias = np.exp(np.float32(0.05) * _smooth_field(rng, shape, (3, 3, 3)))  # about +-10 %
        sigma = np.float32(_NOISE * wm)
        # Rician magnitude noise, |signal + complex Gaussian noise|, drawn for brain voxels only
        # (a quarter of the box): skull-stripped, the background stays exactly 0.
        real = clean[brain] * bias[brain] + sigma * rng.standard_normal(n_brain, dtype=np.float32)
        imag = sigma * rng.standard_normal(n_brain, dtype=np.float32)
        image = np.zeros(shape, np.float32)
        image[brain] = np.clip(np.rint(np.sqrt(real * real + imag * imag)), 1, 32000)
        images[name] = image
    return images
