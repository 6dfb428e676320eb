"""`jaxseg explain` on 2D sources: one figshare ``.mat``, PNG or TIFF slice, explained in one-slice form.

A slice is read as prediction reads it (:mod:`jaxseg.infer.predict2d`: the run's format reader,
the run's channels) and becomes a one-slice volume ``(H, W, 1, C)`` (:func:`jaxseg.data.records.to_volume`,
rows along the first axis, columns along the second), so the 2D explain pipeline
(:class:`jaxseg.explain.slices.SliceSpace`) runs on it unchanged and every map comes back as
``(H, W, 1[, K])`` on the input's own pixel grid. A 2D file carries no pixel size and no
orientation: the summary gives areas in pixels, the captions say where in the *image* the tumor is
(not which hemisphere), and the files written are a PNG mask and ``.npy`` maps in the input's size.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxseg.data import checks, formats, records
from jaxseg.data.image_folder import IMAGE_SUFFIXES, mask_stem
from jaxseg.errors import JaxsegError, file_error
from jaxseg.files import atomic_path
from jaxseg.infer import predict2d


@dataclasses.dataclass(frozen=True)
class SliceCase:
    """One 2D slice to explain.

    Attributes:
      case_id: the slice's id (an image folder's keeps its patient folder, ``patient/slice``).
      image: the file read; mask: its reference mask, or None.
      format: the ``data.format`` that read it.
    """
    case_id: str
    image: Path
    mask: Path | None
    format: str

    @property
    def file_stem(self) -> str:
        """The prefix of the files written for it (no folder part)."""
        return self.case_id.replace("/", "_")


def is_slice_input(path: Path, run_cfg=None) -> bool:
    """True for a ``.mat``/PNG/TIFF file or a folder of them, or any input of a run trained on a
    2D format (:func:`jaxseg.data.formats.prediction_output`)."""
    return formats.prediction_output([path], run_cfg) == "png"


def read_slice(path: Path, predictor) -> tuple[SliceCase, np.ndarray, np.ndarray | None]:
    """The one slice at ``path`` as ``(case, image (H, W, 1, C) float32, truth (H, W, 1) uint8 or None)``.

    ``truth`` is the reference mask as internal classes (1 = tumor), when the slice has one (a
    figshare file always does; an image needs ``<stem><data.mask_suffix><ext>`` beside it).
    JaxsegError naming the file for a folder of several slices, a run that is not a whole-tumor
    model, or an image with no signal (all zeros, constant, a mask given as the image).
    """
    cfg = predictor.cfg
    if predictor.sampling.spatial_dims != 2:
        raise JaxsegError(f"{path}: a 2D slice needs a 2D model; the run {predictor.run} is a 3D "
                          f"{cfg.model.name} (it reads volumes)")
    if not predictor.target_kind.whole_tumor_only:
        raise JaxsegError(f"{path}: a 2D slice is explained with a whole-tumor model (data.target = 'wt'); "
                          f"the run {predictor.run} has data.target = {cfg.data.target!r}")
    found = predict2d.records_at(path, cfg.data.mask_suffix)
    if not found:
        raise file_error(path, "holds no 2D slice (.mat, .png, .tif, .tiff)")
    if len(found) > 1:
        shown = ", ".join(r.case_id for r in found[:3]) + (", ..." if len(found) > 3 else "")
        raise file_error(path, f"holds {len(found)} slices ({shown}); explain takes one: give one file")
    record = _with_mask(found[0], cfg.data.mask_suffix)
    image, mask = formats.get(record.format).load_record(record, len(predictor.modalities))
    volume, truth = records.to_volume(np.asarray(image, np.float32), None if mask is None else np.asarray(mask))
    if not np.all(np.isfinite(volume)):
        raise file_error(record.image, "holds NaN or infinite values")
    checks.check_content(volume, [record.image] * volume.shape[-1])
    case = SliceCase(record.case_id, record.image, record.mask, record.format)
    return case, volume, None if truth is None else (truth > 0).astype(np.uint8)


def _with_mask(record: records.Record, mask_suffix: str) -> records.Record:
    """The record with its reference mask, where it has one: a figshare file holds its own
    (``tumorMask``); an image the ``<stem><mask_suffix>.png|.tif|.tiff`` beside it."""
    if record.format == "figshare_mat":
        return dataclasses.replace(record, mask=record.image)
    if mask_stem(record.image, mask_suffix) is not None:
        raise file_error(record.image, f"a mask (its name ends in {mask_suffix!r}), not an image; give the image "
                                       "beside it (data.mask_suffix names the masks)")
    beside = [record.image.with_name(record.image.stem + mask_suffix + suffix) for suffix in IMAGE_SUFFIXES]
    return dataclasses.replace(record, mask=next((p for p in beside if p.is_file()), None))


def write_outputs(out: Path, case: SliceCase, classes: np.ndarray, maps: dict[str, np.ndarray]
                  ) -> dict[str, Path]:
    """``<out>/<case>_seg.png`` (0/255) and each map as ``<out>/<case>_<key>.npy`` float32
    ``(H, W)`` (``(H, W, K)`` for K > 1 channels) in the input's pixel grid, each written under a
    temporary name and renamed. ``classes``, ``maps``: ``(H, W, 1[, K])`` one-slice volumes.
    Returns file key -> path."""
    files = {"segmentation": out / f"{case.file_stem}_seg.png"}
    predict2d.write_mask_png(classes[:, :, 0] > 0, files["segmentation"])
    suffixes = {"probabilities": "prob"}
    for key, volume in maps.items():
        files[key] = out / f"{case.file_stem}_{suffixes.get(key, key)}.npy"
        array = np.asarray(volume, np.float32)[:, :, 0]
        if array.ndim == 3 and array.shape[-1] == 1:  # one channel (the whole tumor): (H, W), as `predict` writes
            array = array[..., 0]
        with atomic_path(files[key]) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, array)
    return files


def areas_px(classes: np.ndarray) -> dict[str, int]:
    """``{'WT': pixels}`` of a one-slice internal-class map (a whole-tumor model has no sub-regions)."""
    return {"WT": int(np.count_nonzero(classes))}
