"""What one written prediction is, whatever was predicted (a volume, a 2D slice)."""
from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass
class Prediction:
    """The files written for one case: its label map (NIfTI volume or PNG mask), the probabilities
    when asked for, the tumor volumes in mL (empty for 2D slices: no pixel size), and warnings about
    the input (:mod:`jaxseg.data.checks`)."""

    case_id: str
    segmentation: Path
    probabilities: Path | None
    volumes_ml: dict[str, float]
    warnings: list[str] = dataclasses.field(default_factory=list)
