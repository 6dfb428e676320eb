"""The models jaxseg can use without training: bundled ones, the demo model, model folders.

A **model folder** is a trained model alone, small enough to ship inside the package:

  ``config.toml``        the resolved config of the run it came from (rebuilds the network and
                         its preprocessing);
  ``model.safetensors``  parameters and batch statistics, one tensor per pytree path
                         (``params/encoders/0/conv1/kernel``, ``batch_stats/...``), kernels stored
                         float16 or float32 (vectors float32), always loaded as the abstract
                         state's float32;
  ``card.json``          the model card: name, description, inputs, target and regions,
                         architecture, parameter count, provenance, license, storage dtype and the
                         measured float16-vs-float32 probability difference (:func:`jaxseg.model_export.export_model`).

``--checkpoint`` takes a run folder of ``jaxseg train`` or a model folder
(:func:`find_run`), a bundled model's name, or ``demo``; without it the
default bundled model is used for inputs that have its modalities (:func:`resolve_checkpoint`).
Bundled models live in :data:`BUNDLED_DIR` (``jaxseg/bundled/<name>/``, one model folder each);
the demo model in :func:`jaxseg.home.demo_model_dir`, written by ``jaxseg demo``.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from jaxseg import config as config_lib
from jaxseg import home
from jaxseg.errors import JaxsegError
from jaxseg.files import atomic_path, write_text
from jaxseg.target import target_for

CONFIG_FILE = "config.toml"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CALIBRATION_FILE = "calibration.json"  # per-region temperatures (jaxseg calibrate, docs/calibration.md)
FORMAT = "jaxseg-model-1"  # safetensors metadata "format": what wrote the file

# Bundled model folders; tests point this at a temporary folder.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
# The bundled model used without --checkpoint (when bundled and the input has its modalities).
DEFAULT_MODEL = "brats2018_unet"
DEMO_NAME = "demo"
STORAGE_DTYPES = ("float16", "float32")
# Largest |p16 - p32| of any voxel's probability on the check input that a float16 export may
# have. A probability off by 1e-2 moves the 0.5 threshold only for voxels already within 0.01
# of it, i.e. those the model is unsure about anyway.
FLOAT16_TOLERANCE = 1e-2


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model `jaxseg models` lists and ``--checkpoint`` can name.

    ``source`` is ``bundled`` (inside the package), ``demo`` (what `jaxseg demo` saved) or
    ``run`` (a folder given by the user: a run of `jaxseg train` or an exported model folder).
    ``path`` is what :class:`jaxseg.infer.predict.Predictor` accepts. ``modalities`` are canonical
    names (flair, t1, t1ce, t2) in the model's channel order; ``regions`` the output channels'
    regions (WT, or WT/TC/ET). ``card`` is the model card (card.json) or None for a run folder.
    """

    name: str
    source: str
    path: Path
    architecture: str
    target: str
    regions: tuple[str, ...]
    modalities: tuple[str, ...]
    provenance: str
    description: str = ""
    card: dict[str, Any] | None = None


# --- the folder format ------------------------------------------------------------------------

def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a model folder (config.toml and model.safetensors)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _leaf_name(path: Sequence[Any]) -> str:
    """A pytree path as ``params/encoders/0/conv1/kernel`` (NNX's trailing ``.value`` dropped,
    so the names do not depend on how flax flattens a Variable)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    if len(parts) > 1 and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def flatten_model(params: Any, batch_stats: Any) -> dict[str, np.ndarray]:
    """Parameters and batch statistics as ``{pytree path name: host array}``."""
    import jax
    leaves = jax.tree_util.tree_flatten_with_path({"params": params, "batch_stats": batch_stats})[0]
    return {_leaf_name(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def stored_dtype(value: np.ndarray, dtype: str) -> np.dtype:
    """The dtype a tensor is stored in: ``dtype`` for floating kernels (2 or more dimensions);
    vectors (biases, norm scales, batch statistics) and integers keep their own. The vectors are a
    fraction of a percent of the bytes, and keeping them float32 took a real BraTS case's largest
    probability difference from 9.4e-3 to 6.4e-3 (docs/model_store.md)."""
    if np.issubdtype(value.dtype, np.floating) and value.ndim >= 2:
        return np.dtype(dtype)
    return value.dtype


def write_weights(path: Path, params: Any, batch_stats: Any, dtype: str) -> int:
    """Write ``model.safetensors``, kernels stored as ``dtype`` (:func:`stored_dtype`); returns
    its size in bytes."""
    from safetensors.numpy import save_file
    tensors = {name: value.astype(stored_dtype(value, dtype))
               for name, value in flatten_model(params, batch_stats).items()}
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={"format": FORMAT, "dtype": dtype})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600: others could not read a bundled model
    return path.stat().st_size


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_weights(folder: str | Path, target_params: Any, target_batch_stats: Any) -> tuple[Any, Any]:
    """A model folder's tensors in the shapes, dtypes (float32 compute) and shardings of the
    abstract ``target_params``/``target_batch_stats`` (``jax.ShapeDtypeStruct`` leaves)."""
    import jax
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    path = Path(folder) / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise JaxsegError(f"{path}: not a readable safetensors file ({e})") from None
    tree = {"params": target_params, "batch_stats": target_batch_stats}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [_leaf_name(p) for p, _ in leaves]
    missing = [n for n in names if n not in tensors]
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + \
               ("; " if missing and extra else "") + (f"unexpected {', '.join(extra[:3])}" if extra else "")
        raise JaxsegError(f"{path}: does not fit the model of {Path(folder) / CONFIG_FILE} ({what})")
    arrays = []
    for name, (_, spec) in zip(names, leaves):
        value = tensors[name]
        if value.shape != tuple(spec.shape):
            raise JaxsegError(f"{path}: tensor {name} has shape {value.shape}; the model of "
                              f"{CONFIG_FILE} needs {tuple(spec.shape)}")
        arrays.append(jax.device_put(value.astype(spec.dtype), getattr(spec, "sharding", None)))
    restored = jax.tree_util.tree_unflatten(treedef, arrays)
    return restored["params"], restored["batch_stats"]


def read_card(folder: str | Path) -> dict[str, Any]:
    """``card.json`` of a model folder ({} when it has none)."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise JaxsegError(f"{path}: not a readable model card ({e})") from None
    if not isinstance(card, dict):
        raise JaxsegError(f"{path}: a model card must be a JSON object")
    return card


def read_calibration(folder: str | Path) -> dict[str, Any] | None:
    """A run or model folder's calibration.json (``{"temperature": {channel: T}, ...}``), or None."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        calibration = json.loads(path.read_text())
        temperature = calibration["temperature"]
        if not all(float(t) > 0 for t in temperature.values()):
            raise ValueError("every temperature must be positive")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise JaxsegError(f"{path}: not a readable calibration file ({e})") from None
    return calibration


def calibration_temperatures(folder: str | Path, channel_names: Sequence[str]) -> np.ndarray | None:
    """``(K,)`` float32 temperatures of a folder's calibration.json in ``channel_names`` order, or
    None without one. Raises JaxsegError when it does not name every channel."""
    calibration = read_calibration(folder)
    if calibration is None:
        return None
    temperature = calibration["temperature"]
    missing = [name for name in channel_names if name not in temperature]
    if missing:
        raise JaxsegError(f"{Path(folder) / CALIBRATION_FILE}: no temperature for {', '.join(missing)} "
                          f"(the model has {', '.join(channel_names)})")
    return np.asarray([float(temperature[name]) for name in channel_names], np.float32)


# --- finding ---------------------------------------------------------------------------------

def find_run(checkpoint: str | Path) -> Path:
    """The folder for a ``--checkpoint`` path: a run folder (or its best/ or checkpoints/), or a
    model folder (config.toml + model.safetensors)."""
    path = Path(checkpoint).absolute()
    if is_model_folder(path):
        return path
    if path.name in ("best", "checkpoints"):
        path = path.parent
    if not (path / "config.toml").is_file():
        raise JaxsegError(f"{checkpoint}: not a jaxseg run folder or model folder (no config.toml; pass the "
                          "--workdir of `jaxseg train`, or a folder of `jaxseg export-model`)")
    if not any((path / sub).is_dir() and any((path / sub).iterdir()) for sub in ("best", "checkpoints")):
        raise JaxsegError(f"{checkpoint}: the run has no checkpoint yet")
    return path


# --- listing ----------------------------------------------------------------------------------

def bundled_names() -> list[str]:
    """Names of the bundled models, the default first."""
    if not BUNDLED_DIR.is_dir():
        return []
    names = sorted(p.name for p in BUNDLED_DIR.iterdir()
                   if not p.name.startswith((".", "_")) and is_model_folder(p))
    return sorted(names, key=lambda n: n != DEFAULT_MODEL)


def _entry(name: str, source: str, folder: Path) -> ModelEntry:
    cfg = config_lib.load(folder / CONFIG_FILE)
    card = read_card(folder) if is_model_folder(folder) else None
    return ModelEntry(
        name=name, source=source, path=folder, architecture=cfg.model.name, target=cfg.data.target,
        regions=target_for(cfg).region_names, modalities=config_lib.canonical_modalities(cfg),
        provenance=(card or {}).get("provenance", {}).get("summary") or run_provenance(folder, cfg),
        description=(card or {}).get("description", ""), card=card)


def list_models(runs: Iterable[str | Path] = ()) -> list[ModelEntry]:
    """Every model jaxseg can use: the bundled models (default first), the demo model (if
    `jaxseg demo` has saved one), then each of ``runs`` (run folders of `jaxseg train`, their
    best/ or checkpoints/, or model folders), in that order.

    Raises JaxsegError naming a path of ``runs`` that is not a trained run or model folder.
    Reads only config.toml, card.json, splits.json and metrics.jsonl, never the weights.
    """
    entries = [_entry(name, "bundled", BUNDLED_DIR / name) for name in bundled_names()]
    if is_model_folder(home.demo_model_dir()):
        entries.append(_entry(DEMO_NAME, "demo", home.demo_model_dir()))
    for run in runs:
        folder = find_run(run)
        entries.append(_entry(folder.name, "run", folder))
    return entries


def run_provenance(folder: Path, cfg: config_lib.Config | None = None) -> str:
    """One line on what a run folder was trained on and its best validation Dice."""
    cfg = cfg or config_lib.load(folder / CONFIG_FILE)
    data = cfg.data.root or f"{cfg.data.phantom_cases} synthetic phantoms"
    text = f"trained on {data}"
    try:
        splits = json.loads((folder / "splits.json").read_text())
        text += f" ({len(splits['train'])} train / {len(splits['val'])} val cases)"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    best = best_validation(folder)
    if best:
        text += f"; best validation Dice {best['val_dice']:.3f} (epoch {best['epoch']})"
    return text


def best_validation(folder: Path) -> dict[str, Any] | None:
    """The metrics.jsonl record with the highest validation Dice, or None."""
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return None
    validated = [r for r in records if isinstance(r, dict) and isinstance(r.get("val_dice"), (int, float))]
    return max(validated, key=lambda r: r["val_dice"]) if validated else None


# --- resolving --checkpoint -------------------------------------------------------------------

def _needs(entry: ModelEntry) -> str:
    return f"{entry.name} needs {', '.join(entry.modalities)} (-> {'/'.join(entry.regions)})"


def resolve_checkpoint(checkpoint: str | Path | None, *, modalities: Iterable[str] | None = None,
                       input_name: str | None = None, say: Callable[[str], None] = lambda m: None) -> Path:
    """The folder :class:`~jaxseg.infer.predict.Predictor` should load for ``--checkpoint``.

    - ``None``: the first bundled model (the default first) whose modalities the input has
      (``modalities``: the input's modality names, any aliases; None = not known, take the
      default). Otherwise one JaxsegError saying which bundled model needs what, and that
      ``--checkpoint demo`` or a run folder work. ``input_name`` names the input in that error.
    - ``"demo"``: the demo model (:func:`jaxseg.home.demo_model_dir`; an error if `jaxseg demo`
      has not saved one).
    - a bundled model's name: that model.
    - anything else is a path: a run folder or a model folder (``find_run``'s rules). A bare
      name (no ``/``, not a ``Path``) that is no existing folder gets an error listing the names.
    ``say`` hears which model was chosen when ``checkpoint`` is None.
    """
    if checkpoint is None:
        return _default_model(modalities, input_name, say)
    text = str(checkpoint)
    if text == DEMO_NAME:
        folder = home.demo_model_dir()
        if not is_model_folder(folder):
            raise JaxsegError(f"--checkpoint demo: no demo model in {folder}; run `jaxseg demo` first "
                              "(it saves its model there; JAXSEG_HOME moves that folder)")
        return folder
    if text in bundled_names():
        return BUNDLED_DIR / text
    path = Path(checkpoint).expanduser()
    looks_like_a_name = not (isinstance(checkpoint, Path) or "/" in text or os.sep in text or text.startswith((".", "~")))
    if not path.exists() and looks_like_a_name:
        bundled = ", ".join(f"{n} (bundled)" for n in bundled_names()) or "no model is bundled"
        raise JaxsegError(f"--checkpoint {text}: no such model or folder; the names are: {DEMO_NAME} "
                          f"(the model of `jaxseg demo`), {bundled}; anything else is a run or model folder")
    return find_run(path)


def _default_model(modalities: Iterable[str] | None, input_name: str | None,
                   say: Callable[[str], None]) -> Path:
    from jaxseg.data import brats
    entries = [_entry(name, "bundled", BUNDLED_DIR / name) for name in bundled_names()]
    alternatives = "pass --checkpoint demo (the phantom model of `jaxseg demo`) or --checkpoint RUN_FOLDER"
    if not entries:
        raise JaxsegError(f"no --checkpoint given and no model is bundled with this installation "
                          f"({BUNDLED_DIR} is empty); {alternatives}")
    # Names that are no modality (a "seg" file) do not count.
    have = None if modalities is None else {brats.MODALITY_ALIASES[m.lower()] for m in modalities
                                            if m.lower() in brats.MODALITY_ALIASES}
    for entry in entries:
        if have is None or set(entry.modalities) <= have:
            say(f"no --checkpoint given: using the bundled model {entry.name} "
                f"({', '.join(entry.modalities)} -> {'/'.join(entry.regions)}; `jaxseg models` describes it)")
            return entry.path
    where = input_name or "the input"
    got = ", ".join(sorted(have)) if have else "no BraTS modalities"
    raise JaxsegError(f"{where}: has {got}; no --checkpoint given and "
                      f"{'; '.join(map(_needs, entries))}; {alternatives}")


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
