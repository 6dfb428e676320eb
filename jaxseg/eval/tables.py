"""The tables of ``jaxseg evaluate``: summary statistics of scored rows, the CSV files, and what
an evaluation returns (its rows, the files it wrote, a rich table for the terminal).

Volumes: ``per_case.csv`` (one row per case and region) and ``summary.csv`` (mean, std, median,
n per region and metric). 2D sources: ``per_slice.csv``, ``per_patient.csv`` and ``summary.csv``
(per level: slice, patient, and ``dataset``, the pooled sums). Standard deviations are population
ones (ddof 0); finite floats are written with 6 significant digits.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.table import Table

from jaxseg.eval.slices import SCORES
from jaxseg.eval.volumes import METRICS
from jaxseg.files import atomic_path
from jaxseg.target import REGIONS

STATISTICS = ("mean", "std", "median")
PER_CASE_COLUMNS = ("case", "region") + METRICS
VOLUME_SUMMARY_COLUMNS = ("region", "metric") + STATISTICS + ("n",)
PER_SLICE_COLUMNS = ("case", "patient", *SCORES, "pred_pixels", "ref_pixels")
PER_PATIENT_COLUMNS = ("patient", *SCORES, "slices")
SLICE_SUMMARY_COLUMNS = ("level", "metric") + STATISTICS + ("n",)


def statistics(values: Sequence[float]) -> dict:
    """``{mean, std (ddof 0), median, n}`` of ``values`` (float64)."""
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values)),
            "n": len(values)}


def summarize_regions(per_case: Sequence[dict]) -> list[dict]:
    """``{region, metric, mean, std, median, n}`` of every metric per region of per-case rows."""
    return [{"region": region, "metric": metric,
             **statistics([r[metric] for r in per_case if r["region"] == region])}
            for region in REGIONS for metric in METRICS]


def summarize_slices(per_slice: Sequence[dict], per_patient: Sequence[dict], dataset: dict[str, float]
                     ) -> list[dict]:
    """``{level, metric, mean, std, median, n}`` per level: the statistics of the slice and the
    patient rows, and the pooled ``dataset`` scores (std 0, n = slices)."""
    summary = [{"level": level, "metric": metric, **statistics([r[metric] for r in rows])}
               for level, rows in (("slice", per_slice), ("patient", per_patient)) for metric in SCORES]
    return summary + [{"level": "dataset", "metric": m, "mean": dataset[m], "std": 0.0, "median": dataset[m],
                       "n": len(per_slice)} for m in SCORES]


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> Path:
    """Write ``rows`` (dicts holding every column) as a CSV file, atomically."""
    def text(value) -> str:
        return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([text(row[c]) for c in columns])
    return path


def _stat(summary: Sequence[dict], key: str, group: str, metric: str, statistic: str) -> float:
    for row in summary:
        if row[key] == group and row["metric"] == metric:
            return row[statistic]
    raise KeyError((group, metric))


@dataclass(frozen=True)
class Summary:
    """What the evaluation of volumes computed and wrote.

    ``per_case``: one dict per (case, region) with ``case``, ``region`` and every metric of
    :data:`jaxseg.eval.volumes.METRICS`. ``summary``: one dict per (region, metric) with ``mean``,
    ``std`` (population, ddof 0), ``median`` and ``n`` over cases.
    """
    per_case: list[dict]
    summary: list[dict]
    per_case_csv: Path
    summary_csv: Path
    cases: tuple[str, ...] = field(default=())

    def stat(self, region: str, metric: str, statistic: str = "mean") -> float:
        return _stat(self.summary, "region", region, metric, statistic)

    def render(self) -> Table:
        """A rich table: one row per metric, one column per region, ``mean ± std``."""
        table = Table(title=f"Evaluation of {len(self.cases)} case(s)")
        table.add_column("metric")
        for region in REGIONS:
            table.add_column(region, justify="right")
        for metric in METRICS:
            cells = [f"{self.stat(r, metric):.3f} ± {self.stat(r, metric, 'std'):.3f}" for r in REGIONS]
            table.add_row(metric, *cells)
        for metric in ("ece_all_brain", "ece_relevant"):  # with probability maps (jaxseg.eval.calibration)
            by_region = {r["region"]: r for r in self.summary if r["metric"] == metric}
            if by_region:
                table.add_row(metric, *(f"{by_region[r]['mean']:.3f} ± {by_region[r]['std']:.3f}" if r in by_region
                                        else "" for r in REGIONS))
        return table


@dataclass(frozen=True)
class SliceSummary:
    """What the evaluation of 2D slices computed and wrote (``per_case_csv`` is the per-slice file)."""

    per_slice: list[dict]
    per_patient: list[dict]
    summary: list[dict]
    per_case_csv: Path
    per_patient_csv: Path
    summary_csv: Path

    def stat(self, level: str, metric: str, statistic: str = "mean") -> float:
        return _stat(self.summary, "level", level, metric, statistic)

    def render(self) -> Table:
        """A rich table: one row per score; per slice and per patient ``mean ± std``, the pooled
        dataset score."""
        table = Table(title=f"Evaluation of {len(self.per_slice)} slice(s) of {len(self.per_patient)} patient(s)",
                      caption=f"per patient: {self.per_patient_csv}", caption_justify="left")
        table.add_column("metric")
        for level in ("per slice", "per patient", "dataset (pooled)"):
            table.add_column(level, justify="right")
        for metric in SCORES:
            table.add_row(metric, *(f"{self.stat(lv, metric):.3f} ± {self.stat(lv, metric, 'std'):.3f}"
                                    for lv in ("slice", "patient")), f"{self.stat('dataset', metric):.3f}")
        return table
