"""The self-contained HTML report of one case: a 3-plane + 3D viewer with explanations.

``render_report(data)`` turns a :class:`ReportData` (canonical RAS arrays, see docs/architecture.md)
into ONE HTML string that opens offline: no network, no CDN, no external fonts or scripts. Arrays
travel as zlib-deflated bytes in base64 inside a JSON block and are inflated by the browser's own
``DecompressionStream`` in the inline viewer (``viewer.js``, ``viewer.css`` in this package).
The page is laid out by the Jinja2 templates in ``templates/`` (autoescape on: every text shown
is escaped); this module computes what they show (the data block, formatted numbers).

What is embedded, and why it stays small (a 240 x 240 x 155 BraTS case with six maps: about 9 MB):
  * only the bounding box of the brain and the labels (plus a margin): BraTS volumes are ~60% air;
  * every image channel quantised to uint8 over its 0.5-99.5 percentile window of brain voxels;
  * every map quantised to uint8 over its value range (shown on its colour bar);
  * label maps as uint8 and mesh vertices as float32, all of which deflate well;
  * volumes larger than ``MAX_EMBED_VOXELS`` after cropping are subsampled by a stride.

Display convention: **radiological** (the patient's right on the viewer's left in axial and coronal
views; anterior on the left in the sagittal view), as in clinical PACS viewers. Every view is
labelled with the patient directions, so nobody has to know the convention.
"""
from __future__ import annotations

import base64
import functools
import json
import math
import re
import zlib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jinja2
import markupsafe
import numpy as np

from jaxseg.errors import JaxsegError
from jaxseg.files import write_text
from jaxseg.overlap import dice
from jaxseg.report import mesh as mesh_lib
from jaxseg.target import REGION_CLASSES, REGIONS, region_masks

MAX_EMBED_VOXELS = 16_000_000
CROP_MARGIN = 4  # voxels kept around the brain so that the views do not end at its edge
COLORMAPS = ("turbo", "inferno", "magma", "viridis", "plasma", "hot", "gray")
# internal class -> (name, colour) of the prediction legend: the usual BraTS figure colours.
CLASSES = ((1, "NCR", "necrotic / non-enhancing core", "#ff4136"),
           (2, "ED", "peritumoral edema", "#2ecc40"),
           (3, "ET", "enhancing tumor", "#ffdc00"))
# A whole-tumor model's labels (ReportData.regions == ("WT",)): 1 is the tumor, not NCR.
WT_CLASSES = ((1, "tumor", "whole tumor", "#ff4136"),)
MESH_STYLE = {"Brain": ("#e8e2d8", 0.22), "ED": ("#2ecc40", 0.4), "NCR": ("#ff4136", 1.0),
              "ET": ("#ffdc00", 1.0), "WT": ("#2ecc40", 0.4), "TC": ("#ff851b", 0.7)}
_FALLBACK_MESH_COLORS = ("#7fdbff", "#b10dc9", "#01ff70", "#f012be")


@dataclass(frozen=True)
class Section:
    """An extra summary card after the built-in ones: ``templates/sections/<template>.html.j2``
    rendered with ``section.context`` (its values are escaped like every other)."""

    template: str
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ReportData:
    """Everything the report shows, as canonical RAS arrays (index 0 -> Right, 1 -> Anterior, 2 -> Superior).

    Attributes:
      case_id: shown in the title.
      image: ``(X, Y, Z, C)`` float32 image; channel_names: C names (``'flair'``, ...).
      spacing: ``(3,)`` mm per voxel along X, Y, Z.
      segmentation: ``(X, Y, Z)`` uint8 predicted internal classes (0 bg, 1 NCR, 2 ED, 3 ET).
      ground_truth: ``(X, Y, Z)`` uint8 internal classes, or None.
      maps: name -> ``(X, Y, Z)`` float32 map (``'Grad-CAM'``, ``'Entropy'``, ``'P(WT)'``, ...).
      map_colormaps: name -> one of COLORMAPS; default turbo for saliency, viridis for uncertainty,
        magma for probabilities. map_ranges: name -> (lo, hi) of the colour bar; default the map's
        min and max ([0, 1] for a map named ``P(...)``).
      slice_captions: one caption per axial slice z (length Z), or empty. volume_caption: one text.
      curves: ``{'deletion': curve, 'insertion': curve}`` (either may be missing), each curve a dict
        ``fractions`` (N,), ``saliency`` (N,), ``random`` (N,) and optionally ``auc_saliency``,
        ``auc_random`` (default: trapezoid areas) and ``score`` (the y-axis label); optional
        top-level ``score`` label for both. The flat result of
        :func:`jaxseg.explain.faithfulness.faithfulness` works too (its score curves are shown; see
        :func:`curves_from_faithfulness` to show the Dice curves).
      volumes_ml: ``{'predicted': {'WT': ml, 'TC': ..., 'ET': ...}, 'ground_truth': {...}}``;
        computed from the label maps when empty.
      settings: run settings shown as a table (nested dicts are flattened to dotted keys).
      meshes: name -> ``(vertices (V, 3) float32 mm, faces (F, 3) int32)`` from
        :mod:`jaxseg.report.mesh`; None = compute the default ones, ``{}`` = no 3D view.
      warnings: one line each about the input (e.g. not skull-stripped), shown in a banner.
      sections: extra summary cards (:class:`Section`), shown in order after the built-in ones.
      image_2d: a 2D image (a ``.mat``/PNG/TIFF slice) instead of a volume: every array is a
        one-slice ``(H, W, 1[, C])`` volume in the image's own order (rows first), with no
        orientation and no pixel size. The page shows one view of the image as stored (first row
        at the top), no 3D view, no patient directions or scale bar, and areas in pixels.
      regions: the rows of the size table (a whole-tumor model: ``('WT',)``).
    """

    case_id: str
    image: np.ndarray
    channel_names: list[str]
    spacing: tuple[float, float, float]
    segmentation: np.ndarray
    ground_truth: np.ndarray | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    map_colormaps: dict[str, str] = field(default_factory=dict)
    map_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    slice_captions: list[str] = field(default_factory=list)
    volume_caption: str = ""
    curves: dict[str, Any] = field(default_factory=dict)
    volumes_ml: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    meshes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    warnings: list[str] = field(default_factory=list)  # about the input, shown above everything
    sections: list[Section] = field(default_factory=list)
    image_2d: bool = False
    regions: tuple[str, ...] = ("WT", "TC", "ET")


def render_report(data: ReportData) -> str:
    """The report of ``data`` as one self-contained HTML document (str). Raises JaxsegError for
    inconsistent inputs (shapes, caption count, curve lengths, unknown colour maps)."""
    if "fractions" in data.curves:  # the flat dict of jaxseg.explain.faithfulness
        data = replace(data, curves=curves_from_faithfulness(data.curves))
    _validate(data)
    if data.image_2d:
        data = _image_as_axial(data)
    payload = _payload(data)
    text = json.dumps(_finite(payload), separators=(",", ":"), ensure_ascii=False)
    text = text.replace("</", "<\\/")  # a caption holding "</script>" must not end the block
    return _page(data, payload, text)


def write_report(data: ReportData, path: str | Path) -> Path:
    """Render ``data`` and write it to ``path`` atomically; returns the path."""
    path = Path(path)
    write_text(path, render_report(data))
    return path


def curves_from_faithfulness(result: Mapping[str, Any], metric: str = "score") -> dict[str, Any]:
    """The report's ``curves`` from the result of :func:`jaxseg.explain.faithfulness.faithfulness`.

    Args:
      result: ``fractions`` and ``[random_]{deletion,insertion}_{score,dice}[_auc]`` entries.
      metric: ``'score'`` (the model's score of the target region) or ``'dice'`` (Dice of the
        perturbed prediction against the unperturbed one).
    """
    labels = {"score": "model score of the target region", "dice": "Dice vs. the unperturbed prediction"}
    if metric not in labels:
        raise JaxsegError(f"curves: unknown metric {metric!r} (known: {', '.join(labels)})")
    try:
        curves: dict[str, Any] = {kind: {
            "fractions": result["fractions"], "saliency": result[f"{kind}_{metric}"],
            "random": result[f"random_{kind}_{metric}"], "auc_saliency": result.get(f"{kind}_{metric}_auc"),
            "auc_random": result.get(f"random_{kind}_{metric}_auc")} for kind in ("deletion", "insertion")}
    except KeyError as missing:
        raise JaxsegError(f"curves: the faithfulness result has no {missing} entry") from None
    return {**curves, "score": labels[metric]}


# ----------------------------------------------------------------------------------- validation
def _validate(data: ReportData) -> None:
    def fail(problem: str) -> None:
        raise JaxsegError(f"report of {data.case_id}: {problem}")

    image = np.asarray(data.image)
    if image.ndim != 4 or 0 in image.shape:
        fail(f"image must be (X, Y, Z, C), got shape {image.shape}")
    shape = image.shape[:3]
    if len(data.channel_names) != image.shape[3]:
        fail(f"{len(data.channel_names)} channel names for {image.shape[3]} channels")
    if len(data.spacing) != 3 or not all(float(s) > 0 for s in data.spacing):
        fail(f"spacing must be 3 positive numbers, got {data.spacing!r}")
    named = {"segmentation": data.segmentation, "ground_truth": data.ground_truth,
             **{f"map {k!r}": v for k, v in data.maps.items()}}
    for name, volume in named.items():
        if volume is not None and np.shape(volume) != shape:
            fail(f"{name} has shape {np.shape(volume)}, the image {shape}")
    for name, labels in (("segmentation", data.segmentation), ("ground_truth", data.ground_truth)):
        if labels is not None and np.asarray(labels).size and int(np.max(labels)) > 3:
            fail(f"{name} holds label {int(np.max(labels))}; expected internal classes 0-3")
    if data.slice_captions and len(data.slice_captions) != shape[2]:
        fail(f"{len(data.slice_captions)} slice captions for {shape[2]} axial slices")
    for name, cmap in data.map_colormaps.items():
        if cmap not in COLORMAPS:
            fail(f"map {name!r}: unknown colour map {cmap!r} (known: {', '.join(COLORMAPS)})")
    for name, (vertices, faces) in (data.meshes or {}).items():
        vertices, faces = np.asarray(vertices), np.asarray(faces)
        if vertices.ndim != 2 or vertices.shape[1:] != (3,) or faces.ndim != 2 or faces.shape[1:] != (3,):
            fail(f"mesh {name!r}: expected vertices (V, 3) and faces (F, 3)")
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            fail(f"mesh {name!r}: faces index vertices that do not exist")
    unknown = [s.template for s in data.sections if s.template not in section_names()]
    if unknown:
        fail(f"no section template {unknown[0]!r} (known: {', '.join(section_names()) or 'none'})")
    for kind, curve in data.curves.items():
        if kind == "score":
            continue
        if kind not in ("deletion", "insertion") or not isinstance(curve, Mapping):
            fail(f"curves: unexpected entry {kind!r} (expected 'deletion' and 'insertion' dicts)")
        n = len(curve.get("fractions", ()))
        for key in ("saliency", "random"):
            if len(curve.get(key, ())) != n or n < 2:
                fail(f"curves[{kind!r}]: {key!r} must have as many values as 'fractions' (>= 2)")


# ----------------------------------------------------------------------------------- payload
def _classes(data: ReportData) -> tuple[tuple[int, str, str, str], ...]:
    """The prediction legend: the BraTS sub-regions, or one "tumor" class for a whole-tumor model."""
    return WT_CLASSES if tuple(data.regions) == ("WT",) else CLASSES


def _image_as_axial(data: ReportData) -> ReportData:
    """A 2D image's arrays in the axial view's order, which shows ``[x, y]`` at screen column
    ``X-1-x`` and row ``Y-1-y`` (radiological): ``[x, y] = image[H-1-y, W-1-x]``, so the image
    appears as stored. No 3D view."""
    def turn(a):
        return None if a is None else np.swapaxes(np.asarray(a)[::-1, ::-1], 0, 1)
    return replace(data, image=turn(data.image), segmentation=turn(data.segmentation),
                   ground_truth=turn(data.ground_truth), maps={k: turn(v) for k, v in data.maps.items()}, meshes={})


def _pack(array: np.ndarray) -> str:
    """C-order bytes, deflated (zlib), base64: inflated in the page by DecompressionStream('deflate')."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 6)).decode("ascii")


def _quantise(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((volume - lo) * scale), 0, 255).astype(np.uint8)


def slug(name: str) -> str:
    """``'P(WT)'`` -> ``'p-wt'``: the id suffix of an overlay or surface."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "map"


def _unique_slugs(names: list[str], taken: set[str]) -> list[str]:
    out = []
    for name in names:
        base = candidate = slug(name)
        n = 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        taken.add(candidate)
        out.append(candidate)
    return out


def _default_colormap(name: str) -> str:
    lower = name.lower()
    if lower.startswith("p(") or "prob" in lower:
        return "magma"
    if any(word in lower for word in ("var", "entropy", "uncert", "std", "mutual")):
        return "viridis"
    return "turbo"


def _map_range(name: str, volume: np.ndarray, given: Mapping[str, tuple[float, float]]) -> tuple[float, float]:
    if name in given:
        return float(given[name][0]), float(given[name][1])
    if name.lower().startswith("p("):
        return 0.0, 1.0
    finite = volume[np.isfinite(volume)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def _crop_box(data: ReportData, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box of the brain and every label, with a margin: the only part worth embedding."""
    shape = np.array(np.shape(data.segmentation))
    keep = brain | (np.asarray(data.segmentation) > 0)
    if data.ground_truth is not None:
        keep |= np.asarray(data.ground_truth) > 0
    if not keep.any():
        return np.zeros(3, int), shape
    lo, hi = mesh_lib.bounding_box(keep)
    return np.maximum(lo - CROP_MARGIN, 0), np.minimum(hi + CROP_MARGIN, shape)


def _focus(labels: np.ndarray) -> list[int]:
    """Initial crosshair: the tumor's centre in its largest axial slice, else the volume centre."""
    if not labels.any():
        return [s // 2 for s in labels.shape]
    z = int(np.argmax((labels > 0).sum(axis=(0, 1))))
    i, j = np.nonzero(labels[:, :, z])
    return [int(round(i.mean())), int(round(j.mean())), z]


def region_counts(labels: np.ndarray) -> dict[str, int]:
    """``{'WT': voxels, 'TC': ..., 'ET': ...}`` of an internal-class map."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=4)
    return {region: int(counts[list(classes)].sum()) for region, classes in REGION_CLASSES.items()}


def region_volumes_ml(labels: np.ndarray, spacing) -> dict[str, float]:
    """``{'WT': ml, 'TC': ml, 'ET': ml}`` of an ``(X, Y, Z)`` internal-class map."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {region: float(n) * voxel_ml for region, n in region_counts(labels).items()}


def _dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice per region of two internal-class maps (:func:`jaxseg.overlap.dice`: 1.0 where the
    region is in neither)."""
    p, t = region_masks(pred), region_masks(truth)
    return {region: dice(p[..., k], t[..., k]) for k, region in enumerate(REGIONS)}


def _curve(curve: Mapping[str, Any]) -> dict[str, Any]:
    fractions = np.asarray(curve["fractions"], dtype=np.float64)
    out = {"fractions": fractions.tolist(), "score": curve.get("score")}
    for key in ("saliency", "random"):
        values = np.asarray(curve[key], dtype=np.float64)
        out[key] = values.tolist()
        auc = curve.get(f"auc_{key}")
        trapezoid = float(np.sum((values[1:] + values[:-1]) * np.diff(fractions)) / 2)
        out[f"auc_{key}"] = float(auc) if auc is not None else trapezoid
    return out


def _payload(data: ReportData) -> dict[str, Any]:
    image = np.asarray(data.image, dtype=np.float32)
    segmentation = np.asarray(data.segmentation).astype(np.uint8)
    brain = mesh_lib.brain_mask(image)
    lo, hi = _crop_box(data, brain)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    stride = max(1, math.ceil((np.prod(hi - lo) / MAX_EMBED_VOXELS) ** (1 / 3)))
    sub = tuple(slice(None, None, stride) for _ in range(3))
    shape = np.array([len(range(a, b, stride)) for a, b in zip(lo, hi)])
    channels = []
    for c, name in enumerate(data.channel_names):
        voxels = image[..., c][brain]
        wlo, whi = (np.percentile(voxels, [0.5, 99.5]) if voxels.size else (0.0, 1.0))
        whi = whi if whi > wlo else wlo + 1.0
        channels.append({"name": name, "lo": float(wlo), "hi": float(whi),
                         "data": _pack(_quantise(image[..., c][crop][sub], float(wlo), float(whi)))})
    taken = {"prediction", "ground-truth", "compare"}
    maps = []
    for (name, volume), map_slug in zip(data.maps.items(), _unique_slugs(list(data.maps), taken)):
        volume = np.asarray(volume, dtype=np.float32)
        mlo, mhi = _map_range(name, volume, data.map_ranges)
        maps.append({"name": name, "slug": map_slug, "lo": mlo, "hi": mhi,
                     "colormap": data.map_colormaps.get(name, _default_colormap(name)),
                     "data": _pack(_quantise(np.nan_to_num(volume[crop][sub], nan=mlo), mlo, mhi))})
    meshes = (mesh_lib.report_meshes(image, segmentation, data.spacing, brain=brain) if data.meshes is None
              else data.meshes)
    mesh_items = []
    for n, ((name, (vertices, faces)), mesh_slug) in enumerate(zip(meshes.items(), _unique_slugs(list(meshes), set()))):
        color, opacity = MESH_STYLE.get(name, (_FALLBACK_MESH_COLORS[n % len(_FALLBACK_MESH_COLORS)], 1.0))
        mesh_items.append({"name": name, "slug": mesh_slug, "color": color, "opacity": opacity,
                           "faces_count": int(len(faces)),
                           "vertices": _pack(np.asarray(vertices, dtype="<f4")),
                           "faces": _pack(np.asarray(faces, dtype="<u4"))})
    focus = (np.array(_focus(segmentation)) - lo) // stride
    return {
        "case_id": data.case_id,
        "shape": shape.tolist(),
        "offset": lo.tolist(), "stride": int(stride), "full_shape": list(np.shape(segmentation)),
        "spacing": [float(s) * stride for s in data.spacing],
        "channels": channels,
        "segmentation": _pack(segmentation[crop][sub]),
        "ground_truth": None if data.ground_truth is None
        else _pack(np.asarray(data.ground_truth).astype(np.uint8)[crop][sub]),
        "maps": maps,
        "classes": [{"value": v, "name": n, "long": long, "color": c} for v, n, long, c in _classes(data)],
        "slice_captions": list(data.slice_captions),
        "volume_caption": data.volume_caption,
        "curves": {k: _curve(v) for k, v in data.curves.items() if k in ("deletion", "insertion")},
        "score_label": data.curves.get("score"),
        "meshes": mesh_items,
        "focus": np.clip(focus, 0, shape - 1).tolist(),
        "image_2d": bool(data.image_2d),
        "views": ["axial"] if data.image_2d else list(VIEWS),
    }


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: turn them into null (shown as '–')."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ----------------------------------------------------------------------------------- page
VIEWS = ("axial", "sagittal", "coronal")
COMPARE_CHIPS = (("#ff4136", "prediction only"), ("#2ecc40", "ground truth only"), ("#ffdc00", "both"))
CURVE_NOTES = {"deletion": ("Deletion", "most salient voxels removed first; lower AUC = more faithful"),
               "insertion": ("Insertion", "most salient voxels restored first; higher AUC = more faithful")}


@functools.cache
def _templates() -> jinja2.Environment:
    """The page's templates (``jaxseg/report/templates``, package data), escaping every value.

    trim_blocks/lstrip_blocks drop the lines that hold only a block tag, so the templates can
    be indented without changing the page; StrictUndefined makes a misspelt name an error."""
    return jinja2.Environment(loader=jinja2.PackageLoader("jaxseg.report", "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def section_names() -> tuple[str, ...]:
    """The extra summary cards a report can hold: ``templates/sections/<name>.html.j2``."""
    return tuple(sorted(name.removeprefix("sections/").removesuffix(".html.j2")
                        for name in _templates().list_templates(extensions=["j2"])
                        if name.startswith("sections/")))


def _asset(name: str) -> str:
    return resources.files("jaxseg.report").joinpath(name).read_text(encoding="utf-8")


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value if isinstance(value, str) else json.dumps(_finite(value), default=str)))
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _tick(value: float, span: float) -> str:
    """A colour-bar label: 3 significant digits, and 0 for rounding noise (-1e-7 on a 0-0.7 scale)."""
    return "0" if abs(value) < abs(span) * 1e-3 else f"{value:.3g}"


def _volume_rows(data: ReportData) -> list[dict[str, str]]:
    """One row per region of the volume table, every number formatted."""
    size = (lambda labels, _: region_counts(labels)) if data.image_2d else region_volumes_ml  # 2D: pixels
    unit, digits = ("px", 0) if data.image_2d else ("ml", 1)
    volumes = dict(data.volumes_ml) or {"predicted": size(data.segmentation, data.spacing)}
    if not data.volumes_ml and data.ground_truth is not None:
        volumes["ground_truth"] = size(data.ground_truth, data.spacing)
    pred, truth = volumes.get("predicted", {}), volumes.get("ground_truth") or {}
    dice = _dice(np.asarray(data.segmentation), np.asarray(data.ground_truth)) if data.ground_truth is not None else {}
    rows = []
    for region, long in (("WT", "whole tumor"), ("TC", "tumor core"), ("ET", "enhancing tumor")):
        if region not in data.regions:
            continue
        p, t = pred.get(region), truth.get(region)
        diff = ("–" if p is None or t is None else f"{p - t:+.{digits}f} {unit}" + (f" ({(p - t) / t:+.0%})" if t else ""))
        rows.append({"region": region, "long": long, "predicted": _fmt(p, digits), "truth": _fmt(t, digits),
                     "difference": diff, "dice": _fmt(dice.get(region), 3)})
    return rows


def _verdict(kind: str, auc_saliency: float | None, auc_random: float | None) -> str:
    """Whether the saliency ranking beats the random one: deletion wants the lower AUC,
    insertion the higher; a tie is not a win, and a missing or non-finite AUC gives no verdict."""
    if auc_saliency is None or auc_random is None or not (math.isfinite(auc_saliency) and math.isfinite(auc_random)):
        return "no verdict (an AUC is missing)"
    better = auc_saliency < auc_random if kind == "deletion" else auc_saliency > auc_random
    return "saliency beats random" if better else "saliency does not beat random"


def _curve_cards(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    cards = []
    for kind, curve in payload["curves"].items():
        title, note = CURVE_NOTES[kind]
        verdict = _verdict(kind, curve["auc_saliency"], curve["auc_random"])
        cards.append({"kind": kind, "title": title, "note": note, "verdict": verdict,
                      "good": verdict == "saliency beats random",
                      "auc_saliency": _fmt(curve["auc_saliency"], 3), "auc_random": _fmt(curve["auc_random"], 3)})
    return cards


def _page(data: ReportData, payload: Mapping[str, Any], payload_json: str) -> str:
    model = data.settings.get("model", "")
    model = model.get("name", "") if isinstance(model, Mapping) else model
    maps = [{**item, "ticks": [_tick(item["lo"] + (item["hi"] - item["lo"]) * f, item["hi"] - item["lo"])
                               for f in (0, 0.5, 1)]} for item in payload["maps"]]
    first = data.slice_captions[payload["focus"][2] * payload["stride"] + payload["offset"][2]] if data.slice_captions else ""
    return _templates().get_template("report.html.j2").render(
        # Trusted text, not escaped: the package's own stylesheet and script, and the data block
        # (JSON with every "</" written "<\/", so it cannot end its <script> element).
        css=markupsafe.Markup(_asset("viewer.css")), js=markupsafe.Markup(_asset("viewer.js")),
        payload_json=markupsafe.Markup(payload_json),
        case_id=data.case_id, model=str(model), warnings=data.warnings,
        shape=list(np.shape(data.segmentation)[1::-1] if data.image_2d  # held turned: rows x columns
                   else np.shape(data.segmentation)), spacing=[f"{float(v):g}" for v in data.spacing],
        channel_names=data.channel_names,
        views=[("axial", "Image")] if data.image_2d else [(view, view.capitalize()) for view in VIEWS],
        image_2d=data.image_2d, size_unit="px" if data.image_2d else "ml",
        meshes=payload["meshes"], triangles=f'{sum(m["faces_count"] for m in payload["meshes"]):,}',
        first_caption=first, volume_caption=data.volume_caption,
        class_chips=[(color, name) for _, name, _, color in _classes(data)], compare_chips=COMPARE_CHIPS,
        with_truth=data.ground_truth is not None, maps=maps,
        curve_cards=_curve_cards(payload), volume_rows=_volume_rows(data), settings=_flatten(data.settings),
        sections=data.sections)
