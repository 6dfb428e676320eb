"""Surface meshes of binary masks (the brain, tumor sub-regions) for the report's 3D view.

Marching cubes is scikit-image's ``skimage.measure.marching_cubes`` (Lewiner et al. 2003): it is
the reference implementation, handles the ambiguous cube cases consistently and takes a voxel
spacing and a step size directly. The mask is padded by one voxel so that a region touching the
volume border still gives a closed surface, and smoothed with a small Gaussian before the 0.5
iso-surface is taken, because a binary mask's iso-surface shows every voxel as a staircase.

Vertices are in millimetres in the canonical RAS voxel frame: vertex ``v`` lies at voxel index
``v / spacing`` (index 0 toward the patient's Right, 1 Anterior, 2 Superior).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from jaxseg.errors import JaxsegError

# Default surfaces of a report: name -> internal classes it covers. The brain is added separately
# (non-zero image voxels). Classes, not the nested WT/TC/ET regions, because the classes are
# disjoint: nested regions would hide each other in the 3D view.
CLASS_SURFACES: dict[str, tuple[int, ...]] = {"ED": (2,), "NCR": (1,), "ET": (3,)}
MAX_FACES = 50_000


def surface_mesh(mask: np.ndarray, spacing: Sequence[float], step: int = 2, *,
                 smooth: float = 1.0, max_faces: int | None = MAX_FACES) -> tuple[np.ndarray, np.ndarray]:
    """The iso-surface of a binary mask, by marching cubes.

    Args:
      mask: ``(X, Y, Z)`` bool (anything non-zero counts as inside).
      spacing: ``(3,)`` voxel size in mm along X, Y, Z.
      step: marching-cubes step in voxels; larger = coarser mesh, fewer faces.
      smooth: Gaussian sigma in voxels applied to the mask before the 0.5 iso-surface (0 = none).
      max_faces: if the mesh has more faces, the step grows until it has at most this many
        (None = no limit). Keeps a full-brain surface small enough to embed in a page.
    Returns:
      ``(vertices (V, 3) float32 in mm, faces (F, 3) int32)``; both empty for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise JaxsegError(f"surface_mesh: mask must be 3-D (X, Y, Z), got shape {mask.shape}")
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (3,) or not np.all(spacing_arr > 0):
        raise JaxsegError(f"surface_mesh: spacing must be 3 positive numbers, got {spacing!r}")
    if step < 1:
        raise JaxsegError(f"surface_mesh: step must be >= 1, got {step}")
    empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))
    inside = mask != 0
    if not inside.any():
        return empty
    # Crop to the mask's bounding box (plus padding) first: marching cubes and the filter then
    # only touch the region, which for a small tumor is a tiny fraction of the volume.
    pad = 2 + int(np.ceil(3 * smooth))
    lo, hi = bounding_box(inside)
    binary = np.pad(inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], pad).astype(np.float32)
    region = ndimage.gaussian_filter(binary, sigma=smooth, mode="constant") if smooth > 0 else binary
    if region.max() <= 0.5:  # a structure thinner than the smoothing kernel would vanish: keep it
        region = binary
    from skimage.measure import marching_cubes  # imported here: only reports need scikit-image

    mesh = None
    while True:
        try:
            verts, faces, _, _ = marching_cubes(region, level=0.5, spacing=tuple(spacing_arr),
                                                step_size=step, allow_degenerate=False)
        except RuntimeError:  # the step jumped over a structure smaller than itself
            if mesh is not None or step == 1:
                break
            step = 1
            continue
        mesh = verts, faces
        if max_faces is None or len(faces) <= max_faces or step >= min(region.shape) // 2:
            break
        # Faces scale roughly with 1 / step^2 (a surface's cell count): jump close to the target.
        step = max(step + 1, int(np.ceil(step * np.sqrt(len(faces) / max_faces))))
    if mesh is None:
        return empty
    verts, faces = mesh
    verts = verts + (lo - pad) * spacing_arr  # back to the full volume's frame
    return verts.astype(np.float32), faces.astype(np.int32)


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` int arrays ``(3,)``: the smallest box ``mask[lo:hi]`` holding every non-zero voxel
    of a non-empty ``(X, Y, Z)`` mask."""
    lo, hi = [], []
    for axis in range(3):
        present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        lo.append(present[0])
        hi.append(present[-1] + 1)
    return np.array(lo), np.array(hi)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` bool: voxels non-zero in any channel of a skull-stripped ``(X, Y, Z, C)`` image,
    holes filled (ventricles can be zero in some modalities but are inside the brain)."""
    image = np.asarray(image)
    mask = np.any(image != 0, axis=-1) if image.ndim == 4 else image != 0
    return ndimage.binary_fill_holes(mask)


def report_meshes(image: np.ndarray, segmentation: np.ndarray, spacing: Sequence[float], *,
                  step: int = 2, surfaces: Mapping[str, tuple[int, ...]] = CLASS_SURFACES,
                  brain: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The default surfaces of a report: the brain and each tumor class present.

    Args:
      image: ``(X, Y, Z, C)`` float32 canonical image (the brain = non-zero voxels).
      segmentation: ``(X, Y, Z)`` uint8 internal classes.
      spacing: ``(3,)`` mm.
      step: marching-cubes step for the brain; tumor classes use ``max(1, step - 1)`` because they
        are small and a coarse step would erase their shape.
      surfaces: name -> internal classes of each tumor surface.
      brain: ``(X, Y, Z)`` bool brain mask if already computed (default: :func:`brain_mask`).
    Returns:
      ``{'Brain': (V, F), 'ED': ..., 'NCR': ..., 'ET': ...}`` in that order; a surface with no
      voxel (an empty brain mask too) is left out, so the page never draws an empty scene.
    """
    meshes = {}
    brain = brain_mask(image) if brain is None else brain
    if brain.any():
        meshes["Brain"] = surface_mesh(brain, spacing, step)
    segmentation = np.asarray(segmentation)
    for name, classes in surfaces.items():
        mask = np.isin(segmentation, classes)
        if mask.any():
            meshes[name] = surface_mesh(mask, spacing, max(1, step - 1), smooth=0.8, max_faces=MAX_FACES // 2)
    return meshes
