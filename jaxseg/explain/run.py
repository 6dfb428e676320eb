"""`jaxseg explain`: one case in; segmentation, probabilities, Grad-CAM, MC-dropout uncertainty,
deletion/insertion faithfulness and captions out, as NIfTI maps in the input's geometry, a JSON
summary and a self-contained HTML report.

The flow: read the case -> the model's space (:data:`SPACES`: 2D models see brain slices, 3D
models the brain box by sliding windows) -> :func:`jaxseg.explain.maps.compute_maps`, the same
steps for both, into one :class:`~jaxseg.explain.maps.ExplainMaps` -> captions -> an
:class:`Explanation` of the case, from which the JSON summary, the NIfTI maps and the report are
written. Every map is restored to the canonical volume with the same recorded geometry that
prediction uses, so all maps overlay the input exactly.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxseg.data import brats, checks, nifti
from jaxseg.errors import JaxsegError
from jaxseg.explain import captions as captions_lib
from jaxseg.explain.faithfulness import SPACINGS
from jaxseg.explain.gradcam import parse_target
from jaxseg.explain.layer_quality import NORMALISATIONS
from jaxseg.explain.maps import ExplainMaps, ModelSpace, compute_maps
from jaxseg.explain.slices import SliceSpace
from jaxseg.explain.source2d import SliceCase, areas_px, is_slice_input, read_slice, write_outputs
from jaxseg.explain.volume3d import WindowSpace
from jaxseg.files import write_text
from jaxseg.infer import predict2d
from jaxseg.infer.predict import Predictor
from jaxseg.model_store import resolve_checkpoint
from jaxseg.target import target_for

# Where each kind of model sees a case, by the spatial rank of its sampling (predictor.sampling).
SPACES: dict[int, Callable[[Predictor, np.ndarray], ModelSpace]] = {2: SliceSpace, 3: WindowSpace}


@dataclasses.dataclass(frozen=True)
class ExplainSettings:
    layer: str | None = None  # None: dec0, the last decoder block (sharpest tumor localisation)
    target: str = "mean"  # Grad-CAM score: mean | predicted[:REGION] | REGION (see gradcam.Target)
    mc_samples: int = 20
    faithfulness_slices: int = 0  # 0: every slice with predicted tumor; N: the N with the largest tumor
    # Fractions of each deletion/insertion curve: 0, then 0.1 % .. 100 % of the pixels at a
    # constant ratio (a tumor is a few percent of a slice; faithfulness.curve_fractions).
    faithfulness_steps: int = 11
    faithfulness_spacing: str = "geometric"  # geometric | linear
    seed: int = 0
    batch_size: int = 16
    attribution_steps: int = 8  # integrated-gradient steps of the modality attribution (0: skip it)
    normalise: str = "volume"  # Grad-CAM divided by its maximum over the volume | each slice
    # Further Grad-CAM layers the report switches among; None: the bottleneck, dec2 and dec0.
    compare_layers: tuple[str, ...] | None = None
    calibrated: bool = True  # apply the model's calibration.json (per-region temperatures), if any


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One explained case: what was read, every map, the captions.

    Attributes:
      case: the case's files; props: its geometry; image: canonical ``(X, Y, Z, C)`` float32 in
        ``modalities`` order; truth: ``(X, Y, Z)`` uint8 internal classes or None.
        A 2D source (:mod:`jaxseg.explain.source2d`): ``case`` is a
        :class:`~jaxseg.explain.source2d.SliceCase`, ``props`` None, and every array a one-slice
        ``(H, W, 1[, ...])`` volume on the input's pixel grid (``is_slice``).
      maps: every map (:class:`~jaxseg.explain.maps.ExplainMaps`).
      volume_caption, slice_captions: :mod:`jaxseg.explain.captions` (one per axial slice).
      warnings: about the input (:func:`jaxseg.data.checks.check_model_input`).
    """
    case: brats.Case | SliceCase
    props: nifti.VolumeProperties | None
    image: np.ndarray
    modalities: tuple[str, ...]
    truth: np.ndarray | None
    maps: ExplainMaps
    volume_caption: captions_lib.VolumeCaption
    slice_captions: list[str]
    warnings: list[str]

    @property
    def is_slice(self) -> bool:
        """A 2D source: one slice, no geometry (no pixel size, no orientation)."""
        return self.props is None

    @property
    def file_stem(self) -> str:
        """The prefix of the files written for this case."""
        return self.case.file_stem if isinstance(self.case, SliceCase) else self.case.case_id


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
    """Explain one case (a NIfTI file or a case folder), or one 2D slice (a figshare ``.mat``,
    PNG or TIFF file; :mod:`jaxseg.explain.source2d`) with a run trained on 2D slices.

    ``out`` ending in ``.html`` writes only the report there; any other ``out`` is a folder that
    receives every file: ``<case>_seg.nii.gz``, ``_prob``, ``_gradcam``, ``_mc_mean``,
    ``_mc_variance``, ``_mc_entropy``, ``_mc_mutual_information`` (NIfTI, the input's geometry),
    ``<case>_explain.json`` and ``<case>_report.html``; a 2D slice writes ``<case>_seg.png`` and
    the maps as ``<case>_<map>.npy`` (float32, the input's pixel grid) instead of NIfTI.
    ``predictor``: an already restored model of
    ``checkpoint`` (the web app keeps one per checkpoint, so a second job neither restores nor
    compiles again); None restores it here.
    """
    started = time.perf_counter()
    timings: list[dict[str, Any]] = []  # what each step cost, for the JSON summary
    last = [0.0]  # the previous step's end, unrounded (a rounded one can make a step last -0.0 s)

    def step(message: str) -> None:
        now = time.perf_counter() - started
        timings.append({"step": message, "seconds": round(now - last[0], 3), "at": round(now, 3)})
        last[0] = now
        say(f"[{now:5.1f} s] {message}")

    path, out = Path(path), Path(out)
    try:
        parse_target(settings.target)
    except ValueError as e:
        raise JaxsegError(f"--target {settings.target!r}: {e} (e.g. mean, predicted, ET, predicted:TC)") from None
    if settings.mc_samples < 1:
        raise JaxsegError(f"--mc-samples {settings.mc_samples}: must be at least 1 (1 = no MC dropout)")
    if settings.normalise not in NORMALISATIONS:
        raise JaxsegError(f"--normalise {settings.normalise!r}: must be one of {', '.join(NORMALISATIONS)}")
    if settings.faithfulness_steps < 2:
        raise JaxsegError(f"--faithfulness-steps {settings.faithfulness_steps}: must be at least 2 (the image and "
                          "the all-background image)")
    if settings.faithfulness_spacing not in SPACINGS:
        raise JaxsegError(f"--faithfulness-spacing {settings.faithfulness_spacing!r}: not a spacing "
                          f"(known: {', '.join(SPACINGS)})")
    if settings.faithfulness_slices < 0:
        raise JaxsegError(f"--faithfulness-slices {settings.faithfulness_slices}: must be 0 (every tumor slice) or more")
    if settings.attribution_steps < 0:
        raise JaxsegError(f"--attribution-steps {settings.attribution_steps}: must be 0 (skip) or more")
    if not path.exists():
        raise JaxsegError(f"{path}: no such file or folder")
    case, image, truth, props, input_warnings, run, predictor = _read(path, checkpoint, settings, predictor, say)
    if props is None:
        step(f"read {case.case_id}: a 2D slice of {image.shape[0]}x{image.shape[1]} pixels, "
             f"{len(predictor.modalities)} channel{'' if len(predictor.modalities) == 1 else 's'}"
             f"{', with a reference mask' if truth is not None else ''}")
    else:
        step(f"read {case.case_id}: {'x'.join(map(str, props.shape))} voxels, "
             f"{len(predictor.modalities)} modalit{'y' if len(predictor.modalities) == 1 else 'ies'}"
             f"{', with ground truth' if truth is not None else ''}")

    layer = settings.layer or _default_layer(predictor)
    names = predictor.model().activation_names
    if layer not in names:
        raise JaxsegError(f"--layer {layer!r}: this model has no such layer (its layers: {', '.join(names)})")
    compare = _compare_layers(names) if settings.compare_layers is None else tuple(settings.compare_layers)
    if unknown := [name for name in compare if name not in names]:
        raise JaxsegError(f"--compare-layers {','.join(unknown)}: this model has no such layer "
                          f"(its layers: {', '.join(names)})")
    space = SPACES[predictor.sampling.spatial_dims](predictor, image)
    maps = compute_maps(space, target_for(predictor.cfg), layer=layer, gradcam_target=settings.target,
                        key=jax.random.PRNGKey(settings.seed), mc_samples=settings.mc_samples,
                        with_dropout=predictor.cfg.model.dropout > 0, faithfulness_steps=settings.faithfulness_steps,
                        faithfulness_spacing=settings.faithfulness_spacing,
                        faithfulness_slices=settings.faithfulness_slices,
                        modalities=tuple(predictor.modalities), attribution_steps=settings.attribution_steps,
                        normalise=settings.normalise, compare_layers=compare, truth=truth,
                        step=step)

    regions = maps.target.region_names
    if props is None:  # one 2D slice: the image's own words and pixels
        volume_caption = captions_lib.describe_image(maps.classes, maps.brain, maps.gradcam,
                                                     maps.whole_tumor_uncertainty, regions)
    else:
        caption_args = (maps.classes, props.canonical_affine, maps.brain, maps.gradcam,
                        maps.whole_tumor_uncertainty, regions)
        volume_caption = captions_lib.describe_volume(*caption_args)
    if maps.modality is not None:  # "enhancing tumor: mainly T1ce (64%)"
        said = "; ".join(maps.modality.captions())
        volume_caption = dataclasses.replace(volume_caption, text=f"{volume_caption.text} {said[:1].upper()}{said[1:]}.")
    slice_captions = ([volume_caption.text] if props is None else captions_lib.describe_slices(*caption_args))
    explanation = Explanation(case=case, props=props, image=image, modalities=tuple(predictor.modalities), truth=truth,
                              maps=maps, volume_caption=volume_caption, slice_captions=slice_captions,
                              warnings=input_warnings)
    step("captions")

    summary = _summary(explanation, run, predictor, settings)
    files: dict[str, Path] = {}
    report_path = out if out.name.endswith(".html") else out / f"{explanation.file_stem}_report.html"
    if not out.name.endswith(".html"):
        files = _write_maps(out, explanation)
        files["summary"] = out / f"{explanation.file_stem}_explain.json"
        summary["files"] = {k: str(v) for k, v in files.items()}
    _write_report(report_path, explanation, summary)
    step(f"report written to {report_path}")
    # Seconds per step (each since the one before; "at" since the start); written last so that
    # writing the maps and the report is counted.
    summary["timings"] = {"steps": timings, "total_seconds": timings[-1]["at"]}
    if "summary" in files:
        write_text(files["summary"], json.dumps(summary, indent=2))
    return ExplainResult(case.case_id, report_path, files, summary)


def _read(path: Path, checkpoint: str | Path | None, settings: ExplainSettings, predictor: Predictor | None,
          say: Callable[[str], None]):
    """The case and its model: ``(case, image, truth, props, warnings, run, predictor)``.

    A NIfTI file or case folder: canonical arrays and its geometry; the checks of prediction
    (refuses a spacing far from 1 mm; warns on stderr, in the summary and the report if not
    skull-stripped). A 2D slice (:mod:`jaxseg.explain.source2d`), or any input of a run trained on
    2D slices: a one-slice volume and ``props`` None (2D slices are not skull-stripped by nature:
    no border warning).
    """
    slice_input = is_slice_input(path)
    case = None
    if slice_input:
        if checkpoint is None:
            raise predict2d.no_bundled_model(path)
        run = resolve_checkpoint(checkpoint)
    else:
        case = brats.case_from_path(path)
        # None: the bundled model whose modalities this case has; "demo", a bundled name, or a path.
        run = resolve_checkpoint(checkpoint, modalities=case.images, input_name=str(path), say=say)
    if predictor is None:
        predictor = Predictor(run, settings.batch_size, calibrated=settings.calibrated)
    if slice_input or is_slice_input(path, predictor.cfg):
        slice_case, image, truth = read_slice(path, predictor)
        return slice_case, image, truth, None, [], run, predictor
    image, truth, props = brats.load_case(case, predictor.modalities)
    input_warnings = checks.check_model_input(
        image, [case.images[m] for m in predictor.modalities], props.spacing)
    return case, image, truth, props, input_warnings, run, predictor


def _default_layer(predictor: Predictor) -> str:
    # On held-out phantoms dec0 put all its Grad-CAM mass inside the tumor; encoder layers
    # 7-60 % (tests/explain/test_gradcam.py).
    names = predictor.model().activation_names
    return "dec0" if "dec0" in names else names[-1]


def _compare_layers(names: tuple[str, ...]) -> tuple[str, ...]:
    """The layers the report offers besides ``--layer``: the bottleneck (the deepest encoder
    level: coarse, context), dec2 and dec0 (fine, near the output), those the model has. dec2, not
    dec1: on a real validation case (docs/explain.md) dec2's map beat the random ranking on 71 % /
    87 % of the tumor slices (deletion / insertion), dec1's on 2 % / 69 %."""
    bottleneck = [name for name in names if name.startswith("enc")][-1:]
    return tuple(dict.fromkeys(bottleneck + [name for name in ("dec2", "dec0") if name in names]))


def _summary(explanation: Explanation, run: str | Path, predictor: Predictor, settings: ExplainSettings
             ) -> dict[str, Any]:
    """The JSON summary (``<case>_explain.json``, the web app's job result), without ``files``."""
    e, maps, cfg = explanation, explanation.maps, predictor.cfg
    if e.is_slice:  # a 2D file has no pixel size: areas in pixels
        sizes = {"areas_px": {"predicted": areas_px(maps.classes),
                              **({"ground_truth": areas_px(e.truth)} if e.truth is not None else {})}}
    else:
        volumes = {"predicted": brats.tumor_volumes_ml(maps.classes, e.props.spacing)}
        if e.truth is not None:
            volumes["ground_truth"] = brats.tumor_volumes_ml(e.truth, e.props.spacing)
        sizes = {"volumes_ml": volumes}
    aucs = {k: round(float(v), 4) for k, v in (maps.curves or {}).items() if k.endswith("_auc")}
    return {
        "case": e.case.case_id, "input": str(e.case.image if e.is_slice else e.case.folder),
        "input_kind": "slice" if e.is_slice else "volume", "checkpoint": str(Path(run).absolute()),
        "model": {"name": cfg.model.name, "features": list(cfg.model.features), "target": cfg.data.target,
                  "modalities": list(e.modalities), "dropout": cfg.model.dropout},
        "settings": {**dataclasses.asdict(settings), "layer": maps.layer, "mc_dropout": maps.uncertainty is not None,
                     "compare_layers": list(maps.layer_maps)},
        **sizes, "caption": e.volume_caption.text, "side": e.volume_caption.side,
        "slice_captions": e.slice_captions, "faithfulness_auc": aucs,
        "warnings": e.warnings, **maps.notes,
        **{key: value for section in maps.sections() for key, value in section.summary().items()},
    }


def _write_maps(out: Path, explanation: Explanation) -> dict[str, Path]:
    """The segmentation (labels in the input's convention) and every map as NIfTI in the input's
    geometry; returns file key -> path."""
    case, props, maps = explanation.case, explanation.props, explanation.maps
    if explanation.is_slice:  # a PNG mask and .npy maps in the input's pixel grid
        return write_outputs(out, case, maps.classes, maps.nifti_volumes())
    # A whole-tumor model writes 0/1 masks; the others the labels of the input's naming.
    labels = maps.classes if maps.target.whole_tumor_only else brats.from_internal(maps.classes, case.naming)
    files = {"segmentation": out / f"{case.case_id}_seg.nii.gz"}
    nifti.write_volume(labels.astype(np.uint8), props, files["segmentation"], dtype=np.uint8)
    suffixes = {"probabilities": "prob"}
    for key, volume in maps.nifti_volumes().items():
        files[key] = out / f"{case.case_id}_{suffixes.get(key, key)}.nii.gz"
        nifti.write_volume(volume, props, files[key], dtype=np.float32)
    return files


def _write_report(path: Path, explanation: Explanation, summary: Mapping[str, Any]) -> None:
    from jaxseg.report.html import ReportData, Section, curves_from_faithfulness, write_report
    e, maps = explanation, explanation.maps
    overlays = maps.overlays(e.truth)
    settings = {"checkpoint": summary["checkpoint"], "model": summary["model"], "explain": summary["settings"]}
    write_report(ReportData(
        case_id=e.case.case_id, image=e.image, channel_names=list(e.modalities),
        spacing=(1.0, 1.0, 1.0) if e.is_slice else tuple(float(s) for s in e.props.spacing),
        image_2d=e.is_slice, regions=tuple(maps.target.region_names), segmentation=maps.classes.astype(np.uint8),
        ground_truth=e.truth, maps=overlays, slice_captions=e.slice_captions,
        # the sequences' attribution maps share one scale (ModalitySection.maps)
        map_ranges={name: (0.0, 1.0) for name in overlays if name.startswith("WT attribution")},
        volume_caption=e.volume_caption.text, curves=curves_from_faithfulness(maps.curves) if maps.curves else {},
        settings=settings, warnings=list(e.warnings),
        sections=[Section(section.template, section.report_context()) for section in maps.sections()]), path)
