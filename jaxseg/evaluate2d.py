"""Score predicted 2D masks (PNG) against a 2D dataset's masks: per slice and per patient.

``jaxseg evaluate --pred P --ref R`` comes here when ``P`` holds PNG masks rather than NIfTI
volumes (``jaxseg predict`` on 2D slices writes them). ``R`` is a figshare folder or an image folder
(``data.mask_suffix`` ``_mask``); the prediction of slice ``<case id>`` is ``P/<case id>.png``
(the case ids of :mod:`jaxseg.data.records`), a 0/255 or 0/1 mask of the slice's size.

Written into the output folder:
- ``per_slice.csv``: case, patient, dice, iou, precision, recall, pred_pixels, ref_pixels;
- ``per_patient.csv``: the same from the confusion sums pooled over a patient's slices;
- ``summary.csv``: mean, std (ddof 0), median and n of each score per level (slice, patient),
  and the ``dataset`` level, the pooled sums over every slice (as validation in training).
An empty prediction of an empty mask scores 1 (:func:`jaxseg.train.metrics.scores_from_sums`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from jaxseg.data import figshare, image_folder, records
from jaxseg.errors import file_error
from jaxseg.train import metrics as M

SCORES = ("dice", "iou", "precision", "recall")
LEVELS = ("slice", "patient", "dataset")


def holds_2d_predictions(pred_dir: str | Path) -> bool:
    """``pred_dir`` holds PNG masks and no NIfTI file directly in it."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        return False
    if any(p.name.endswith((".nii", ".nii.gz")) for p in pred_dir.iterdir()):
        return False
    return any(not p.name.startswith(".") for p in pred_dir.rglob("*.png"))


@dataclass(frozen=True)
class SliceSummary:
    """What :func:`evaluate_slices` computed and wrote (``per_case_csv`` is the per-slice file)."""

    per_slice: list[dict]
    per_patient: list[dict]
    summary: list[dict]
    per_case_csv: Path
    per_patient_csv: Path
    summary_csv: Path

    def stat(self, level: str, metric: str, statistic: str = "mean") -> float:
        for row in self.summary:
            if row["level"] == level and row["metric"] == metric:
                return row[statistic]
        raise KeyError((level, metric))

    def render(self) -> Table:
        table = Table(title=f"Evaluation of {len(self.per_slice)} slice(s) of {len(self.per_patient)} patient(s)",
                      caption=f"per patient: {self.per_patient_csv}", caption_justify="left")
        table.add_column("metric")
        for level in ("per slice", "per patient", "dataset (pooled)"):
            table.add_column(level, justify="right")
        for metric in SCORES:
            table.add_row(metric, *(f"{self.stat(lv, metric):.3f} ± {self.stat(lv, metric, 'std'):.3f}"
                                    for lv in ("slice", "patient")), f"{self.stat('dataset', metric):.3f}")
        return table


def reference_mask(record: records.Record) -> np.ndarray:
    """The reference mask ``(H, W)`` uint8 0/1 of a labelled record."""
    if record.format == "figshare_mat":
        return figshare.read_slice(record.image).mask
    return image_folder.read_pair(record.image, record.mask)[1]


def _scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    sums = {"tp": np.array([tp]), "fp": np.array([fp]), "fn": np.array([fn])}
    return {k: float(v[0]) for k, v in M.scores_from_sums(sums).items()}


def evaluate_slices(pred_dir: str | Path, ref_dir: str | Path, out_dir: str | Path,
                    mask_suffix: str = "_mask") -> SliceSummary:
    """Evaluate every ``<case id>.png`` under ``pred_dir`` against its slice under ``ref_dir``.

    Raises JaxsegError: no predictions, predictions without a reference slice (all counted, the
    first named), unreadable or non-binary masks, or a prediction of another size than its slice.
    """
    from jaxseg.evaluate import _write_csv  # noqa: PLC0415 (evaluate.py dispatches here)
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    fmt = records.detect_format(ref_dir)
    if fmt == "brats":
        raise file_error(ref_dir, "holds NIfTI volumes, but the predictions are 2D PNG masks")
    refs = {r.case_id: r for r in records.find_records(ref_dir, fmt, mask_suffix)}
    preds = {p.relative_to(pred_dir).with_suffix("").as_posix(): p
             for p in sorted(pred_dir.rglob("*.png")) if not p.name.startswith(".")}
    missing = sorted(c for c in preds if c not in refs)
    if missing:
        raise file_error(preds[missing[0]], f"no slice {missing[0]} under {ref_dir} ({len(missing)} prediction(s) "
                                            "without a reference)")
    if not preds:
        raise file_error(pred_dir, "no predicted masks (.png) found")
    per_slice, pooled = [], {}
    for case_id, path in sorted(preds.items()):
        record = refs[case_id]
        pred, ref = image_folder.read_mask(path).astype(bool), reference_mask(record).astype(bool)
        if pred.shape != ref.shape:
            raise file_error(path, f"is {pred.shape[0]}x{pred.shape[1]} but slice {case_id} is "
                                   f"{ref.shape[0]}x{ref.shape[1]}")
        tp, fp, fn = int((pred & ref).sum()), int((pred & ~ref).sum()), int((~pred & ref).sum())
        totals = pooled.setdefault(record.subject, np.zeros(3, np.int64))
        totals += (tp, fp, fn)
        per_slice.append({"case": case_id, "patient": record.subject, **_scores(tp, fp, fn),
                          "pred_pixels": int(pred.sum()), "ref_pixels": int(ref.sum())})
    per_patient = [{"patient": s, **_scores(*map(int, t)), "slices": sum(r["patient"] == s for r in per_slice)}
                   for s, t in sorted(pooled.items())]
    dataset = _scores(*map(int, np.sum(list(pooled.values()), axis=0)))
    summary = []
    for level, rows in (("slice", per_slice), ("patient", per_patient)):
        for metric in SCORES:
            values = np.array([r[metric] for r in rows], np.float64)
            summary.append({"level": level, "metric": metric, "mean": float(values.mean()), "std": float(values.std()),
                            "median": float(np.median(values)), "n": len(values)})
    summary += [{"level": "dataset", "metric": m, "mean": dataset[m], "std": 0.0, "median": dataset[m],
                 "n": len(per_slice)} for m in SCORES]
    out_dir = Path(out_dir)
    files = out_dir / "per_slice.csv", out_dir / "per_patient.csv", out_dir / "summary.csv"
    _write_csv(files[0], ("case", "patient", *SCORES, "pred_pixels", "ref_pixels"), per_slice)
    _write_csv(files[1], ("patient", *SCORES, "slices"), per_patient)
    _write_csv(files[2], ("level", "metric", "mean", "std", "median", "n"), summary)
    return SliceSummary(per_slice, per_patient, summary, *files)
