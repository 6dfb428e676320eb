"""The ``figshare_mat`` format: the figshare brain-tumor dataset, one MATLAB v7.3 ``.mat`` slice
per file (``cjdata``: image, tumor mask, patient id, tumor class); read by :mod:`jaxseg.data.figshare`."""
from __future__ import annotations

import functools
from pathlib import Path

from jaxseg.data import figshare, inspect
from jaxseg.data.formats.records2d import SliceRecords


class FigshareMat(SliceRecords):
    name = "figshare_mat"

    def inspect_jobs(self, root: Path, mask_suffix: str) -> list:
        return [functools.partial(inspect.inspect_figshare_file, path) for path in figshare.find_files(root)]


FORMAT = FigshareMat()
