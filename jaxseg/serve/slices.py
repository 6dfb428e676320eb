"""Uploads of one 2D slice, for models trained on a 2D format (figshare ``.mat``, PNG/TIFF images).

Two slots: ``slice`` (a ``.mat``, PNG or TIFF file: the image; a figshare ``.mat`` carries its
own tumor mask) and ``slice_mask`` (optional, a PNG or TIFF mask of a PNG/TIFF slice: Dice,
areas and calibration against it). The kind of a file is decided by its first bytes, never by the
client's name, and gives the suffix the readers need; the file is then read with the data layer's
own readers (:mod:`jaxseg.data.figshare`, :mod:`jaxseg.data.image_folder`), so an upload that
passes here is one ``jaxseg explain`` reads. :func:`slice_folder` copies them for a job under the
names ``explain`` looks for (``upload.<ext>`` and ``upload<data.mask_suffix>.<ext>``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from jaxseg.errors import JaxsegError

SLICE_SLOTS = ("slice", "slice_mask")
# A 2D MRI slice is at most about 1024 x 1024; this leaves room and stops a small PNG that
# decodes to gigabytes before its pixels are read.
MAX_PIXELS = 4096 * 4096
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def suffix_of(head: bytes, slot: str, name: str) -> str:
    """The file ending of an upload to a slice slot, from its first bytes; JaxsegError naming the
    client's file when it is none of the kinds the slot takes."""
    if head.startswith(PNG_MAGIC):
        return ".png"
    if head[:4] in TIFF_MAGICS:
        return ".tif"
    if slot == "slice" and head.startswith(b"MATLAB"):
        return ".mat"
    kinds = "a .mat, PNG or TIFF slice" if slot == "slice" else "a PNG or TIFF mask"
    raise JaxsegError(f"{name}: not {kinds}")


def check(slot: str, path: Path, name: str, other: tuple[int, ...] | None) -> tuple[tuple[int, int], int, bool]:
    """Read the upload at ``path`` as its slot's kind: ``((rows, columns), channels, has_mask)``.

    ``other``: the pixel size of the other slice slot's upload, if any (a mask must match its
    slice). Raises JaxsegError with one line naming the client's file (never the server's path).
    """
    from jaxseg.data import figshare, image_folder

    try:
        if path.suffix == ".mat":
            _check_mat_size(path)
            shape, channels, has_mask = figshare.read_slice(path).image.shape, 1, True
        else:
            _check_image_size(path)
            if slot == "slice_mask":
                shape, channels, has_mask = image_folder.read_mask(path).shape, 1, True
            else:
                image = image_folder.read_image(path)
                shape, channels, has_mask = image.shape[:2], image.shape[-1], False
    except JaxsegError as error:
        raise JaxsegError(str(error).replace(str(path), name)) from None
    shape = (int(shape[0]), int(shape[1]))
    if other is not None and tuple(other) != shape:
        which = ("the mask", "its slice") if slot == "slice_mask" else ("the slice", "its mask")
        raise JaxsegError(f"{name}: {which[0]} is {shape[0]} x {shape[1]} pixels but {which[1]} is "
                          f"{other[0]} x {other[1]}; a mask must have its slice's size")
    return shape, channels, has_mask


def _too_large(path: Path, shape: tuple[int, ...]) -> None:
    pixels = int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0
    if pixels > MAX_PIXELS:
        raise JaxsegError(f"{path}: {shape[0]} x {shape[1]} = {pixels:,} pixels is more than this app accepts "
                          f"for one slice ({MAX_PIXELS:,})")


def _check_image_size(path: Path) -> None:
    """Refuse an image too large to decode, from its header only."""
    import imageio.v3 as iio  # noqa: PLC0415 (only 2D slices need it)
    try:
        shape = iio.improps(path).shape
    except Exception as err:  # noqa: BLE001 (Pillow and tifffile raise many types for bad files)
        raise JaxsegError(f"{path}: cannot read this image ({type(err).__name__}: {err})") from None
    _too_large(path, tuple(shape))


def _check_mat_size(path: Path) -> None:
    """Refuse a ``.mat`` whose image is too large, from the HDF5 dataset's shape (no pixels read)."""
    import h5py  # noqa: PLC0415
    try:
        with h5py.File(path, "r") as f:
            shape = f["cjdata"]["image"].shape if "cjdata" in f and "image" in f["cjdata"] else ()
    except (OSError, KeyError, TypeError, ValueError):
        return  # not readable as HDF5: figshare.read_slice says precisely why
    _too_large(path, tuple(shape))


def used_uploads(uploads: dict) -> list:
    """The uploads a slice job reads: the ``slice``, and its ``slice_mask`` unless the slice holds
    its own (a figshare ``.mat``). Raises JaxsegError when there is no slice upload."""
    image = uploads.get("slice")
    if image is None:
        raise JaxsegError("this model reads one 2D slice (.mat, PNG or TIFF); upload it first")
    mask = uploads.get("slice_mask")
    return [image] + ([mask] if mask is not None and not image.has_mask else [])


def slice_folder(uploads: dict, mask_suffix: str, target: Path) -> Path:
    """Copy :func:`used_uploads` into ``target`` as ``upload.<ext>`` and
    ``upload<mask_suffix>.<ext>``; return the slice's copy."""
    image, *mask = used_uploads(uploads)
    target.mkdir(parents=True, exist_ok=True)
    dest = target / f"upload{image.path.suffix}"
    shutil.copyfile(image.path, dest)
    for m in mask:
        shutil.copyfile(m.path, target / f"upload{mask_suffix}{m.path.suffix}")
    return dest
