"""`jaxseg explain`: one case in; segmentation, probabilities, Grad-CAM, MC-dropout uncertainty,
deletion/insertion faithfulness and captions out, as NIfTI maps in the input's geometry, a JSON
summary and a self-contained HTML report.

Every map is computed on the model's own preprocessed slices by the pure functions of
``jaxseg.explain`` and restored to the canonical volume with the same recorded geometry that
prediction uses, so all maps overlay the input exactly.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jaxseg.data import brats, checks, nifti, preprocess
from jaxseg.errors import JaxsegError
from jaxseg.explain import captions as captions_lib
from jaxseg.explain.faithfulness import faithfulness
from jaxseg.explain.gradcam import gradcam_volume, parse_target
from jaxseg.explain.model_maps import model_maps_volume
from jaxseg.explain.uncertainty import mc_dropout
from jaxseg.explain.volume3d import explain_volume
from jaxseg.files import write_text
from jaxseg.infer.predict import Predictor
from jaxseg.model_store import resolve_checkpoint
from jaxseg.target import TargetKind


@dataclasses.dataclass(frozen=True)
class ExplainSettings:
    layer: str | None = None  # None: dec0, the last decoder block (sharpest tumor localisation)
    target: str = "mean"  # Grad-CAM score: mean | predicted[:REGION] | REGION (see gradcam.Target)
    mc_samples: int = 20
    faithfulness_slices: int = 8  # the slices with the largest predicted tumor
    faithfulness_steps: int = 21
    seed: int = 0
    batch_size: int = 16


@dataclasses.dataclass
class ExplainResult:
    case_id: str
    report: Path | None
    files: dict[str, Path]
    summary: dict[str, Any]


def explain(path: str | Path, checkpoint: str | Path | None = None, out: str | Path = "report.html",
            settings: ExplainSettings = ExplainSettings(),
            say: Callable[[str], None] = lambda message: None,
            predictor: Predictor | None = None) -> ExplainResult:
    """Explain one case (a NIfTI file or a case folder).

    ``out`` ending in ``.html`` writes only the report there; any other ``out`` is a folder that
    receives every file: ``<case>_seg.nii.gz``, ``_prob``, ``_gradcam``, ``_mc_mean``,
    ``_mc_variance``, ``_mc_entropy``, ``_mc_mutual_information`` (NIfTI, the input's geometry),
    ``<case>_explain.json`` and ``<case>_report.html``. ``predictor``: an already restored model of
    ``checkpoint`` (the web app keeps one per checkpoint, so a second job neither restores nor
    compiles again); None restores it here.
    """
    started = time.perf_counter()

    def step(message: str) -> None:
        say(f"[{time.perf_counter() - started:5.1f} s] {message}")

    path, out = Path(path), Path(out)
    try:
        parse_target(settings.target)
    except ValueError as e:
        raise JaxsegError(f"--target {settings.target!r}: {e} (e.g. mean, predicted, ET, predicted:TC)") from None
    if not path.exists():
        raise JaxsegError(f"{path}: no such file or folder")
    case = brats.case_from_path(path)
    # None: the bundled model whose modalities this case has; "demo", a bundled name, or a path.
    run = resolve_checkpoint(checkpoint, modalities=case.images, input_name=str(path), say=say)
    if predictor is None:
        predictor = Predictor(run, settings.batch_size)
    kind = predictor.target_kind
    image, truth, props = brats.load_case(case, predictor.modalities)
    # Refuses a spacing far from 1 mm; warns (stderr, the summary, the report) if not skull-stripped.
    input_warnings = checks.check_model_input(
        image, [case.images[m] for m in predictor.modalities], props.spacing)
    step(f"read {case.case_id}: {'x'.join(map(str, props.shape))} voxels, "
         f"{len(predictor.modalities)} modalit{'y' if len(predictor.modalities) == 1 else 'ies'}"
         f"{', with ground truth' if truth is not None else ''}")

    layer = settings.layer or _default_layer(predictor)
    names = predictor.model().activation_names
    if layer not in names:
        raise JaxsegError(f"--layer {layer!r}: this model has no such layer (its layers: {', '.join(names)})")
    key = jax.random.PRNGKey(settings.seed)
    brain = preprocess.brain_mask(image)
    extra: dict[str, Any] = {}
    if predictor.volumetric:  # 3D models: sliding windows, a 3D Grad-CAM window (explain/volume3d.py)
        maps = explain_volume(predictor, image, layer, settings.target, key, settings.mc_samples,
                              settings.faithfulness_steps, step)
        probs, classes, cam, mc, curves = (maps[k] for k in ("probs", "classes", "cam", "mc", "curves"))
        extra["gradcam_window"] = maps["gradcam_window"]
        model_maps: dict[str, np.ndarray] = {}
    else:
        probs, classes, cam, mc, curves, model_maps = _explain_slices(predictor, image, layer, key, settings, step)
    step("deletion/insertion curves" if curves else "no tumor predicted: no deletion/insertion curves")

    regions = kind.region_names
    uncertainty = None if mc is None else mc["entropy_wt"]
    volume_caption = captions_lib.describe_volume(classes, props.canonical_affine, brain, cam, uncertainty, regions)
    slice_captions = captions_lib.describe_slices(classes, props.canonical_affine, brain, cam, uncertainty, regions)
    step("captions")

    summary = _summary(case, run, predictor, settings, layer, classes, truth, props, volume_caption,
                       slice_captions, curves, mc is not None)
    summary["warnings"] = input_warnings
    summary.update(extra)
    files: dict[str, Path] = {}
    report_path = out if out.name.endswith(".html") else out / f"{case.case_id}_report.html"
    if not out.name.endswith(".html"):
        files = _write_maps(out, case, props, classes, probs, cam, mc, kind, model_maps)
        files["summary"] = out / f"{case.case_id}_explain.json"
        summary["files"] = {k: str(v) for k, v in files.items()}
        write_text(files["summary"], json.dumps(summary, indent=2))
    _write_report(report_path, case, image, predictor, props, classes, truth, probs, cam, mc, kind,
                  volume_caption, slice_captions, curves, summary, model_maps)
    step(f"report written to {report_path}")
    return ExplainResult(case.case_id, report_path, files, summary)


def _explain_slices(predictor: Predictor, image: np.ndarray, layer: str, key: jax.Array,
                    settings: ExplainSettings, step: Callable[[str], None]) -> tuple:
    """2D models: ``(probs, classes, cam, mc, curves, model_maps)`` from the model's own slices, restored to
    the canonical volume."""
    cfg, kind = predictor.cfg, predictor.target_kind
    prepared = preprocess.prepare_volume(image, None, cfg.data)
    geometry, brain = prepared.geometry, preprocess.brain_mask(image)
    zs = np.flatnonzero(prepared.brain_slices)
    slices = prepared.slices[zs]

    def to_volume(per_slice: np.ndarray) -> np.ndarray:
        """(len(zs), S, S[, K]) maps of the brain slices -> canonical (X, Y, Z[, K]), 0 off-brain."""
        full = np.zeros((len(prepared.slices), *per_slice.shape[1:]), np.float32)
        full[zs] = per_slice
        restored = preprocess.restore_slices(full, geometry, order=1).astype(np.float32)
        return restored * (brain if restored.ndim == 3 else brain[..., None])

    probs = to_volume(predictor.slice_probabilities(slices))
    classes = kind.classes_from_output(probs) * brain
    step("segmented")

    cam = to_volume(gradcam_volume(predictor.graphdef, predictor.params, predictor.batch_stats, slices,
                                   layer, settings.target, target_kind=kind, batch_size=predictor.batch_size))
    step(f"Grad-CAM of layer {layer} ({settings.target}) on {len(zs)} slices")
    # Maps the model carries itself: attention-gate coefficients, transformer attention rollout.
    model_maps = {name: to_volume(value) for name, value in model_maps_volume(
        predictor.graphdef, predictor.params, predictor.batch_stats, slices, kind, predictor.batch_size).items()}
    if model_maps:
        step(f"model maps: {', '.join(model_maps)}")

    mc = None
    if cfg.model.dropout > 0 and settings.mc_samples > 1:
        mc = _mc_volume(predictor, slices, jax.random.fold_in(key, 1), settings.mc_samples, kind, to_volume)
        step(f"MC dropout: {settings.mc_samples} passes")
    else:
        step("MC dropout skipped: the model has no dropout (model.dropout = 0)")

    curves = _faithfulness(predictor, slices, probs, cam, zs, geometry, jax.random.fold_in(key, 2), settings, kind)
    return probs, classes, cam, mc, curves, model_maps



def _default_layer(predictor: Predictor) -> str:
    # On held-out phantoms dec0 put all its Grad-CAM mass inside the tumor; encoder layers
    # 7-60 % (tests/explain/test_gradcam.py).
    names = predictor.model().activation_names
    return "dec0" if "dec0" in names else names[-1]


# MC-dropout passes run at once per slice batch. All 20 at once (one vmap) took 5.1 GB for 16
# slices of 128 px and 132.7 s for 155 slices; 5 at a time 2.0 GB and 126.9 s
# (benchmarks/explain.py, NOTES.md section 10).
MC_SLICE_CHUNK = 5


def _mc_volume(predictor: Predictor, slices: np.ndarray, key: jax.Array, n: int, kind: TargetKind,
               to_volume: Callable) -> dict[str, np.ndarray]:
    """MC-dropout statistics of every slice, in chunks of the predictor's batch size, the passes
    :data:`MC_SLICE_CHUNK` at a time."""
    parts: dict[str, list[np.ndarray]] = {}
    size = predictor.batch_size
    for i, start in enumerate(range(0, len(slices), size)):
        chunk = slices[start:start + size]
        pad = size - len(chunk)  # one compiled program for every chunk
        padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)]) if pad else chunk
        stats = mc_dropout(predictor.graphdef, predictor.params, predictor.batch_stats, padded,
                           jax.random.fold_in(key, i), n, kind, chunk=MC_SLICE_CHUNK)
        for name, value in stats.items():
            parts.setdefault(name, []).append(np.asarray(value)[: size - pad])
    mc = {name: to_volume(np.concatenate(values)) for name, values in parts.items()}
    # The whole-tumor view of uncertainty, for captions and the report: channel 0 is WT for
    # sigmoid targets; a softmax model's entropy is over all classes already.
    mc["entropy_wt"] = mc["entropy"][..., 0] if mc["entropy"].ndim == 4 else mc["entropy"]
    mc["variance_wt"] = mc["variance"][..., 0]
    return mc


def _faithfulness(predictor: Predictor, slices: np.ndarray, probs: np.ndarray, cam: np.ndarray,
                  zs: np.ndarray, geometry: preprocess.SliceGeometry, key: jax.Array,
                  settings: ExplainSettings, kind: TargetKind) -> dict[str, Any] | None:
    """Deletion/insertion on the slices with the largest predicted tumor, in model space."""
    wt = kind.whole_tumor_probability(probs)
    area = (wt > 0.5).sum(axis=(0, 1))[zs]
    order = np.argsort(-area, kind="stable")[: settings.faithfulness_slices]
    order = order[area[order] > 0]
    if not len(order):
        return None
    cam_slices = preprocess.to_slices(cam[..., zs[order]], geometry, order=1)
    return faithfulness(predictor.graphdef, predictor.params, predictor.batch_stats, slices[order],
                        cam_slices, key, steps=settings.faithfulness_steps, channel="WT", target_kind=kind)


def _summary(case, run, predictor, settings, layer, classes, truth, props, volume_caption, slice_captions,
             curves, with_mc) -> dict[str, Any]:
    volumes = {"predicted": brats.tumor_volumes_ml(classes, props.spacing)}
    if truth is not None:
        volumes["ground_truth"] = brats.tumor_volumes_ml(truth, props.spacing)
    aucs = {k: round(float(v), 4) for k, v in (curves or {}).items() if k.endswith("_auc")}
    return {
        "case": case.case_id, "input": str(case.folder), "checkpoint": str(Path(run).absolute()),
        "model": {"name": predictor.cfg.model.name, "features": list(predictor.cfg.model.features),
                  "target": predictor.cfg.data.target, "modalities": list(predictor.modalities),
                  "dropout": predictor.cfg.model.dropout},
        "settings": {**dataclasses.asdict(settings), "layer": layer, "mc_dropout": with_mc},
        "volumes_ml": volumes, "caption": volume_caption.text, "side": volume_caption.side,
        "slice_captions": slice_captions, "faithfulness_auc": aucs,
    }


def _write_maps(out: Path, case: brats.Case, props: nifti.VolumeProperties, classes, probs, cam, mc,
                kind: TargetKind, model_maps: dict[str, np.ndarray]) -> dict[str, Path]:
    # A whole-tumor model's 0/1 map is written as is: internal 1 is file label 1 in both namings.
    labels = brats.from_internal(classes, case.naming)
    files = {"segmentation": out / f"{case.case_id}_seg.nii.gz", "probabilities": out / f"{case.case_id}_prob.nii.gz",
             "gradcam": out / f"{case.case_id}_gradcam.nii.gz"}
    nifti.write_volume(labels.astype(np.uint8), props, files["segmentation"], dtype=np.uint8)
    nifti.write_volume(probs, props, files["probabilities"], dtype=np.float32)
    nifti.write_volume(cam, props, files["gradcam"], dtype=np.float32)
    if mc is not None:
        for name in ("mean", "variance", "entropy", "mutual_information"):
            files[f"mc_{name}"] = out / f"{case.case_id}_mc_{name}.nii.gz"
            nifti.write_volume(mc[name], props, files[f"mc_{name}"], dtype=np.float32)
    for name, volume in model_maps.items():  # att0.., rollout
        files[name] = out / f"{case.case_id}_{name}.nii.gz"
        nifti.write_volume(volume, props, files[name], dtype=np.float32)
    return files


def _write_report(path, case, image, predictor, props, classes, truth, probs, cam, mc, kind, volume_caption,
                  slice_captions, curves, summary, model_maps) -> None:
    from jaxseg.report.html import ReportData, curves_from_faithfulness, write_report
    maps = {"Grad-CAM": cam}
    if truth is not None:  # the map restricted to the annotated tumor
        maps["Grad-CAM x GT"] = cam * (truth > 0)
    for name, volume in model_maps.items():
        maps["Attention rollout" if name == "rollout" else f"Attention gate {name[3:]}"] = volume
    if mc is not None:
        maps["MC variance"] = mc["variance_wt"]
        maps["Entropy"] = mc["entropy_wt"]
    region_probs = kind.region_probabilities(probs)
    for i, region in enumerate(kind.region_names):
        maps[f"P({region})"] = region_probs[..., i]
    settings = {"checkpoint": summary["checkpoint"], "model": summary["model"], "explain": summary["settings"]}
    write_report(ReportData(
        case_id=case.case_id, image=image, channel_names=list(predictor.modalities),
        spacing=tuple(float(s) for s in props.spacing), segmentation=classes.astype(np.uint8),
        ground_truth=truth, maps=maps, slice_captions=slice_captions, volume_caption=volume_caption.text,
        curves=curves_from_faithfulness(curves) if curves else {}, settings=settings,
        warnings=list(summary.get("warnings", []))), path)
