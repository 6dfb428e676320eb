"""The ``image_folder`` format: PNG/TIFF slices with ``<stem><data.mask_suffix>.<ext>`` masks, a
patient per folder; read by :mod:`jaxseg.data.image_folder`."""
from __future__ import annotations

import functools
from pathlib import Path

from jaxseg.data import image_folder, inspect
from jaxseg.data.formats.records2d import SliceRecords


class ImageFolder(SliceRecords):
    name = "image_folder"

    def inspect_jobs(self, root: Path, mask_suffix: str) -> list:
        return [functools.partial(inspect.inspect_image_pair, root, image, mask, mask_suffix)
                for image, mask in image_folder.find_pairs(root, mask_suffix, require_masks=False)]


FORMAT = ImageFolder()
