"""Inference on 2D slices (figshare ``.mat``, PNG, TIFF): a mask PNG per slice, the input's size.

The path of :mod:`jaxseg.infer.predict` for one-slice "volumes": read -> the run's preprocessing
(crop, fit, per-slice normalisation) -> batched forward passes -> probabilities restored to the
input's own (row, column) grid -> a 0/255 uint8 PNG mask (``--probabilities``: also
``<name>_prob.npy``, float32 ``(H, W)``). Slices are batched across files, so a folder of
thousands of slices runs at full batches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxseg.data import formats, records
from jaxseg.errors import JaxsegError
from jaxseg.files import atomic_path
from jaxseg.infer.prediction import Prediction


def records_at(path: Path, mask_suffix: str) -> list[records.Record]:
    """One record for a 2D file (``.mat``, ``.png``, ``.tif``); every slice under a folder (its
    format detected from the files); JaxsegError for volumes."""
    data_format = formats.of_input(path) if path.is_file() else formats.get(formats.detect(path))
    return data_format.input_records(path, mask_suffix)


def no_bundled_model(path: Path) -> JaxsegError:
    """The error for a 2D slice given without ``--checkpoint``: no bundled model reads slices."""
    return JaxsegError(f"{path}: a 2D slice, and no --checkpoint given; the bundled models read BraTS NIfTI "
                       "volumes, none reads 2D slices. Pass --checkpoint RUN_FOLDER of a run trained on a 2D "
                       "format (e.g. `jaxseg train --config figshare_resunet34` or `--config lgg_folder`)")


def _target_path(out: Path, record: records.Record, single: bool) -> Path:
    if single and out.suffix and not out.is_dir():
        return out if out.suffix.lower() == ".png" else out.with_name(_stem(out) + ".png")
    return out / f"{record.case_id}.png"


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def write_mask_png(mask: np.ndarray, path: Path) -> None:
    """``mask (H, W)`` bool/0-1 -> a 0/255 uint8 grayscale PNG, written atomically."""
    import imageio.v3 as iio  # noqa: PLC0415
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, (np.asarray(mask) > 0).astype(np.uint8) * np.uint8(255), extension=".png")


def predict_slices(paths: Sequence[Path], predictor, out: Path, *, probabilities: bool = False,
                   progress: Callable[[str], None] | None = None) -> list:
    """Segment every 2D slice at ``paths`` with ``predictor`` (a :class:`jaxseg.infer.predict.Predictor`;
    taken, not imported: predict.py dispatches here).

    One slice: ``out`` is the PNG (another extension is replaced by ``.png``, e.g. ``seg.nii.gz``
    -> ``seg.png`` beside it); a folder ``out`` gets ``<out>/<case id>.png``. Several slices:
    ``<out>/<case id>.png`` each (an image folder's case id keeps its patient folder).
    Returns :class:`jaxseg.infer.prediction.Prediction` records (``volumes_ml`` is empty: 2D slices
    carry no pixel size).
    """
    cfg = predictor.cfg
    if not predictor.target_kind.whole_tumor_only:
        raise JaxsegError(f"{predictor.run}: 2D slices are predicted as binary tumor masks; this run's "
                          f"data.target is {cfg.data.target!r}")
    found = [r for p in paths for r in records_at(Path(p), cfg.data.mask_suffix)]
    if len(found) > 1 and out.name.lower().endswith((".png", ".tif", ".tiff", ".nii", ".nii.gz")):
        raise JaxsegError(f"{out}: the inputs hold {len(found)} slices; --out must be a folder")
    channels = len(predictor.modalities)
    results = []
    for start in range(0, len(found), predictor.batch_size):
        chunk = found[start:start + predictor.batch_size]
        images = [formats.get(r.format).load_record(r, channels)[0] for r in chunk]
        inputs = [formats.SLICES.prepare_input(records.to_volume(image, None)[0], cfg.data) for image in images]
        probs = predictor.slice_probabilities(np.concatenate([i.values for i in inputs]))
        for k, (record, image, model_input) in enumerate(zip(chunk, images, inputs)):
            if progress is not None:
                progress(record.case_id)
            restored = model_input.restore(probs[k:k + 1])[:, :, 0, 0]
            restored *= np.any(image != 0, axis=-1)  # as for volumes: zero pixels are background
            target = _target_path(out, record, len(found) == 1)
            write_mask_png(restored > 0.5, target)
            prob_path = None
            if probabilities:
                prob_path = target.with_name(target.stem + "_prob.npy")
                with atomic_path(prob_path) as tmp:
                    np.save(tmp, restored.astype(np.float32))
            results.append(Prediction(record.case_id, target, prob_path, {}))
    return results
