"""``jaxseg evaluate``: score a folder of predictions against the reference segmentations.

One entry, :func:`evaluate_folders`, for both kinds of prediction folder:

- **volumes** (NIfTI label maps of BraTS cases, :func:`evaluate_volumes`): per case and region
  (WT, TC, ET) Dice, IoU, precision, recall, HD95, BraTS 2023 lesion-wise Dice and HD95 and the
  predicted and reference volumes into ``per_case.csv``, their mean, std and median into
  ``summary.csv``; with ``figures``, ``gallery.png`` and ``panels/<case>.png`` (docs/figures.md).
  Where ``jaxseg predict --probabilities`` left ``<name>_prob.nii.gz`` beside a label map, also
  the calibration of the probabilities (:mod:`jaxseg.eval.calibration`): per region the ECE over
  all brain voxels and over the relevant ones (``ece_all_brain``, ``ece_relevant`` rows in
  ``summary.csv``), ``calibration.json`` (pooled reliability bins, per-case ECEs) and
  ``reliability.png``.
- **2D slices** (PNG masks of a figshare or image folder, :func:`evaluate_slices`): per slice,
  per patient and pooled over the dataset into ``per_slice.csv``, ``per_patient.csv`` and
  ``summary.csv`` (no figures).

The pieces: :mod:`jaxseg.eval.pairs` finds and reads the pairs, :mod:`jaxseg.eval.volumes` and
:mod:`jaxseg.eval.slices` score arrays, :mod:`jaxseg.eval.tables` summarises and writes,
:mod:`jaxseg.eval.figures` draws arrays.
"""
from __future__ import annotations

from pathlib import Path

from jaxseg.data import nifti
from jaxseg.errors import JaxsegError
from jaxseg.eval import pairs, tables, volumes
from jaxseg.eval.calibration import CalibrationScorer, probability_path
from jaxseg.eval.slices import SliceScorer


def evaluate_folders(pred_dir: str | Path, ref_dir: str | Path, out_dir: str | Path, *,
                     dilation_iterations: int = 3, min_lesion_voxels: int = 0, figures: bool = True,
                     mask_suffix: str = "_mask") -> tables.Summary | tables.SliceSummary:
    """Evaluate every prediction in ``pred_dir`` against its reference under ``ref_dir``.

    ``pred_dir`` holding PNG masks and no NIfTI file (:func:`jaxseg.eval.pairs.holds_slice_predictions`)
    is scored slice by slice (:func:`evaluate_slices`, which takes ``mask_suffix``), anything
    else as volumes (:func:`evaluate_volumes`, which takes the other settings).
    """
    if pairs.holds_slice_predictions(pred_dir):
        return evaluate_slices(pred_dir, ref_dir, out_dir, mask_suffix=mask_suffix)
    return evaluate_volumes(pred_dir, ref_dir, out_dir, dilation_iterations=dilation_iterations,
                            min_lesion_voxels=min_lesion_voxels, figures=figures)


def evaluate_volumes(pred_dir: str | Path, ref_dir: str | Path, out_dir: str | Path, *,
                     dilation_iterations: int = 3, min_lesion_voxels: int = 0, figures: bool = True) -> tables.Summary:
    """Score predicted BraTS label maps against their references; write the CSVs, then the figures.

    Args:
      pred_dir: folder of predicted label maps (see :func:`jaxseg.eval.pairs.find_volume_pairs`).
      ref_dir: folder searched recursively for ``<case>_seg.nii.gz`` / ``<case>-seg.nii.gz``.
      out_dir: receives ``per_case.csv`` and ``summary.csv`` (written atomically).
      dilation_iterations, min_lesion_voxels: lesion-wise settings, see
        :func:`jaxseg.eval.surface.lesion_wise` (defaults: BraTS 2023 GLI/PED dilation, no size
        threshold).
      figures: also write ``gallery.png`` and ``panels/<case>.png`` (:mod:`jaxseg.eval.figures`).

    Raises:
      JaxsegError: no predictions, predictions without references, unreadable files, labels
        outside the BraTS conventions, or a prediction whose grid differs from its reference.
    """
    found = pairs.find_volume_pairs(pred_dir, ref_dir)
    per_case: list[dict] = []
    calibration = CalibrationScorer()
    for case, pred_path, ref_path in found:
        pair = pairs.read_volume_pair(case, pred_path, ref_path)
        per_case += volumes.score_classes(pair.prediction, pair.reference, pair.spacing, case,
                                          dilation_iterations=dilation_iterations,
                                          min_lesion_voxels=min_lesion_voxels)
        if (prob_path := probability_path(pred_path)) is not None:
            _add_calibration(calibration, case, prob_path, pair, ref_path)
    summary = tables.summarize_regions(per_case) + calibration.summary_rows()
    out_dir = Path(out_dir)
    if calibration.per_case:
        calibration.write(out_dir, figure=figures)
    per_case_csv = tables.write_csv(out_dir / "per_case.csv", tables.PER_CASE_COLUMNS, per_case)
    summary_csv = tables.write_csv(out_dir / "summary.csv", tables.VOLUME_SUMMARY_COLUMNS, summary)
    if figures:
        # A second pass: the CSVs are written first (a figure never costs the scores), and one
        # case at a time is held in memory.
        from jaxseg.eval.figures import EvaluationFigures  # matplotlib only when drawing
        drawing = EvaluationFigures(out_dir)
        for case, pred_path, ref_path in found:
            pair = pairs.read_volume_pair(case, pred_path, ref_path)
            image, modality = pairs.read_background(ref_path, pair.properties)
            drawing.add_case(case, pair.prediction, pair.reference, pair.spacing, image, modality)
        drawing.write_gallery()
    return tables.Summary(per_case=per_case, summary=summary, per_case_csv=per_case_csv, summary_csv=summary_csv,
                          cases=tuple(case for case, _, _ in found))


def _add_calibration(scorer: CalibrationScorer, case: str, prob_path: Path, pair: pairs.VolumePair,
                     ref_path: Path) -> None:
    """Score one case's probability map; the brain is its image nonzero (every voxel without one)."""
    probs, props = nifti.read_channels(prob_path)
    if problem := nifti.geometry_mismatch(props, pair.properties):
        raise JaxsegError(problem)
    image, _ = pairs.read_background(ref_path, pair.properties)
    scorer.add(case, probs, pair.reference, None if image is None else image != 0, prob_path)


def evaluate_slices(pred_dir: str | Path, ref_dir: str | Path, out_dir: str | Path,
                    mask_suffix: str = "_mask") -> tables.SliceSummary:
    """Score every ``<case id>.png`` under ``pred_dir`` against its slice under ``ref_dir``.

    Raises JaxsegError: no predictions, predictions without a reference slice (all counted, the
    first named), unreadable or non-binary masks, or a prediction of another size than its slice.
    """
    scorer = SliceScorer()
    for case_id, pred_path, record in pairs.find_slice_pairs(pred_dir, ref_dir, mask_suffix):
        prediction, reference = pairs.read_slice_pair(case_id, pred_path, record)
        scorer.add(case_id, record.subject, prediction, reference)
    per_patient = scorer.per_patient()
    summary = tables.summarize_slices(scorer.per_slice, per_patient, scorer.dataset())
    out_dir = Path(out_dir)
    files = (tables.write_csv(out_dir / "per_slice.csv", tables.PER_SLICE_COLUMNS, scorer.per_slice),
             tables.write_csv(out_dir / "per_patient.csv", tables.PER_PATIENT_COLUMNS, per_patient),
             tables.write_csv(out_dir / "summary.csv", tables.SLICE_SUMMARY_COLUMNS, summary))
    return tables.SliceSummary(scorer.per_slice, per_patient, summary, *files)
