"""The ``figshare_mat`` format: the figshare brain-tumor dataset, one MATLAB v7.3 ``.mat`` slice
per file (``cjdata``: image, tumor mask, patient id, tumor class); read by :mod:`jaxseg.data.figshare`.
Case id: the file name without ``.mat``; subject: ``cjdata.PID``; one channel (T1c)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from jaxseg.data import figshare, inspect
from jaxseg.data.formats.records2d import SliceRecords
from jaxseg.data.records import Record, sorted_unique
from jaxseg.errors import file_error


class FigshareMat(SliceRecords):
    name = "figshare_mat"
    suffixes = (".mat",)

    def find_records(self, root: Path, mask_suffix: str = "_mask", require_masks: bool = True) -> list[Record]:
        """Each file's header (PID, label) is read, so a file that cannot be read is reported here."""
        root = Path(root)
        found = []
        for path in [root] if root.is_file() else figshare.find_files(root):
            pid, label = figshare.read_header(path)
            found.append(Record(case_id=path.stem, subject=pid, image=path, mask=path, format=self.name, label=label))
        return sorted_unique(found)

    def input_record(self, path: Path) -> Record:
        return Record(case_id=path.stem, subject=path.stem, image=path, mask=None, format=self.name)

    def load_record(self, record: Record, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
        if channels != 1:
            raise file_error(record.image, f"a figshare slice has one channel; data.modalities lists {channels}")
        s = figshare.read_slice(record.image)
        return s.image[..., None], (s.mask if record.mask is not None else None)

    def read_mask(self, record: Record) -> np.ndarray:
        return figshare.read_slice(record.image).mask

    def inspect_jobs(self, root: Path, mask_suffix: str) -> list:
        return [functools.partial(inspect.inspect_figshare_file, path) for path in figshare.find_files(root)]


FORMAT = FigshareMat()
