"""The ``image_folder`` format: PNG/TIFF slices with ``<stem><data.mask_suffix>.<ext>`` masks, a
patient per folder; read by :mod:`jaxseg.data.image_folder`. Case id: the path under the root
without extension; subject: the folder; channels: the file's (grayscale or RGB)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from jaxseg.data import image_folder, inspect
from jaxseg.data.formats.records2d import SliceRecords
from jaxseg.data.records import Record, folder_record, sorted_unique


class ImageFolder(SliceRecords):
    name = "image_folder"
    suffixes = image_folder.IMAGE_SUFFIXES

    def find_records(self, root: Path, mask_suffix: str = "_mask", require_masks: bool = True) -> list[Record]:
        """Raises for unpaired images (with ``require_masks``) and masks without an image."""
        root = Path(root)
        if root.is_file():
            return [self.input_record(root)]
        return sorted_unique([folder_record(root, image, mask)
                              for image, mask in image_folder.find_pairs(root, mask_suffix, require_masks)])

    def input_record(self, path: Path) -> Record:
        return Record(case_id=path.stem, subject=path.stem, image=path, mask=None, format=self.name)

    def load_record(self, record: Record, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
        return image_folder.read_pair(record.image, record.mask, channels)

    def read_mask(self, record: Record) -> np.ndarray:
        return image_folder.read_pair(record.image, record.mask)[1]

    def inspect_jobs(self, root: Path, mask_suffix: str) -> list:
        return [functools.partial(inspect.inspect_image_pair, root, image, mask, mask_suffix)
                for image, mask in image_folder.find_pairs(root, mask_suffix, require_masks=False)]


FORMAT = ImageFolder()
