"""Score a folder of predicted BraTS label maps against the reference segmentations.

``evaluate_folders(pred_dir, ref_dir, out_dir)`` pairs every prediction with its reference by
case id, computes per case and region (WT, TC, ET) Dice, IoU, precision, recall, HD95, BraTS 2023
lesion-wise Dice and HD95 and the predicted and reference volumes, and writes
``per_case.csv`` (one row per case and region) and ``summary.csv`` (mean, std, median per region
and metric) into ``out_dir``, and figures: ``gallery.png`` and ``panels/<case>.png`` (docs/figures.md).

Both folders hold BraTS label files: 2017-2021 labels 0, 1, 2, 4 (4 = enhancing tumor) or 2023
labels 0, 1, 2, 3. The reference's file name decides the convention as everywhere in jaxseg
(``<case>_seg`` is 2021, ``<case>-seg`` is 2023, see :mod:`jaxseg.data.brats`); the prediction
follows its reference, except that any file containing label 4 is read as 2021. Prediction and
reference must share their voxel grid (shape and affine). Files are read with
:mod:`jaxseg.data.nifti` (RAS order, voxel sizes from the affine).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from jaxseg.data import brats, nifti
from jaxseg.errors import JaxsegError, file_error
from jaxseg.files import atomic_path
from jaxseg.train import metrics as M

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PRED_NAME_SUFFIXES = ("_seg", "-seg", "_pred", "-pred")
REF_NAME_SUFFIXES = ("_seg", "-seg")
METRICS = ("dice", "iou", "precision", "recall", "hd95", "lesion_dice", "lesion_hd95", "pred_ml", "ref_ml")
STATISTICS = ("mean", "std", "median")
# Files predict.py may write beside the label maps; they are not predictions to score.
SKIPPED_NAME_SUFFIXES = ("_prob", "-prob")


@dataclass(frozen=True)
class Summary:
    """What :func:`evaluate_folders` computed and wrote.

    ``per_case``: one dict per (case, region) with ``case``, ``region`` and every metric of
    :data:`METRICS`. ``summary``: one dict per (region, metric) with ``mean``, ``std``
    (population, ddof 0), ``median`` and ``n`` over cases.
    """
    per_case: list[dict]
    summary: list[dict]
    per_case_csv: Path
    summary_csv: Path
    cases: tuple[str, ...] = field(default=())

    def stat(self, region: str, metric: str, statistic: str = "mean") -> float:
        for row in self.summary:
            if row["region"] == region and row["metric"] == metric:
                return row[statistic]
        raise KeyError((region, metric))

    def render(self) -> Table:
        """A rich table: one row per metric, one column per region, ``mean ± std``."""
        table = Table(title=f"Evaluation of {len(self.cases)} case(s)")
        table.add_column("metric")
        for region in M.REGIONS:
            table.add_column(region, justify="right")
        for metric in METRICS:
            cells = [f"{self.stat(r, metric):.3f} ± {self.stat(r, metric, 'std'):.3f}" for r in M.REGIONS]
            table.add_row(metric, *cells)
        return table


def case_id_of(path: Path, suffixes: tuple[str, ...]) -> str | None:
    """The case id of a NIfTI file name: minus ``.nii.gz``/``.nii``, minus one of ``suffixes``.
    None if the name is not a NIfTI file."""
    name = path.name
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext):
            stem = name[: -len(ext)]
            break
    else:
        return None
    for suffix in suffixes:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def find_pairs(pred_dir: str | Path, ref_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """``(case_id, prediction, reference)`` sorted by case id.

    Predictions are the NIfTI files directly in ``pred_dir`` (``<case>.nii.gz``,
    ``<case>_seg.nii.gz``, ``<case>-seg.nii.gz`` or ``<case>_pred.nii.gz``); references are
    ``<case>_seg.nii.gz`` / ``<case>-seg.nii.gz`` anywhere under ``ref_dir``. Raises
    :class:`JaxsegError` if there is no prediction, a case id occurs twice, or any prediction
    lacks a reference (all such predictions are listed).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder in (pred_dir, ref_dir):
        if not folder.is_dir():
            raise file_error(folder, "not a folder")
    predictions: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        case = case_id_of(path, PRED_NAME_SUFFIXES)
        if case is None or path.name.startswith(".") or not path.is_file():
            continue  # hidden names are atomic_path temporaries
        if case_id_of(path, ()).endswith(SKIPPED_NAME_SUFFIXES):
            continue  # <case>_prob.nii.gz probability maps from `jaxseg predict --probabilities`
        if case in predictions:
            raise file_error(path, f"second prediction for case {case} (also {predictions[case].name})")
        predictions[case] = path
    if not predictions:
        raise file_error(pred_dir, "no predictions (*.nii.gz or *.nii files) found")
    references: dict[str, Path] = {}
    for path in sorted(ref_dir.rglob("*seg.nii*")):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = case_id_of(path, ())
        if stem is None or not stem.endswith(REF_NAME_SUFFIXES):
            continue
        case = case_id_of(path, REF_NAME_SUFFIXES)
        if case in predictions:
            if case in references:
                raise file_error(path, f"second reference for case {case} (also {references[case]})")
            references[case] = path
    missing = [predictions[c].name for c in predictions if c not in references]
    if missing:
        raise file_error(ref_dir, f"no reference <case>_seg.nii.gz or <case>-seg.nii.gz for "
                                  f"{len(missing)} prediction(s): {', '.join(missing)}")
    return [(case, predictions[case], references[case]) for case in sorted(predictions)]


def _naming(labels: np.ndarray, reference_naming: str) -> str:
    """A label file's convention: its reference's naming, unless it contains label 4 (2021)."""
    return "brats2021" if 4 in brats.label_values(labels) else reference_naming


def load_pair(pred_path: Path, ref_path: Path) -> tuple[np.ndarray, np.ndarray, nifti.VolumeProperties]:
    """Internal classes ``(X, Y, Z)`` uint8 (RAS) of a prediction and its reference, and the
    reference's properties; raises :class:`JaxsegError` if their grids differ."""
    pred_labels, pred_props = nifti.read_label_volume(pred_path)
    ref_labels, ref_props = nifti.read_label_volume(ref_path)
    mismatch = nifti.geometry_mismatch(pred_props, ref_props)
    if mismatch:
        raise JaxsegError(mismatch)
    parsed = brats.parse_name(ref_path)
    ref_naming = parsed[1] if parsed else "brats2021"
    pred_classes = brats.to_internal(pred_labels, _naming(pred_labels, ref_naming), pred_path)
    ref_classes = brats.to_internal(ref_labels, _naming(ref_labels, ref_naming), ref_path)
    return pred_classes, ref_classes, ref_props


def evaluate_case(pred_path: Path, ref_path: Path, case: str, *, dilation_iterations: int = 3,
                  min_lesion_voxels: int = 0) -> list[dict]:
    """Rows ``{case, region, <METRICS>}`` for WT, TC and ET of one prediction/reference pair."""
    pred_classes, ref_classes, ref_props = load_pair(pred_path, ref_path)
    return score_classes(pred_classes, ref_classes, ref_props.spacing, case,
                         dilation_iterations=dilation_iterations, min_lesion_voxels=min_lesion_voxels)


def score_classes(pred_classes: np.ndarray, ref_classes: np.ndarray, spacing, case: str, *,
                  dilation_iterations: int = 3, min_lesion_voxels: int = 0) -> list[dict]:
    """Rows ``{case, region, <METRICS>}`` for WT, TC and ET of two ``(X, Y, Z)`` arrays of
    internal classes on one grid, ``spacing`` in mm in the arrays' axis order."""
    pred, ref = brats.region_masks(pred_classes), brats.region_masks(ref_classes)
    scores = M.scores_from_sums(M.confusion_sums(pred.reshape(1, -1, 3), ref.reshape(1, -1, 3)))
    rows = []
    for k, region in enumerate(M.REGIONS):
        lesions = M.lesion_wise(pred[..., k], ref[..., k], spacing, dilation_iterations=dilation_iterations,
                                min_lesion_voxels=min_lesion_voxels)
        rows.append({
            "case": case, "region": region,
            **{name: float(scores[name][k]) for name in ("dice", "iou", "precision", "recall")},
            "hd95": M.hd95(pred[..., k], ref[..., k], spacing),
            "lesion_dice": lesions["dice"], "lesion_hd95": lesions["hd95"],
            "pred_ml": M.volume_ml(pred[..., k], spacing), "ref_ml": M.volume_ml(ref[..., k], spacing),
        })
    return rows


def summarize(per_case: list[dict]) -> list[dict]:
    """Mean, std (ddof 0), median and n of every metric per region."""
    rows = []
    for region in M.REGIONS:
        for metric in METRICS:
            values = np.array([r[metric] for r in per_case if r["region"] == region], np.float64)
            rows.append({"region": region, "metric": metric, "mean": float(values.mean()),
                         "std": float(values.std()), "median": float(np.median(values)), "n": len(values)})
    return rows


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    def text(value) -> str:
        return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([text(row[c]) for c in columns])


def evaluate_folders(pred_dir: str | Path, ref_dir: str | Path, out_dir: str | Path, *,
                     dilation_iterations: int = 3, min_lesion_voxels: int = 0, figures: bool = True) -> Summary:
    """Evaluate every prediction in ``pred_dir`` against its reference under ``ref_dir``.

    Args:
      pred_dir: folder of predicted label maps (see :func:`find_pairs` for names).
      ref_dir: folder searched recursively for ``<case>_seg.nii.gz`` / ``<case>-seg.nii.gz``.
      out_dir: receives ``per_case.csv`` and ``summary.csv`` (written atomically).
      dilation_iterations, min_lesion_voxels: lesion-wise settings, see
        :func:`jaxseg.train.metrics.lesion_wise` (defaults: BraTS 2023 GLI/PED dilation,
        no size threshold).
      figures: also write ``gallery.png`` and ``panels/<case>.png`` (see
        :mod:`jaxseg.report.evaluation_figures` and docs/figures.md).

    Raises:
      JaxsegError: no predictions, predictions without references, unreadable files, labels
        outside the BraTS conventions, or a prediction whose grid differs from its reference.

    A ``pred_dir`` of PNG masks (2D slices) is scored by :func:`jaxseg.evaluate2d.evaluate_slices`.
    """
    from jaxseg import evaluate2d  # noqa: PLC0415 (it imports this module)
    if evaluate2d.holds_2d_predictions(pred_dir):  # PNG masks of 2D slices: per slice and per patient
        return evaluate2d.evaluate_slices(pred_dir, ref_dir, out_dir)
    pairs = find_pairs(pred_dir, ref_dir)
    per_case: list[dict] = []
    for case, pred_path, ref_path in pairs:
        per_case += evaluate_case(pred_path, ref_path, case, dilation_iterations=dilation_iterations,
                                  min_lesion_voxels=min_lesion_voxels)
    summary = summarize(per_case)
    out_dir = Path(out_dir)
    per_case_csv, summary_csv = out_dir / "per_case.csv", out_dir / "summary.csv"
    _write_csv(per_case_csv, ("case", "region") + METRICS, per_case)
    _write_csv(summary_csv, ("region", "metric") + STATISTICS + ("n",), summary)
    if figures:
        from jaxseg.report.evaluation_figures import write_evaluation_figures
        write_evaluation_figures(pairs, out_dir)
    return Summary(per_case=per_case, summary=summary, per_case_csv=per_case_csv, summary_csv=summary_csv,
                   cases=tuple(case for case, _, _ in pairs))
