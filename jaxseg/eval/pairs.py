"""Finding prediction / reference pairs and reading them, for volumes and for 2D slices.

Volumes: predictions are NIfTI label maps directly in the prediction folder (``<case>.nii.gz``,
``<case>_seg``, ``<case>-seg``, ``<case>_pred``, ``.nii`` too); references are BraTS
``<case>_seg.nii.gz`` / ``<case>-seg.nii.gz`` anywhere under the reference folder. Both hold
BraTS labels: 2017-2021 labels 0, 1, 2, 4 (4 = enhancing tumor) or 2023 labels 0, 1, 2, 3. The
reference's file name decides the convention as everywhere in jaxseg (``<case>_seg`` is 2021,
``<case>-seg`` is 2023, see :mod:`jaxseg.data.brats`); the prediction follows its reference,
except that any file containing label 4 is read as 2021. Prediction and reference must share
their voxel grid (shape and affine). Files are read with :mod:`jaxseg.data.nifti` (RAS order,
voxel sizes from the affine).

Slices: predictions are ``<case id>.png`` masks (0/255 or 0/1, any depth of sub-folders, as
``jaxseg predict`` writes them for 2D sources); references are the slices of a figshare folder or
an image folder (:mod:`jaxseg.data.records` case ids).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxseg.data import brats, formats, image_folder, nifti, records
from jaxseg.data.formats.records2d import SliceRecords
from jaxseg.errors import JaxsegError, file_error

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PRED_NAME_SUFFIXES = ("_seg", "-seg", "_pred", "-pred")
REF_NAME_SUFFIXES = ("_seg", "-seg")
# Files predict.py may write beside the label maps; they are not predictions to score.
SKIPPED_NAME_SUFFIXES = ("_prob", "-prob")


# --------------------------------------------------------------------------- volumes

@dataclass(frozen=True)
class VolumePair:
    """A prediction and its reference on one grid.

    ``prediction``, ``reference``: ``(X, Y, Z)`` uint8 internal classes (0 background, 1 NCR,
    2 ED, 3 ET), RAS; ``properties``: the reference's geometry (``spacing`` in mm, RAS order).
    """
    case: str
    prediction: np.ndarray
    reference: np.ndarray
    properties: nifti.VolumeProperties

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(self.properties.spacing)


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


def find_volume_pairs(pred_dir: str | Path, ref_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """``(case_id, prediction, reference)`` sorted by case id.

    Predictions are the NIfTI files directly in ``pred_dir``; references are
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


def read_volume_pair(case: str, pred_path: Path, ref_path: Path) -> VolumePair:
    """Read a prediction and its reference as internal classes; raises :class:`JaxsegError` if
    a file is unreadable, its labels fit no BraTS convention, or the two grids differ."""
    pred_labels, pred_props = nifti.read_label_volume(pred_path)
    ref_labels, ref_props = nifti.read_label_volume(ref_path)
    mismatch = nifti.geometry_mismatch(pred_props, ref_props)
    if mismatch:
        raise JaxsegError(mismatch)
    parsed = brats.parse_name(ref_path)
    ref_naming = parsed[1] if parsed else "brats2021"
    pred_classes = brats.to_internal(pred_labels, _naming(pred_labels, ref_naming), pred_path)
    ref_classes = brats.to_internal(ref_labels, _naming(ref_labels, ref_naming), ref_path)
    return VolumePair(case, pred_classes, ref_classes, ref_props)


def read_background(ref_path: Path, props: nifti.VolumeProperties, modality: str = "flair"
                    ) -> tuple[np.ndarray | None, str | None]:
    """``(image (X, Y, Z) float32 RAS, its modality)`` of the case whose reference is ``ref_path``
    (``<case>_flair.nii.gz`` / ``<case>-t2f.nii.gz`` beside it): ``modality`` if the case has it,
    else its first image; ``(None, None)`` if it has none or the image is unreadable or on another
    grid than ``props`` (a warning says why). The evaluation figures draw over it."""
    try:
        case = brats.case_from_path(ref_path)
        name = modality if modality in case.images else next(
            (m for m in brats.MODALITIES if m in case.images), None)
        if name is None:
            return None, None
        image, image_props = nifti.read_volume(case.images[name])
        if problem := nifti.geometry_mismatch(image_props, props):
            raise JaxsegError(problem)
        return image, name
    except JaxsegError as e:
        warnings.warn(f"figures of {ref_path.name} have no background image: {e}", stacklevel=2)
        return None, None


# --------------------------------------------------------------------------- 2D slices

def holds_slice_predictions(pred_dir: str | Path) -> bool:
    """``pred_dir`` holds PNG masks (at any depth) and no NIfTI file directly in it."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        return False
    if any(p.name.endswith(NIFTI_SUFFIXES) for p in pred_dir.iterdir()):
        return False
    return any(not p.name.startswith(".") for p in pred_dir.rglob("*.png"))


def find_slice_pairs(pred_dir: str | Path, ref_dir: str | Path, mask_suffix: str = "_mask"
                     ) -> list[tuple[str, Path, records.Record]]:
    """``(case id, predicted mask, reference record)`` sorted by case id.

    The prediction of slice ``<case id>`` is ``pred_dir/<case id>.png``. Raises
    :class:`JaxsegError` if ``ref_dir`` holds volumes, there is no prediction, or predictions lack
    a reference slice (all counted, the first named).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    ref_format = formats.get(formats.detect(ref_dir))
    if not isinstance(ref_format, SliceRecords):
        raise file_error(ref_dir, "holds NIfTI volumes, but the predictions are 2D PNG masks")
    refs = {r.case_id: r for r in ref_format.find_records(ref_dir, mask_suffix)}
    preds = {p.relative_to(pred_dir).with_suffix("").as_posix(): p
             for p in sorted(pred_dir.rglob("*.png")) if not p.name.startswith(".")}
    missing = sorted(c for c in preds if c not in refs)
    if missing:
        raise file_error(preds[missing[0]], f"no slice {missing[0]} under {ref_dir} ({len(missing)} prediction(s) "
                                            "without a reference)")
    if not preds:
        raise file_error(pred_dir, "no predicted masks (.png) found")
    return [(case_id, path, refs[case_id]) for case_id, path in sorted(preds.items())]


def reference_mask(record: records.Record) -> np.ndarray:
    """The reference mask ``(H, W)`` uint8 0/1 of a labelled record (read by its format)."""
    return formats.get(record.format).read_mask(record)


def read_slice_pair(case_id: str, pred_path: Path, record: records.Record) -> tuple[np.ndarray, np.ndarray]:
    """``(prediction, reference)``, each ``(H, W)`` bool, of one slice; raises
    :class:`JaxsegError` for an unreadable or non-binary mask or one of another size."""
    pred, ref = image_folder.read_mask(pred_path).astype(bool), reference_mask(record).astype(bool)
    if pred.shape != ref.shape:
        raise file_error(pred_path, f"is {pred.shape[0]}x{pred.shape[1]} but slice {case_id} is "
                                    f"{ref.shape[0]}x{ref.shape[1]}")
    return pred, ref
