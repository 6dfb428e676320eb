"""Figures as PNG files: training curves, the best/worst-slice gallery, per-case panels.

Pure plotting: each function takes records or arrays and writes one PNG atomically
(:func:`jaxseg.files.atomic_path`). The arrays every tile shows come from
:mod:`jaxseg.report.slices` (orientation, window, overlay colours), where they are tested.
matplotlib is imported inside the functions, so ``import jaxseg`` stays fast, and figures are
drawn on an explicit Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never
through pyplot's global state: no display is needed and a notebook's backend is left alone.
Figure sizes are exact pixel counts (``DPI`` = 100, no tight bounding box).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxseg import overlap
from jaxseg.files import atomic_path
from jaxseg.report import slices as S
from jaxseg.report.html import CLASSES

DPI = 100
CURVE_PANEL_PX = (520, 420)  # one panel of the training curves, width x height
CURVE_LEGEND_PX = 150  # beside the Dice panel
MIN_GALLERY_COLUMNS = 3
REGION_NAMES = {"WT": "whole tumor", "TC": "tumor core", "ET": "enhancing tumor"}
_TITLE_PX, _HEADER_PX, _FOOTER_PX, _LABEL_PX = 34, 60, 70, 44


def _figure(width_px: int, height_px: int, layout: str | None = None) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)  # the Agg backend, explicitly, for this figure only
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing): ``s_t = w s_{t-1} + (1 - w)
    x_t``, divided by ``1 - w^t`` so the first points are not pulled toward zero."""
    out, running = np.empty(len(values)), 0.0
    for t, x in enumerate(values, start=1):
        running = weight * running + (1 - weight) * float(x)
        out[t - 1] = running / (1 - weight ** t)
    return out


def _series(records: Sequence[Mapping[str, Any]], key: str, x: str) -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[key]) for r in records if x in r and isinstance(r.get(key), (int, float))
             and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _regions(records: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = dict.fromkeys(k.split("_dice_", 1)[1] for r in records for k in r
                         if k.startswith(("val_dice_", "train_dice_")))
    return list(keys)


def training_curves(records: Sequence[Mapping[str, Any]], path: str | Path, *,
                    step_losses: Sequence[tuple[int, float]] | None = None, smoothing: float = 0.9,
                    title: str | None = None) -> Path:
    """Write the training curves of a run as one PNG.

    Args:
      records: the per-epoch records of ``metrics.jsonl`` (``epoch``, ``step``, ``train_loss``,
        ``train_dice_<region>``, and on validated epochs ``val_loss``, ``val_dice_<region>``,
        ``val_dice``; ``learning_rate`` or ``lr`` if logged, else ``lr_scale``).
      step_losses: ``(step, loss)`` of every step (``steps.csv``), drawn raw and smoothed.
    Panels: loss against the step; Dice per region against the epoch (validation solid, training
    dotted, the best validated epoch starred); the learning rate if logged (or the
    reduce-on-plateau scale once it has changed). One record, or no validation yet, is fine.
    """
    from matplotlib.ticker import MaxNLocator
    records = [r for r in records if "epoch" in r]
    lr_key = next((k for k in ("learning_rate", "lr") if any(k in r for r in records)), None)
    scales = {r["lr_scale"] for r in records if "lr_scale" in r}
    if lr_key is None and len(scales) > 1:
        lr_key = "lr_scale"
    panels = 3 if lr_key else 2
    # Constrained layout: the Dice legend sits outside its axes, so low early curves stay visible.
    fig = _figure(panels * CURVE_PANEL_PX[0] + CURVE_LEGEND_PX, CURVE_PANEL_PX[1], layout="constrained")
    axes = fig.subplots(1, panels)

    ax = axes[0]
    if step_losses:
        steps, losses = zip(*step_losses)
        ax.plot(steps, losses, color="0.75", lw=0.8, label="train, per step")
        if len(steps) > 1:
            ax.plot(steps, smooth(losses, smoothing), color="C0", lw=1.6, label=f"train, smoothed (EMA {smoothing})")
    x, y = _series(records, "train_loss", "step")
    ax.plot(x, y, "o-", color="C1", ms=4, label="train, epoch mean")
    x, y = _series(records, "val_loss", "step")
    if x:
        ax.plot(x, y, "s--", color="C2", ms=5, label="validation")
    ax.set(title="Loss", xlabel="step", ylabel="loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    for i, region in enumerate(_regions(records)):
        colour = f"C{i}"
        x, y = _series(records, f"train_dice_{region}", "epoch")
        ax.plot(x, y, ":", marker=".", color=colour, alpha=0.7, label=f"{region} train")
        x, y = _series(records, f"val_dice_{region}", "epoch")
        if x:
            ax.plot(x, y, "o-", color=colour, ms=4, label=f"{region} validation")
    x, y = _series(records, "val_dice", "epoch")
    if x:
        ax.plot(x, y, "--", color="k", lw=1, label="validation mean")
        best = int(np.argmax(y))
        ax.plot([x[best]], [y[best]], "*", color="k", ms=12, label=f"best: epoch {x[best]} ({y[best]:.3f})")
    else:
        ax.text(0.5, 0.5, "no validation yet", transform=ax.transAxes, ha="center", va="center",
                fontsize=12, color="0.4")
    ax.set(title="Dice per region", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
    epochs = [r["epoch"] for r in records]
    if epochs:  # else one epoch gets an axis of 0.95..1.05
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)

    if lr_key:
        ax = axes[2]
        x, y = _series(records, lr_key, "epoch")
        ax.plot(x, y, "o-", color="C4", ms=4)
        label = "learning-rate scale (reduce on plateau)" if lr_key == "lr_scale" else "learning rate"
        ax.set(title=label.capitalize(), xlabel="epoch", ylabel=label)
        if y and min(y) > 0 and max(y) / min(y) > 20:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)

    last = records[-1] if records else {}
    fig.suptitle(title or f"Training: epoch {last.get('epoch', 0)}, step {last.get('step', 0)}", fontsize=12)
    return _save(fig, path)


def _tile(ax: Any, rgb: np.ndarray, aspect: float, plane: str, title: str | None = None) -> None:
    """One image tile: no ticks, the patient directions at its edges."""
    ax.imshow(rgb, aspect=aspect, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    from matplotlib import patheffects
    left, right, top, bottom = S.EDGE_LABELS[plane]
    # White letters with a black outline: readable on bright tissue and on air alike.
    style = dict(transform=ax.transAxes, color="white", fontsize=7, fontweight="bold",
                 path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    if title:
        ax.set_title(title, fontsize=8)


def _blank(ax: Any) -> None:
    ax.set_axis_off()


def gallery_size_px(columns: int, tile_px: int) -> tuple[int, int]:
    """``(width, height)`` of a gallery with ``columns`` tiles per row (two rows: best, worst;
    at least ``MIN_GALLERY_COLUMNS`` wide, so the legend and notes fit)."""
    columns = max(columns, MIN_GALLERY_COLUMNS)
    return _LABEL_PX + columns * tile_px, _HEADER_PX + 2 * tile_px + _TITLE_PX + _FOOTER_PX


def _footnote(fig: Any, text: str, width_px: int) -> None:
    """Small grey notes at the bottom, wrapped to the figure's width (~5 px per character)."""
    fig.text(0.5, 4 / fig.bbox.height, textwrap.fill(text, max(40, int(width_px / 5.2))), ha="center",
             va="bottom", fontsize=7, color="0.3")


def slice_gallery(tiles: Sequence[S.SliceTile], path: str | Path, *, n: int = 6, region: str = "WT",
                  min_pixels: int = 50, min_gap: int = 5, cases: int | None = None,
                  modality: str | None = "flair", tile_px: int = 210) -> Path:
    """Write the best ``n`` and worst ``n`` slices by Dice among ``tiles`` (from
    :func:`jaxseg.report.slices.case_tiles` of every case) as one PNG: top row best (highest
    first), bottom row worst (lowest first). Each tile: the image (``modality``, windowed) with
    prediction only red, reference only green, both yellow; its case, plane, slice and Dice.
    The picking rule is :func:`jaxseg.report.slices.best_and_worst`."""
    from matplotlib.patches import Patch
    best, worst = S.best_and_worst(tiles, n, min_pixels, min_gap)
    columns = max(len(best), len(worst), MIN_GALLERY_COLUMNS)
    width, height = gallery_size_px(columns, tile_px)
    fig = _figure(width, height)
    axes = np.asarray(fig.subplots(2, columns, squeeze=False))
    fig.subplots_adjust(left=_LABEL_PX / width, right=1, top=1 - _HEADER_PX / height,
                        bottom=_FOOTER_PX / height, wspace=0.04, hspace=_TITLE_PX / tile_px)
    for row, (name, chosen) in enumerate((("best", best), ("worst", worst))):
        for col in range(columns):
            ax = axes[row, col]
            if col >= len(chosen):
                _blank(ax)
                continue
            t = chosen[col]
            _tile(ax, t.rgb(), t.aspect, t.plane, f"{t.case}\n{t.plane} {t.index}   Dice {t.dice:.3f}")
            if col == 0:
                ax.set_ylabel(name, fontsize=11, fontweight="bold")
    if not best and not worst:
        fig.text(0.5, 0.5, "no slice has tumor in the prediction or the reference", ha="center", fontsize=12)
    plane = tiles[0].plane if tiles else "axial"
    over = f" over {cases} case{'s' if cases != 1 else ''}" if cases is not None else ""
    fig.suptitle(f"Best and worst {plane} slices by {region} Dice ({REGION_NAMES.get(region, region)}){over}",
                 fontsize=12, y=1 - 8 / height, va="top")
    fig.legend(handles=[Patch(color=S.PREDICTION_RGB, label="prediction only"),
                        Patch(color=S.REFERENCE_RGB, label="reference (ground truth) only"),
                        Patch(color=S.OVERLAP_RGB, label="both (overlap)")],
               loc="lower center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 32 / height))
    _footnote(fig, f"{S.CONVENTION}. Background: {modality or 'none (no image found)'}, window "
              f"{S.WINDOW_PERCENTILES[0]}-{S.WINDOW_PERCENTILES[1]} % of brain voxels. Slices with at least "
              f"{min_pixels} voxels of prediction or reference, {min_gap}+ apart within a case and row.", width)
    return _save(fig, path)


def class_colours() -> dict[int, tuple[float, float, float]]:
    """Internal class -> RGB in [0, 1]: the report's class colours (:data:`jaxseg.report.html.CLASSES`)."""
    return {value: tuple(int(hex_[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[misc]
            for value, _, _, hex_ in CLASSES}


def panel_size_px(n: int, tile_px: int, shapes: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[int, int]:
    """``(width, height)`` of a case panel: ``n`` columns of ``tile_px``, 6 rows (axial, coronal,
    sagittal; reference and prediction each) of ``tile_px`` times the plane's height/width
    ``shapes``; a title row above each plane, a thin gap between its reference and prediction."""
    planes = sum(_pair_px(tile_px, r) for r in shapes)
    return _LABEL_PX + 24 + n * tile_px, _HEADER_PX + planes + 2 * _TITLE_PX + _FOOTER_PX


_PAIR_GAP = 0.03  # between a plane's reference and prediction rows, as a fraction of a row


def _pair_px(tile_px: int, shape: float) -> int:
    row = round(tile_px * shape)
    return 2 * row + round(_PAIR_GAP * row)


def _plane_shapes(shape: Sequence[int], spacing: Sequence[float]) -> list[float]:
    """Height/width of each plane's displayed slices (in mm), kept within 0.3..1.6 so no row
    collapses: rows then fit their images instead of leaving gaps."""
    out = []
    for plane in S.PLANES:
        a, b = (axis for axis in range(3) if axis != S.PLANE_AXIS[plane])
        out.append(float(np.clip(shape[b] * S.display_aspect(plane, spacing) / shape[a], 0.3, 1.6)))
    return out


def case_panel(case: str, image: np.ndarray | None, prediction: np.ndarray, reference: np.ndarray,
               spacing: Sequence[float], path: str | Path, *, n: int = 5, modality: str | None = "flair",
               tile_px: int = 170) -> Path:
    """Write one case's panel: ``n`` slices in each plane (axial, coronal, sagittal), each shown
    twice: the reference classes above, the predicted classes below, in the report's class
    colours, over the image (``modality``, windowed; None: black).

    Args:
      image: ``(X, Y, Z)`` float RAS intensities or None.
      prediction, reference: ``(X, Y, Z)`` uint8 internal classes (0 background, 1 NCR, 2 ED, 3 ET).
      spacing: voxel sizes (mm, canonical order); tiles keep millimetres square.
    Slices: :func:`jaxseg.report.slices.pick_slices` of prediction | reference whole tumor, so
    they cut through the tumor (evenly through the brain when there is none).
    """
    from matplotlib.patches import Patch
    empty = image is None
    if empty:
        image = np.zeros(reference.shape, np.float32)
    window = S.intensity_window(image)
    box = S.content_box(image, prediction, reference)
    image, prediction, reference = image[box], prediction[box], reference[box]
    pred_wt, ref_wt = prediction > 0, reference > 0
    colours = class_colours()
    shapes = _plane_shapes(reference.shape, spacing)
    width, height = panel_size_px(n, tile_px, shapes)
    fig = _figure(width, height)
    # Three plane blocks (titles between them), each two rows: reference over prediction.
    pairs = [_pair_px(tile_px, r) for r in shapes]
    outer = fig.add_gridspec(3, 1, height_ratios=pairs, hspace=_TITLE_PX / np.mean(pairs),
                             left=(_LABEL_PX + 24) / width, right=1, top=1 - _HEADER_PX / height,
                             bottom=_FOOTER_PX / height)
    axes = np.concatenate([np.asarray(outer[p].subgridspec(2, n, hspace=_PAIR_GAP, wspace=0.04)
                                      .subplots(squeeze=False)) for p in range(3)])
    for p, plane in enumerate(S.PLANES):
        axis = S.PLANE_AXIS[plane]
        picked = S.pick_slices(pred_wt | ref_wt, axis, n, brain=image)
        dice, union = S.slice_dice(pred_wt, ref_wt, axis)
        aspect = S.display_aspect(plane, spacing)
        for col in range(n):
            if col >= len(picked):
                _blank(axes[2 * p, col])
                _blank(axes[2 * p + 1, col])
                continue
            i = picked[col]
            gray = S.to_gray(S.display_slice(image, plane, i), window)
            score = "no tumor" if union[i] == 0 else f"WT Dice {dice[i]:.2f}"
            gap = "   " if tile_px >= 150 else " "
            score = score if tile_px >= 150 else score.replace("Dice ", "")  # what fits a small tile
            for r, (name, classes) in enumerate((("reference", reference), ("prediction", prediction))):
                ax = axes[2 * p + r, col]
                rgb = S.classes_rgb(gray, S.display_slice(classes, plane, i), colours)
                _tile(ax, rgb, aspect, plane, f"{plane} {i + box[axis].start}{gap}{score}" if r == 0 else None)
                if col == 0:
                    ax.set_ylabel(f"{plane}\n{name}", fontsize=10, fontweight="bold")
    scores = "   ".join(f"{region} {overlap.dice(S_p, S_r):.3f}" for region, S_p, S_r in (
        ("WT", pred_wt, ref_wt), ("TC", np.isin(prediction, (1, 3)), np.isin(reference, (1, 3))),
        ("ET", prediction == 3, reference == 3)))
    fig.suptitle(f"{case}   Dice {scores}", fontsize=12,
                 y=1 - 8 / height, va="top")
    fig.legend(handles=[Patch(color=colours[v], label=f"{name} ({long})" if width >= 800 else name)
                        for v, name, long, _ in CLASSES],
               loc="lower center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 32 / height))
    _footnote(fig, f"{S.CONVENTION}. Background: {'none (no image found)' if empty else modality}. "
              f"Slices at the {', '.join(f'{100 * (i + 0.5) / n:g}' for i in range(n))} % quantiles of the "
              "tumor (reference or prediction) along each axis; numbers index the RAS volume.", width)
    return _save(fig, path)


RELIABILITY_PANEL_PX = (360, 380)


def reliability_diagram(bins: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path, *,
                        title: str = "reliability of the predicted probabilities") -> Path:
    """One panel per region: observed frequency against mean predicted probability per bin, for
    each voxel selection (e.g. ``all_brain``, ``relevant``), the diagonal = perfect calibration.

    Args:
      bins: ``{region: {selection: {"confidence", "accuracy", "count", "ece"}}}``, the arrays
        per bin (:func:`jaxseg.explain.calibration.reliability_bins`; NaN for empty bins), ``ece``
        a float or None.
      path: the PNG to write.
    """
    regions = list(bins)
    width, height = RELIABILITY_PANEL_PX
    fig = _figure(width * max(1, len(regions)), height, layout="constrained")
    axes = fig.subplots(1, max(1, len(regions)), squeeze=False)[0]
    for ax, region in zip(axes, regions):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        for selection, b in bins[region].items():
            confidence, accuracy = np.asarray(b["confidence"], float), np.asarray(b["accuracy"], float)
            full = np.asarray(b["count"], float) > 0
            ece = b.get("ece")
            label = selection.replace("_", " ") + (f" (ECE {ece:.3f})" if ece is not None else "")
            ax.plot(confidence[full], accuracy[full], marker="o", markersize=3, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency",
               title=REGION_NAMES.get(region, region), aspect="equal")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
