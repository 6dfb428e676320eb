"""The ``figshare_mat`` format: the figshare brain-tumor dataset, one MATLAB v7.3 ``.mat`` slice
per file (``cjdata``: image, tumor mask, patient id, tumor class); read by :mod:`jaxseg.data.figshare`."""
from __future__ import annotations

from jaxseg.data.formats.records2d import SliceRecords


class FigshareMat(SliceRecords):
    name = "figshare_mat"


FORMAT = FigshareMat()
