"""The figshare brain-tumor dataset (Cheng et al. 2015): one MATLAB v7.3 ``.mat`` file per slice.

3064 T1-weighted contrast-enhanced slices of 233 patients, each file (``1.mat`` .. ``3064.mat``,
in four folders as downloaded) holding one struct ``cjdata`` with

- ``image``: the slice, int16, 512 x 512 or 256 x 256;
- ``tumorMask``: the tumor, uint8 0/1, same size;
- ``label``: 1 meningioma, 2 glioma, 3 pituitary tumor;
- ``PID``: the patient id, a MATLAB char array (uint16 code points);
- ``tumorBorder``: the outline's coordinates (not read: the mask carries the same information).

MATLAB v7.3 files are HDF5, so h5py reads them. MATLAB stores arrays column-major, so h5py
sees every matrix transposed: ``image`` and ``tumorMask`` are transposed back here and come out
in MATLAB's own (row, column) order, the order ``imagesc(cjdata.image)`` shows. Inside jaxseg a 2D
slice is ``(H, W)`` = (row, column); there is no patient frame for these slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxseg.data.brats import label_values
from jaxseg.errors import JaxsegError, file_error

TUMOR_LABELS = {1: "meningioma", 2: "glioma", 3: "pituitary"}
FIELDS = ("image", "tumorMask", "label", "PID")
# The download also holds cvind.mat, the authors' five-fold cross-validation indices: not a slice.
NOT_SLICES = ("cvind.mat",)


@dataclass(frozen=True)
class FigshareSlice:
    """One ``.mat`` slice: ``image (H, W)`` float32, ``mask (H, W)`` uint8 0/1, ``label`` 1-3
    (see :data:`TUMOR_LABELS`) and the patient id ``pid``."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    pid: str


def _open(path: Path):
    import h5py  # noqa: PLC0415 (a heavy import only the figshare format needs)
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except OSError as err:
        # h5py says "file signature not found" for a MATLAB v5 file, a truncated download or junk
        raise file_error(path, f"not a MATLAB v7.3 (HDF5) file, or truncated ({err})") from None


def _dataset(group, name: str, path: Path) -> np.ndarray:
    if name not in group:
        raise file_error(path, f"cjdata has no {name!r} field (expected {', '.join(FIELDS)})")
    try:
        return np.asarray(group[name][()])
    except (OSError, ValueError, TypeError, KeyError) as err:  # a dataset cut off by truncation
        raise file_error(path, f"cannot read cjdata.{name} ({err})") from None


def decode_pid(codes: np.ndarray, path: Path | str = "PID") -> str:
    """A MATLAB char array (uint16 code points, any shape) -> str; JaxsegError if empty or not text."""
    codes = np.asarray(codes)
    if codes.dtype.kind == "S":  # a PID written as an HDF5 byte string rather than a char array
        text = b"".join(codes.ravel().tolist()).decode("utf-8", "replace")
    elif codes.dtype.kind in "ui" and codes.size and 0 <= codes.min() and codes.max() < 0x110000:
        text = "".join(chr(int(c)) for c in codes.ravel())
    else:
        raise file_error(path, f"cjdata.PID is not a MATLAB char array (dtype {codes.dtype}, shape {codes.shape})")
    text = text.strip().strip("\x00")
    if not text:
        raise file_error(path, "cjdata.PID is empty")
    return text


def read_header(path: str | Path) -> tuple[str, int]:
    """``(pid, label)`` of a slice without reading its image (for case discovery)."""
    path = Path(path)
    with _open(path) as f:
        group = _group(f, path)
        return decode_pid(_dataset(group, "PID", path), path), _label(_dataset(group, "label", path), path)


def _group(f, path: Path):
    group = f.get("cjdata")
    if group is None or not hasattr(group, "keys"):
        raise file_error(path, "has no 'cjdata' struct (not a figshare brain-tumor slice)")
    return group


def _label(value: np.ndarray, path: Path) -> int:
    value = np.asarray(value).ravel()
    try:
        number = float(value[0]) if value.size == 1 else None
    except (TypeError, ValueError):
        number = None
    if number is None or number not in TUMOR_LABELS:
        raise file_error(path, f"cjdata.label is {value.tolist()}; expected one of 1 (meningioma), "
                               "2 (glioma), 3 (pituitary)")
    return int(number)


def read_slice(path: str | Path) -> FigshareSlice:
    """Read and check one figshare ``.mat`` slice.

    Raises JaxsegError naming ``path`` for a missing, non-HDF5, truncated or MATLAB v5 file, a
    missing ``cjdata`` field, an image that is not 2D, a mask of another shape or with values other
    than 0/1, NaN/Inf pixels, or a label outside 1-3.
    """
    path = Path(path)
    with _open(path) as f:
        group = _group(f, path)
        image = _dataset(group, "image", path)
        mask = _dataset(group, "tumorMask", path)
        label = _label(_dataset(group, "label", path), path)
        pid = decode_pid(_dataset(group, "PID", path), path)
    if image.ndim != 2 or min(image.shape) < 2:
        raise file_error(path, f"cjdata.image has shape {image.shape}; expected a 2D slice")
    if image.dtype.kind not in "uif":
        raise file_error(path, f"cjdata.image has dtype {image.dtype}; expected numbers")
    image, mask = image.T, mask.T  # MATLAB is column-major: h5py sees (column, row)
    if mask.shape != image.shape:
        raise file_error(path, f"cjdata.tumorMask is {_size(mask.shape)} but cjdata.image is {_size(image.shape)}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise file_error(path, f"cjdata.image has {int(np.count_nonzero(~np.isfinite(image)))} NaN or Inf pixels")
    values = label_values(mask)
    if not set(values) <= {0, 1}:
        raise file_error(path, f"cjdata.tumorMask has values {list(values[:8])}; expected 0 and 1")
    return FigshareSlice(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask.astype(np.uint8)),
                         label=label, pid=pid)


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def find_files(root: str | Path) -> list[Path]:
    """Every ``.mat`` slice under ``root`` (recursive; hidden names and :data:`NOT_SLICES` skipped),
    sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise file_error(root, "no such folder" if not root.exists() else "is not a folder")
    files = sorted(p for p in root.rglob("*.mat") if p.is_file() and not p.name.startswith(".")
                   and p.name.lower() not in NOT_SLICES)
    if not files:
        raise JaxsegError(f"{root}: no .mat files found (the figshare brain-tumor dataset has one per slice)")
    return files
