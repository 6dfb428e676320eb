"""The ``image_folder`` format: PNG/TIFF slices with ``<stem><data.mask_suffix>.<ext>`` masks, a
patient per folder; read by :mod:`jaxseg.data.image_folder`."""
from __future__ import annotations

from jaxseg.data.formats.records2d import SliceRecords


class ImageFolder(SliceRecords):
    name = "image_folder"


FORMAT = ImageFolder()
