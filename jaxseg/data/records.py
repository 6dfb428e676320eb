"""2D slice records of the non-BraTS formats: what one is, whatever the format.

A :class:`Record` is one labelled 2D slice and plays the part of a BraTS case in the loop: its
``case_id`` goes into ``splits.json``, its ``subject`` keeps a patient's slices in one split.
Each format finds and reads its own (``jaxseg/data/formats/<format>.py``):

| ``data.format`` | files | case_id | subject |
|---|---|---|---|
| ``figshare_mat`` | ``<n>.mat`` (MATLAB v7.3, ``cjdata``) | ``<n>`` | ``cjdata.PID`` |
| ``image_folder`` | ``<stem>.png/.tif``, ``<stem><mask_suffix>.<ext>`` | path under root, no suffix | folder |

A format's ``load_record`` returns ``image (H, W, C)`` float32 and ``mask (H, W)`` uint8 0/1 in
the file's (row, column) order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseg.errors import file_error


@dataclass(frozen=True)
class Record:
    """One 2D slice: where its image and mask are, and whom it belongs to.

    ``mask`` is None for an unlabelled image (prediction only); for figshare it is the ``.mat``
    file itself. ``label`` is the figshare tumor class (1-3), else None. ``format`` is the
    ``data.format`` that found it.
    """

    case_id: str
    subject: str
    image: Path
    mask: Path | None
    format: str
    label: int | None = None


def sorted_unique(records: Sequence[Record]) -> list[Record]:
    """``records`` sorted by case id; JaxsegError naming both files when two share one case id."""
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


def subjects_of(records: Sequence[Record]) -> dict[str, str]:
    """``case_id -> subject`` for :func:`jaxseg.data.split.split_cases`."""
    return {r.case_id: r.subject for r in records}


def to_volume(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A slice as a one-slice volume for :mod:`jaxseg.data.preprocess`: ``(H, W, 1, C)`` and
    ``(H, W, 1)``, so the crop, fit and normalisation of BraTS slices apply unchanged (per slice)."""
    return image[:, :, None, :], None if mask is None else mask[:, :, None]
