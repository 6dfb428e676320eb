"""2D slice records of the non-BraTS formats, found and read the same way whatever the format.

A :class:`Record` is one labelled 2D slice and plays the part of a BraTS case in the loop: its
``case_id`` goes into ``splits.json``, its ``subject`` keeps a patient's slices in one split.

| ``data.format`` | files | case_id | subject |
|---|---|---|---|
| ``figshare_mat`` | ``<n>.mat`` (MATLAB v7.3, ``cjdata``) | ``<n>`` | ``cjdata.PID`` |
| ``image_folder`` | ``<stem>.png/.tif``, ``<stem><mask_suffix>.<ext>`` | path under root, no suffix | folder |

:func:`load_record` returns ``image (H, W, C)`` float32 and ``mask (H, W)`` uint8 0/1 in the
file's (row, column) order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseg.data import figshare, image_folder
from jaxseg.errors import JaxsegError, file_error

FORMATS_2D = ("figshare_mat", "image_folder")


@dataclass(frozen=True)
class Record:
    """One 2D slice: where its image and mask are, and whom it belongs to.

    ``mask`` is None for an unlabelled image (prediction only); for figshare it is the ``.mat``
    file itself. ``label`` is the figshare tumor class (1-3), else None.
    """

    case_id: str
    subject: str
    image: Path
    mask: Path | None
    format: str
    label: int | None = None


def detect_format(root: str | Path) -> str:
    """``brats`` if ``root`` (or a file) is NIfTI, ``figshare_mat`` for ``.mat`` files, else
    ``image_folder`` if it holds PNG/TIFF files; JaxsegError if none of these."""
    root = Path(root)
    if not root.exists():
        raise file_error(root, "no such file or folder")
    files = [root] if root.is_file() else (p for p in root.rglob("*") if not p.name.startswith("."))
    seen = set()
    for p in files:
        name = p.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            return "brats"
        if name.endswith(".mat"):
            seen.add("figshare_mat")
        elif name.endswith(image_folder.IMAGE_SUFFIXES):
            seen.add("image_folder")
    for fmt in FORMATS_2D:
        if fmt in seen:
            return fmt
    raise file_error(root, "holds no NIfTI (.nii.gz), MATLAB (.mat) or image (.png, .tif) files")


def find_records(root: str | Path, fmt: str, mask_suffix: str = "_mask", require_masks: bool = True
                 ) -> list[Record]:
    """Every slice of a ``fmt`` dataset under ``root``, sorted by case id.

    figshare: each file's header (PID, label) is read, so a file that cannot be read is reported
    here. Raises JaxsegError for a missing or empty folder, two files with one case id, unpaired
    images (with ``require_masks``) and masks.
    """
    root = Path(root)
    if fmt == "figshare_mat":
        paths = [root] if root.is_file() else figshare.find_files(root)
        records = []
        for path in paths:
            pid, label = figshare.read_header(path)
            records.append(Record(case_id=path.stem, subject=pid, image=path, mask=path, format=fmt, label=label))
    elif fmt == "image_folder":
        if root.is_file():
            records = [Record(case_id=root.stem, subject=root.stem, image=root, mask=None, format=fmt)]
        else:
            records = [folder_record(root, image, mask)
                       for image, mask in image_folder.find_pairs(root, mask_suffix, require_masks)]
    else:
        raise JaxsegError(f"data.format {fmt!r} is not a 2D format ({', '.join(FORMATS_2D)})")
    seen: dict[str, Record] = {}
    for record in records:
        if record.case_id in seen:
            raise file_error(record.image, f"case id {record.case_id} is also {seen[record.case_id].image}; "
                                           "file names must be unique")
        seen[record.case_id] = record
    return sorted(records, key=lambda r: r.case_id)


def folder_record(root: Path, image: Path, mask: Path | None) -> Record:
    """The record of an image under an image-folder root: case id = its path under ``root``
    without extension; subject = its folder (an image directly in ``root`` is its own subject)."""
    relative = image.relative_to(root)
    subject = relative.parent.as_posix() if relative.parent != Path(".") else relative.stem
    return Record(case_id=relative.with_suffix("").as_posix(), subject=subject, image=image, mask=mask,
                  format="image_folder")


def load_record(record: Record, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image (H, W, C) float32, mask (H, W) uint8 0/1 or None)`` with ``C == channels``.

    Raises JaxsegError naming the file for every problem the format readers check.
    """
    if record.format == "figshare_mat":
        if channels != 1:
            raise file_error(record.image, f"a figshare slice has one channel; data.modalities lists {channels}")
        s = figshare.read_slice(record.image)
        return s.image[..., None], (s.mask if record.mask is not None else None)
    return image_folder.read_pair(record.image, record.mask, channels)


def subjects_of(records: Sequence[Record]) -> dict[str, str]:
    """``case_id -> subject`` for :func:`jaxseg.data.split.split_cases`."""
    return {r.case_id: r.subject for r in records}


def input_format(path: str | Path) -> str:
    """The ``data.format`` of a prediction input: ``figshare_mat`` for a ``.mat`` file,
    ``image_folder`` for a ``.png``/``.tif``/``.tiff`` file, :func:`detect_format` for a folder of
    such files; ``brats`` for anything else (a NIfTI file, a case folder, an empty folder)."""
    path = Path(path)
    if path.is_dir():
        try:
            return detect_format(path)
        except JaxsegError:
            return "brats"
    suffix = path.suffix.lower()
    return "figshare_mat" if suffix == ".mat" else "image_folder" if suffix in image_folder.IMAGE_SUFFIXES else "brats"


def is_2d_input(path: str | Path) -> bool:
    """A file jaxseg reads as one 2D slice (``.mat``, ``.png``, ``.tif``, ``.tiff``), or a folder
    of such files (and no NIfTI)."""
    return input_format(path) != "brats"


def to_volume(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A slice as a one-slice volume for :mod:`jaxseg.data.preprocess`: ``(H, W, 1, C)`` and
    ``(H, W, 1)``, so the crop, fit and normalisation of BraTS slices apply unchanged (per slice)."""
    return image[:, :, None, :], None if mask is None else mask[:, :, None]
