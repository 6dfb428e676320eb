"""Weights from elsewhere: PyTorch files made into run folders, and training that starts from them.

``import_weights`` (the ``jaxseg import-weights`` command) converts a PyTorch state dict
(:mod:`jaxseg.models.torch_import`) into a run folder, ``config.toml`` plus ``best/0`` holding
parameters and batch statistics, which ``predict --checkpoint`` and ``explain --checkpoint``
read like any trained run. ``model.pretrained`` (a run folder or a weights file) makes the
training loop start from those weights: :func:`apply_pretrained` replaces the freshly
initialised parameters and statistics of a new run (a resumed run restores its own instead).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg import config as config_lib
from jaxseg import target as target_lib
from jaxseg.config import Config
from jaxseg.errors import JaxsegError
from jaxseg.files import write_text
from jaxseg.models import torch_import
from jaxseg.models.registry import build_model
from jaxseg.train.checkpoint import load_model_state, load_run_config, save_model
from jaxseg.train.state import TrainState, abstract_state, create_state, graphdef_of, make_optimizer

# The architectures `import-weights` knows, with the settings of their PyTorch originals.
ARCHES = {"resunet34": ("model.name=resunet34", "model.features=[64, 64, 128, 256, 512]",
                        "model.encoder_depths=[3, 4, 6, 3]", "model.decoder_features=[256, 128, 64, 32, 16]")}


@dataclasses.dataclass
class ImportResult:
    run: Path
    layout: str  # smp (the whole model) or torchvision (the encoder)
    cfg: Config
    config_note: str  # how the config was chosen


def load_weights(cfg: Config, params: Any, batch_stats: Any, weights: str | Path) -> tuple[Any, Any, str]:
    """``params``/``batch_stats`` (of ``cfg``'s model) with the tensors of a PyTorch file put in.

    Returns host (numpy) trees of the same structure and the file's layout. Raises
    :class:`JaxsegError` if the file does not fit ``cfg``'s model.
    """
    if cfg.model.name != "resunet34":
        raise JaxsegError(f"{weights}: PyTorch weights load into resunet34 models only; the config has "
                          f"model.name = {cfg.model.name!r}")
    tensors = torch_import.read_state_dict(weights)
    model = nnx.merge(graphdef_of(cfg), jax.device_get(params), jax.device_get(batch_stats))
    layout = torch_import.load_into(model, tensors, str(weights))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return params, batch_stats, layout


def _infer_config(weights: Path, arch: str, overrides: Sequence[str]) -> tuple[Config, str]:
    """A config for a weights file given without ``--config``: the architecture's defaults, the
    stem's channel count (3: one modality as pseudo-RGB, 4: the four BraTS modalities, else
    that many) and the head's classes (1 wt, 3 regions, 4 classes)."""
    tensors = torch_import.read_state_dict(weights)
    layout = torch_import.detect_layout(tensors, str(weights))
    prefix = "encoder." if layout == "smp" else ""
    stem = tensors[f"{prefix}conv1.weight"].shape[1]
    chosen = list(ARCHES[arch])
    if stem == 3:
        chosen += ['data.modalities=["flair"]', "model.input_mode=pseudo_rgb"]
    elif stem <= 4:
        chosen.append(f"data.modalities={list(config_lib.MODALITIES[:stem])}".replace("'", '"'))
    else:
        raise JaxsegError(f"{weights}: its stem reads {stem} channels; pass a --config whose data.modalities match")
    head = tensors.get("segmentation_head.0.weight")
    classes = 1 if head is None else head.shape[0]
    try:
        kind = target_lib.target_for_channels(classes)
    except ValueError:
        known = ", ".join(f"{k.channels} ({k.name})" for k in target_lib.TARGET_KINDS.values())
        raise JaxsegError(f"{weights}: its head predicts {classes} channels; jaxseg targets have {known}") from None
    target = kind.name
    chosen += [f"data.target={target}", f"train.loss={kind.default_loss}"]
    cfg = config_lib.load_from_dict({"name": f"{arch}_imported"}, [*chosen, *overrides], "import-weights")
    note = (f"no --config: {arch} at ResNet-34 size, modalities {list(cfg.data.modalities)} "
            f"({cfg.model.input_mode}), target {target}")
    return cfg, note


def import_weights(weights: str | Path, out: str | Path, *, arch: str = "resunet34", config: str | None = None,
                   overrides: Sequence[str] = ()) -> ImportResult:
    """Convert a PyTorch state dict into the run folder ``out`` (``config.toml`` + ``best/0``).

    ``config`` gives the data and model settings (its model must be ``arch``); without it they are
    read off the file (see :func:`_infer_config`). Parts the file does not hold (decoder and head
    of a torchvision encoder) are initialised as training would with ``train.seed``.
    """
    weights, out = Path(weights), Path(out)
    if arch not in ARCHES:
        raise JaxsegError(f"--arch {arch}: unknown (known: {', '.join(ARCHES)})")
    if not weights.is_file():
        raise JaxsegError(f"{weights}: no such file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JaxsegError(f"{out}: exists and is not empty; choose a new --out")
    if config is None:
        cfg, note = _infer_config(weights, arch, overrides)
    else:
        cfg = config_lib.load(config, overrides)
        note = f"config {config}"
        if cfg.model.name != arch:
            raise JaxsegError(f"{config}: model.name is {cfg.model.name!r}, but --arch is {arch}")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=""))
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    state = create_state(cfg, make_optimizer(cfg, 1), mesh)
    params, batch_stats, layout = load_weights(cfg, state.params, state.batch_stats, weights)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"epoch": 0, "step_in_epoch": 0, "best_dice": -1.0, "plateau_bad_epochs": 0, "history": [],
            "imported_from": str(weights.absolute()), "layout": layout}
    save_model(out, params, batch_stats, meta)
    write_text(out / "config.toml", config_lib.dumps(cfg))
    return ImportResult(out.absolute(), layout, cfg, note)


def _replicate(tree: Any, mesh: Mesh) -> Any:
    # Every process holds the same host arrays; building the global array from callbacks works on
    # one host and on many (device_put of host data to non-addressable devices does not).
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                                               lambda index: np.asarray(x)[index]), tree)


def _shapes(cfg: Config) -> dict[str, tuple]:
    params = nnx.state(nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0))), nnx.Param)
    return {jax.tree_util.keystr(path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def apply_pretrained(cfg: Config, state: TrainState, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """``state`` (a fresh run's) with parameters and batch statistics from ``cfg.model.pretrained``,
    and a new optimizer state for them. Step, key and learning-rate scale are kept."""
    source = Path(cfg.model.pretrained)
    if source.is_dir():
        theirs = load_run_config(source)
        ours, their_shapes = _shapes(cfg), _shapes(theirs)
        for name in sorted(set(ours) | set(their_shapes)):
            if ours.get(name) != their_shapes.get(name):
                raise JaxsegError(f"{source}: model.pretrained does not fit this config's model: parameter "
                                  f"{name} is {their_shapes.get(name)} there and {ours.get(name)} here")
        params, batch_stats, _ = load_model_state(source, abstract_state(cfg, tx, mesh))
        params, batch_stats = jax.device_get(params), jax.device_get(batch_stats)
    elif source.is_file():
        params, batch_stats, _ = load_weights(cfg, state.params, state.batch_stats, source)
    else:
        raise JaxsegError(f"{source}: model.pretrained is neither a run folder nor a weights file")
    params, batch_stats = _replicate(params, mesh), _replicate(batch_stats, mesh)
    opt_state = jax.jit(tx.init, out_shardings=NamedSharding(mesh, P()))(params)
    return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
