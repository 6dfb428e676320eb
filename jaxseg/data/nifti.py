"""NIfTI input and output that keeps the geometry (CONTRIBUTING.md, habit 10: geometry travels with the array).

Every reader returns ``(array, VolumeProperties)``. The array is in canonical **RAS+** voxel order
(index 0 toward the patient's Right, 1 toward Anterior, 2 toward Superior; nibabel's
``as_closest_canonical`` convention), so axial slices are ``vol[:, :, z]`` whatever the file's
storage order. The properties remember how the file stored the volume, and
:func:`write_volume` undoes the reorientation and reuses the input's affine and header, so a label
map written for an input overlays it exactly in any viewer.

Reorientation is a pure permutation and flip of voxel axes (``nibabel.orientations``); it never
resamples, so ``from_canonical(to_canonical(x)) == x`` bit for bit. For an oblique affine the axes are
matched to the closest world axes, as ``as_closest_canonical`` does.

Bad input (a missing, foreign, truncated or non-3D file, NaN or Inf voxels) raises
:class:`~jaxseg.errors.JaxsegError` with one line that names the file; nibabel, gzip and zlib
errors never escape.
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError

from jaxseg.errors import file_error
from jaxseg.files import atomic_path

_RAS = axcodes2ornt(("R", "A", "S"))
# What nibabel, gzip and zlib raise for files that are not NIfTI, cut short or corrupt.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, gzip.BadGzipFile,
                ValueError, struct.error, TypeError, IndexError)
# Geometry tolerance shared by everything that checks that two volumes are on the same grid.
AFFINE_ATOL = 1e-3


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make generated __eq__ ambiguous
class VolumeProperties:
    """How a volume was stored, so that results can be written back onto it.

    ``spacing`` and ``canonical_affine`` describe the RAS array that the readers return; ``shape``,
    ``affine``, ``header`` and ``orientation`` describe the file.
    """

    path: str
    shape: tuple[int, int, int]  # as stored in the file (a trailing singleton 4th dim dropped)
    affine: np.ndarray  # (4, 4) float64, voxel -> world (RAS mm) as stored
    header: nib.Nifti1Header  # copy of the input header (Nifti2Header is a subclass)
    orientation: tuple[str, str, str]  # axis codes as stored, e.g. ('L', 'P', 'S') for BraTS
    spacing: tuple[float, float, float]  # mm per voxel, in CANONICAL axis order
    canonical_affine: np.ndarray  # (4, 4) affine of the RAS-reoriented array

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of the RAS array (the stored shape permuted)."""
        order = _to_ras(self)[:, 0].astype(int)
        out = [0, 0, 0]
        for stored_axis, ras_axis in enumerate(order):
            out[ras_axis] = self.shape[stored_axis]
        return tuple(out)  # type: ignore[return-value]


def _to_ras(props: VolumeProperties) -> np.ndarray:
    return ornt_transform(io_orientation(props.affine), _RAS)


def _from_ras(props: VolumeProperties) -> np.ndarray:
    return ornt_transform(_RAS, io_orientation(props.affine))


def to_canonical(arr: np.ndarray, props: VolumeProperties) -> np.ndarray:
    """Reorder a stored-order array to RAS.

    Args:
      arr: ``(*props.shape, ...)`` any dtype; trailing axes (channels) are carried along.
    Returns:
      ``(*props.canonical_shape, ...)`` same dtype (a view when possible).
    """
    return apply_orientation(np.asarray(arr), _to_ras(props))


def from_canonical(arr: np.ndarray, props: VolumeProperties) -> np.ndarray:
    """Exact inverse of :func:`to_canonical`: RAS ``(*canonical_shape, ...)`` -> stored order."""
    return apply_orientation(np.asarray(arr), _from_ras(props))


def _reason(exc: BaseException, path: Path) -> str:
    """A short, one-line cause from a library exception, without repeating the path."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    for p in (str(path), str(path.resolve())):
        text = text.replace(f'"{p}"', "").replace(f"'{p}'", "").replace(p, "")
    text = re.sub(r"\s+", " ", text).strip(" :-")
    text = re.sub(r"\s+(from|of)$", "", text)  # "... got 1240 bytes from <path>"
    return text or type(exc).__name__


def _load(path: str | Path) -> tuple[nib.Nifti1Image, Path]:
    path = Path(path)
    if not path.exists():
        raise file_error(path, "no such file")
    if path.is_dir():
        raise file_error(path, "is a folder, not a NIfTI file")
    if path.stat().st_size == 0:
        raise file_error(path, "is an empty file (0 bytes), not a NIfTI volume")
    try:
        img = nib.load(path)
    except _READ_ERRORS as exc:
        raise file_error(path, f"not a readable NIfTI file ({_reason(exc, path)})") from None
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise file_error(path, f"not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img, path


def _stored_data(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Read all voxels now (nibabel is lazy) so that corrupt data fails here, and check the shape."""
    try:
        data = np.asanyarray(img.dataobj)  # applies scl_slope / scl_inter
    except _READ_ERRORS as exc:
        raise file_error(path, f"image data is truncated or corrupt ({_reason(exc, path)})") from None
    shape = data.shape
    if data.size == 0:  # before the rank check: nibabel drops the axes after a zero-length one
        raise file_error(path, f"is empty (shape {tuple(shape)}, no voxels)")
    while data.ndim > 3 and data.shape[-1] == 1:  # (X, Y, Z, 1): a 3D volume stored as 4D
        data = data[..., 0]
    if data.ndim != 3:
        extra = f" with {int(np.prod(shape[3:]))} volumes" if data.ndim > 3 else ""
        raise file_error(path, f"is {len(shape)}D{extra} (shape {tuple(shape)}); expected a 3D volume")
    return data


def _properties(img: nib.Nifti1Image, path: Path, shape: tuple[int, ...]) -> VolumeProperties:
    affine = np.array(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise file_error(path, f"has an invalid (singular or non-finite) affine {affine[:3].tolist()}")
    ornt = ornt_transform(io_orientation(affine), _RAS)
    canonical_affine = affine @ inv_ornt_aff(ornt, shape)
    # Column norms of the affine are the true voxel sizes (pixdim can disagree with an sform).
    spacing = tuple(float(s) for s in np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0)))
    return VolumeProperties(
        path=str(path), shape=tuple(int(s) for s in shape), affine=affine, header=img.header.copy(),
        orientation=tuple(nib.aff2axcodes(affine)), spacing=spacing, canonical_affine=canonical_affine)


def _check_finite(data: np.ndarray, path: Path) -> None:
    if np.issubdtype(data.dtype, np.integer) or np.all(np.isfinite(data)):
        return
    nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    what = " and ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if p)
    raise file_error(path, f"contains {what} voxels (not finite)")


def read_header(path: str | Path) -> VolumeProperties:
    """Geometry only, without reading the voxels (fast; corrupt data is not detected)."""
    img, path = _load(path)
    shape = tuple(img.shape)
    if 0 in shape or not shape:
        raise file_error(path, f"is empty (shape {shape}, no voxels)")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise file_error(path, f"is {len(img.shape)}D (shape {tuple(img.shape)}); expected a 3D volume")
    return _properties(img, path, shape)


def read_volume(path: str | Path, *, check_finite: bool = True) -> tuple[np.ndarray, VolumeProperties]:
    """Read an image volume in RAS order.

    Args:
      path: a 3D ``.nii`` or ``.nii.gz`` (a 4D file with one volume is accepted).
      check_finite: raise if any voxel is NaN or Inf.
    Returns:
      ``(X, Y, Z)`` float32 in RAS order (scl_slope/scl_inter applied), and the properties.
    """
    img, path = _load(path)
    data = _stored_data(img, path)
    props = _properties(img, path, data.shape)
    if check_finite:  # before the float32 cast, which would turn a huge finite float64 into Inf
        _check_finite(data, path)
    arr = to_canonical(data.astype(np.float32, copy=False), props)
    return np.ascontiguousarray(arr), props


def read_channels(path: str | Path) -> tuple[np.ndarray, VolumeProperties]:
    """Read a map with channels (``jaxseg predict --probabilities``' ``<name>_prob.nii.gz``) in RAS order.

    Returns:
      ``(X, Y, Z, K)`` float32 (a 3D file gives K = 1), the channels trailing, and the properties
      of its first three axes. Raises if it is not 3D or 4D or holds a NaN or Inf.
    """
    img, path = _load(path)
    try:
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise file_error(path, f"unreadable voxel data ({_reason(exc, path)})") from None
    data = data[..., None] if data.ndim == 3 else data
    if data.ndim != 4:
        raise file_error(path, f"is {data.ndim}D (shape {tuple(data.shape)}); expected (X, Y, Z, channels)")
    _check_finite(data, path)
    props = _properties(img, path, data.shape[:3])
    return np.ascontiguousarray(to_canonical(data.astype(np.float32, copy=False), props)), props


def read_label_volume(path: str | Path) -> tuple[np.ndarray, VolumeProperties]:
    """Read a label map in RAS order.

    Returns:
      ``(X, Y, Z)`` integer array (the stored integer dtype; a float-stored map whose values are all
      whole numbers becomes int32) and the properties. Raises if values are not whole numbers.
    """
    img, path = _load(path)
    data = _stored_data(img, path)
    props = _properties(img, path, data.shape)
    if not np.issubdtype(data.dtype, np.integer):
        _check_finite(data, path)
        if np.any(data != np.round(data)):
            raise file_error(path, "label map has non-whole-number values (is this an image, not a segmentation?)")
        data = data.astype(np.int32)
    return np.ascontiguousarray(to_canonical(data, props)), props


def geometry_mismatch(props: VolumeProperties, reference: VolumeProperties) -> str | None:
    """One line naming both files if the two volumes are not on the same voxel grid, else None."""
    if props.shape != reference.shape:
        return f"{props.path}: shape {props.shape} differs from {reference.path} shape {reference.shape}"
    if not np.allclose(props.affine, reference.affine, atol=AFFINE_ATOL):
        largest = float(np.abs(props.affine - reference.affine).max())
        return (f"{props.path}: affine differs from {reference.path} by up to {largest:.4g} "
                f"(origin {props.affine[:3, 3].round(3).tolist()} vs {reference.affine[:3, 3].round(3).tolist()}); "
                "the volumes are not co-registered")
    return None


def _output_dtype(arr: np.ndarray, dtype: npt.DTypeLike | None) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    if arr.dtype == np.bool_:
        return np.dtype(np.uint8)
    if arr.dtype == np.float64:
        return np.dtype(np.float32)
    if arr.dtype in (np.int64, np.uint64):  # many viewers cannot open 64-bit integer NIfTI
        return np.dtype(np.int32)
    return arr.dtype


def write_volume(arr_canonical: np.ndarray, props: VolumeProperties, path: str | Path,
                 dtype: npt.DTypeLike | None = None) -> Path:
    """Write a RAS array back in the input's storage order, shape, affine and header (atomically).

    Args:
      arr_canonical: ``(*props.canonical_shape)`` or ``(*props.canonical_shape, C)``; a result computed
        on the array a reader returned.
      props: the properties of the volume it belongs to.
      path: output ``.nii.gz`` or ``.nii``.
      dtype: output data type; default the array's (bool -> uint8, float64 -> float32,
        int64 -> int32). Values are cast, not scaled: the header's scl_slope/scl_inter are reset so
        label values are stored exactly.
    Returns:
      the path written. The qform and sform (and their codes) are the input's.
    """
    path = Path(path)
    arr = np.asarray(arr_canonical)
    if arr.shape[:3] != props.canonical_shape:
        raise file_error(path, f"array of shape {arr.shape} does not fit the volume {props.path} "
                               f"(canonical shape {props.canonical_shape})")
    out_dtype = _output_dtype(arr, dtype)
    stored = np.ascontiguousarray(from_canonical(arr, props)).astype(out_dtype, copy=False)
    header = props.header.copy()
    header.set_data_dtype(out_dtype)
    header.set_slope_inter(1.0, 0.0)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    # Passing the header's own best affine leaves qform, sform and both codes untouched
    # (nibabel only rewrites them when the affine differs).
    image = image_class(stored, props.affine, header)
    with atomic_path(path) as tmp:
        try:
            image.to_filename(tmp)
        except (OSError, ValueError, HeaderDataError) as exc:
            raise file_error(path, f"cannot write NIfTI ({_reason(exc, tmp)})") from None
    return path


__all__ = ["VolumeProperties", "read_volume", "read_label_volume", "read_header", "to_canonical",
           "from_canonical", "write_volume", "geometry_mismatch", "AFFINE_ATOL"]
