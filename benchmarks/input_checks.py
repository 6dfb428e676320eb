"""Print, for each BraTS case folder given, the numbers jaxseg.data.checks compares with its
thresholds (distinct values in a sample, share of border signal, intensity range, spacing).

    python benchmarks/input_checks.py CASE_DIR [CASE_DIR ...]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseg.data import brats
from jaxseg.data.checks import _SAMPLE_STRIDE, border_signal_fraction


def measure(folders: Sequence[str | Path]) -> None:
    """Print, for each case, the numbers the thresholds are compared with."""
    for folder in folders:
        case = brats.case_from_path(folder)
        image, _, props = brats.load_case(case, None)
        for c, modality in enumerate(case.images):
            volume = image[..., c]
            sample = len(np.unique(volume.ravel()[::_SAMPLE_STRIDE]))
            print(f"{case.case_id} {modality:5s} spacing {props.spacing} distinct-in-sample {sample:6d} "
                  f"border-signal {border_signal_fraction(volume):.4f} range {volume.min():g}..{volume.max():g}")


if __name__ == "__main__":
    measure(sys.argv[1:])
