"""Writing model folders (:mod:`jaxseg.model_store` reads them): :func:`export_model`, the card's
facts read off a run, and the float16-vs-float32 probability check. This module needs a model
(it imports the predictor); the store below it does not."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxseg import config as config_lib
from jaxseg import home
from jaxseg.errors import JaxsegError
from jaxseg.files import write_text
from jaxseg.model_store import (CALIBRATION_FILE, CARD_FILE, CONFIG_FILE, DEMO_NAME, FLOAT16_TOLERANCE, STORAGE_DTYPES,
                                WEIGHTS_FILE, find_run, is_model_folder, read_calibration, write_weights)
from jaxseg.target import target_for

# The check input when none is given: one synthetic case (jaxseg.data.phantom) of this size;
# the model's preprocessing fits it to its image size anyway.
CHECK_PHANTOM_SHAPE = (96, 96, 48)
CHECK_PHANTOM_SEED = 1234


def measure_difference(source: Any, folder: Path, check_input: str | Path | None) -> tuple[float, str]:
    """max |p(folder's model) - p(source)| over every voxel and channel of the check input.

    ``source`` is the float32 :class:`~jaxseg.infer.predict.Predictor` of the run; ``folder`` the
    freshly written model folder, loaded exactly as users will load it. Returns the difference
    and a description of the input it was measured on.
    """
    from jaxseg.data import brats, phantom
    from jaxseg.infer.predict import Predictor
    with tempfile.TemporaryDirectory(prefix="jaxseg-check-") as scratch:
        if check_input is None:
            case_dir = phantom.write_phantoms(scratch, 1, CHECK_PHANTOM_SEED, CHECK_PHANTOM_SHAPE)[0]
            described = f"a synthetic phantom ({'x'.join(map(str, CHECK_PHANTOM_SHAPE))} voxels, seed {CHECK_PHANTOM_SEED})"
        else:
            case_dir = Path(check_input)
        case = brats.case_from_path(case_dir)
        image, _, _ = brats.load_case(case, source.modalities)
        if check_input is not None:  # the case, not the path: the card may ship to other machines
            described = f"case {case.case_id}"
        reference, _ = source.predict_image(image)
        stored, _ = Predictor(folder, source.batch_size).predict_image(image)
    return float(np.max(np.abs(stored.astype(np.float64) - reference))), described


def build_card(run: Path, source: Any, *, name: str, dtype: str, size_bytes: int, difference: float | None,
               checked_on: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The model card of ``run``'s model (``source``: its Predictor), updated with ``overrides``
    (top-level keys replace; ``provenance``, ``inputs`` and ``storage`` are merged key by key)."""
    from jaxseg.model_store import best_validation, now_utc, run_provenance
    from jaxseg.models.registry import count_params
    cfg = source.cfg
    m = cfg.model
    best = best_validation(run)
    validation: dict[str, Any] = {}
    if best:
        validation = {
            "dice": {k[len("val_dice_"):]: v for k, v in best.items() if k.startswith("val_dice_")},
            "mean_dice": best["val_dice"], "epoch": best.get("epoch"), "step": best.get("step"),
            "how": "during training (jaxseg train): dataset Dice summed over the validation cases' "
                   + ("patches" if m.name == "unet3d" else f"slices at {cfg.data.image_size} px")
                   + ", at the epoch with the best mean Dice (the exported weights)",
        }
    cases: dict[str, int] = {}
    try:
        splits = json.loads((run / "splits.json").read_text())
        cases = {k: len(splits[k]) for k in ("train", "val", "test") if isinstance(splits.get(k), list)}
    except (OSError, ValueError, AttributeError):
        pass
    architecture = {"name": m.name, "features": list(m.features), "dropout": m.dropout,
                    "image_size": cfg.data.image_size}
    if m.name == "unet3d":
        architecture["patch_size"] = cfg.data.patch_size
    card: dict[str, Any] = {
        "name": name,
        "description": f"{m.name} ({cfg.data.target}) exported from run {run.name}",
        "inputs": {"modalities": list(source.modalities), "format": cfg.data.format,
                   "preprocessing": f"{cfg.data.normalize} normalisation, {cfg.data.crop} crop, "
                                    f"{cfg.data.fit} to {cfg.data.image_size} px (done by jaxseg)"},
        "target": cfg.data.target,
        "regions": list(target_for(cfg).region_names),
        "architecture": architecture,
        "parameters": count_params(source.model()),
        "provenance": {
            "summary": run_provenance(run, cfg),
            "trained_on": cfg.data.root or f"{cfg.data.phantom_cases} synthetic phantoms "
                                             f"(seed {cfg.data.phantom_seed}, {list(cfg.data.phantom_shape)} voxels)",
            "config": cfg.name, "cases": cases, "validation": validation,
            "exported_from": str(run), "exported_at": now_utc(),
        },
        "license": "",
        "citation": "",
        "storage": {"dtype": dtype, "bytes": size_bytes,
                    "float16_tolerance": FLOAT16_TOLERANCE if dtype == "float16" else None,
                    "max_probability_difference": difference, "measured_on": checked_on},
    }
    from jaxseg.model_store import read_card
    if is_model_folder(run):  # re-exporting a model folder: keep its card's facts
        previous = read_card(run)
        for key in ("description", "provenance", "license", "citation", "limits"):
            if key in previous:
                card[key] = previous[key]
        card["provenance"] = {**card["provenance"], "exported_from": str(run), "exported_at": now_utc()}
    for key, value in overrides.items():
        if key in ("provenance", "inputs", "storage") and isinstance(value, dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    return card


def read_card_file(path: str | Path) -> dict[str, Any]:
    """A JSON object of card fields given on the command line (``--card``)."""
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise JaxsegError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise JaxsegError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(card, dict):
        raise JaxsegError(f"{path}: must hold a JSON object of model card fields")
    return card


def calibration_card(calibration: dict[str, Any]) -> dict[str, Any]:
    """The card's ``calibration`` section from a calibration.json: temperatures, what they were
    fitted on, the in-sample ECE before and after."""
    keys = ("temperature", "fitted_on", "mc_samples", "ece_before", "ece_after")
    return {"file": CALIBRATION_FILE, **{k: calibration[k] for k in keys if k in calibration}}


def card_summary(card: dict[str, Any]) -> list[str]:
    """A few lines of a model card for `jaxseg models`."""
    lines = []
    if card.get("description"):
        lines.append(card["description"])
    inputs = card.get("inputs", {})
    if inputs.get("preprocessing"):
        lines.append(f"expects: {inputs['preprocessing']}")
    validation = card.get("provenance", {}).get("validation", {})
    if validation.get("dice"):
        scores = ", ".join(f"{k} {v:.3f}" for k, v in validation["dice"].items() if isinstance(v, (int, float)))
        lines.append(f"validation Dice: {scores}" + (f" ({validation['how']})" if validation.get("how") else ""))
    storage = card.get("storage", {})
    if storage.get("dtype"):
        text = f"stored {storage['dtype']}"
        if storage.get("bytes"):
            size = storage["bytes"]
            text += f", {size / 1e6:.1f} MB" if size >= 1e6 else f", {size / 1e3:.1f} kB"
        if isinstance(storage.get("max_probability_difference"), (int, float)):
            text += f"; max |p16 - p32| {storage['max_probability_difference']:.1e} on {storage.get('measured_on')}"
        lines.append(text)
    if card.get("parameters"):
        lines.append(f"{card['parameters']:,} parameters")
    temperature = card.get("calibration", {}).get("temperature")
    if temperature:
        lines.append("calibrated: temperature " + ", ".join(f"{k} {v:.2f}" for k, v in temperature.items())
                     + " (calibration.json; --no-calibration turns it off)")
    for key in ("limits", "license", "citation"):
        if card.get(key):
            value = card[key]
            lines.append(f"{key}: {'; '.join(value) if isinstance(value, list) else value}")
    return lines


def render_models(entries: Any, console: Any) -> None:
    """Print `jaxseg models`: one table row per :class:`~jaxseg.model_store.ModelEntry`, then
    each model card's summary."""
    from rich.table import Table
    table = Table(title="models (--checkpoint NAME, or the path)")
    for column in ("name", "source", "inputs", "target", "architecture", "calibrated", "provenance", "path"):
        table.add_column(column, overflow="fold")
    for e in entries:
        target = f"{e.target}: {'/'.join(e.regions)}"
        calibrated = "yes" if (Path(e.path) / CALIBRATION_FILE).is_file() else "no"
        table.add_row(e.name, e.source, ", ".join(e.modalities), target, e.architecture, calibrated, e.provenance,
                      str(e.path))
    console.print(table)
    for e in entries:
        if e.card:
            console.print(f"\n[bold]{e.name}[/bold] ({e.source}) model card:")
            for line in card_summary(e.card):
                console.print(f"  {line}", markup=False, highlight=False)


# --- exporting --------------------------------------------------------------------------------

def export_model(run: str | Path, out: str | Path, *, name: str, dtype: str = "float16",
                 card: dict[str, Any] | None = None, check_input: str | Path | None = None,
                 say: Callable[[str], None] = lambda m: None) -> Path:
    """Write ``run``'s model (its best checkpoint, else the newest; or another model folder) as a
    model folder ``out``: config.toml, model.safetensors (floats as ``dtype``), card.json, and the
    run's calibration.json if it has one (the card then has a ``calibration`` section).

    The card is filled in from the run (architecture, inputs, target, parameter count,
    provenance from config.toml, splits.json and the best validation record) and then updated
    with ``card`` (top-level keys replace, ``provenance`` is merged). With float16 storage the
    probabilities of the exported model are compared with the run's on ``check_input`` (a case
    folder or file; default: a synthetic phantom), and the export is refused above
    :data:`FLOAT16_TOLERANCE`. Written in a hidden temporary folder beside ``out`` and renamed:
    on any error nothing is left and an existing ``out`` is untouched. Returns ``out``.
    """
    if dtype not in STORAGE_DTYPES:
        raise JaxsegError(f"--dtype {dtype!r}: must be one of {', '.join(STORAGE_DTYPES)}")
    if not name or not all(c.isalnum() or c in "._-" for c in name) or name.startswith("."):
        raise JaxsegError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (it names the model)")
    if name == DEMO_NAME and Path(out).absolute() != home.demo_model_dir().absolute():
        raise JaxsegError(f"--name {name!r}: reserved for the model of `jaxseg demo`; choose another name")
    run = find_run(run)
    out = Path(out).absolute()
    if out.exists() and not is_model_folder(out):
        raise JaxsegError(f"{out}: exists and is not a model folder; choose a new --out")
    if out == run or run in out.parents:
        raise JaxsegError(f"{out}: inside the run being exported; choose a folder elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        from jaxseg.infer.predict import Predictor
        source = Predictor(run)
        cfg = dataclasses.replace(source.cfg, model=dataclasses.replace(source.cfg.model, pretrained=""))
        write_text(tmp / CONFIG_FILE, config_lib.dumps(cfg))
        calibration = read_calibration(run)
        if calibration is not None:  # before the float16 check: both sides then apply it
            write_text(tmp / CALIBRATION_FILE, json.dumps(calibration, indent=2) + "\n")
        size = write_weights(tmp / WEIGHTS_FILE, source.params, source.batch_stats, dtype)
        difference, checked_on = None, None
        if dtype == "float16":
            difference, checked_on = measure_difference(source, tmp, check_input)
            say(f"float16 vs float32: max probability difference {difference:.2e} on {checked_on}")
            if not math.isfinite(difference) or difference > FLOAT16_TOLERANCE:
                raise JaxsegError(f"{run}: float16 storage changes a probability by {difference:.3g} on "
                                  f"{checked_on} (tolerance {FLOAT16_TOLERANCE:g}); export with --dtype float32")
        full = build_card(run, source, name=name, dtype=dtype, size_bytes=size, difference=difference,
                          checked_on=checked_on, overrides=card or {})
        if calibration is not None:
            full["calibration"] = {**calibration_card(calibration), **full.get("calibration", {})}
        write_text(tmp / CARD_FILE, json.dumps(full, indent=2) + "\n")
        _replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace_folder(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing model folder ``out`` is moved aside first and
    deleted only once the new one is in place."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
