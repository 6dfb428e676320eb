"""Typed, frozen experiment configuration.

A config is a TOML file with the sections ``[data]``, ``[data.augment]``, ``[model]`` and
``[train]`` (see ``configs/``). :func:`load` reads one, applies ``--set key=value`` overrides,
checks every value and returns a :class:`Config`. :func:`dumps` writes the resolved config back
as TOML; the training loop saves it next to every run so a run can always be repeated.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import importlib.resources
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxseg.errors import JaxsegError
from jaxseg.target import TARGET_KINDS

MODALITIES = ("flair", "t1", "t1ce", "t2")
TARGETS = tuple(TARGET_KINDS)  # the target-kind registry (jaxseg/target.py)


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True  # random left-right and anterior-posterior flips
    rot90: bool = False  # random multiples of 90 degrees in-plane
    intensity_scale: float = 0.0  # multiply each channel by U(1 - s, 1 + s)
    intensity_shift: float = 0.0  # add U(-s, s) to each channel


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # dataset folder; "" = synthetic phantoms written into the workdir
    phantom_cases: int = 12
    phantom_shape: tuple[int, ...] = (96, 96, 64)
    phantom_seed: int = 0
    modalities: tuple[str, ...] = MODALITIES  # any subset; 2023 names (t2f, t1n, t1c, t2w) work too
    target: str = "wt"  # wt (binary whole tumor) | regions (WT/TC/ET) | classes (bg/NCR/ED/ET)
    image_size: int = 128  # every slice becomes image_size x image_size
    normalize: str = "zscore_minmax"  # zscore_minmax | slice_zscore | channel_minmax
    crop: str = "brain_bbox"  # brain_bbox | none (in-plane crop before fitting to image_size)
    fit: str = "resize"  # resize (bilinear images, nearest labels) | crop_pad (centre)
    min_tumor_pixels: int = 0  # keep a tumor slice only if it has at least this many tumor pixels
    empty_slice_fraction: float = 1.0  # share of brain slices without tumor to keep in training
    min_tumor_fraction: float = 0.0  # drop training cases whose tumor fraction is below this
    split: tuple[float, ...] = (0.7, 0.15, 0.15)  # train / val / test, by subject
    split_seed: int = 0
    val_cases: tuple[str, ...] = ()  # a fixed validation split (overrides the ratios)
    test_cases: tuple[str, ...] = ()
    cache_volumes: int = 4  # preprocessed volumes kept per worker
    workers: int = 0  # grain worker processes (0 = in the main process)
    # 2D sources beside BraTS NIfTI cases: figshare_mat (MATLAB v7.3 `cjdata` slices, split by PID)
    # or image_folder (PNG/TIFF images with `<name><mask_suffix>` masks, as in the LGG set).
    format: str = "brats"  # brats | figshare_mat | image_folder
    mask_suffix: str = "_mask"  # image_folder: the mask of x.png is x_mask.png
    # 3D models train on patches of the brain-box volume (data/patches.py).
    patch_size: int = 128  # cube edge in voxels; a multiple of 2**depth of the 3D U-Net
    patch_mode: str = "tumor"  # center (the centre crop) | tumor (tumor-biased random patches)
    tumor_probability: float = 0.67  # tumor mode: share of patches centred on a tumor voxel
    samples_per_case: int = 4  # patches per training case per epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "unet"  # unet | attention_unet | resunet34 | transunet | unet3d
    # U-Net family: channels per level, len = depth + 1. resunet34: the encoder's widths
    # (stem, stage 1..4), five entries; ResNet-34 is [64, 64, 128, 256, 512].
    features: tuple[int, ...] = (32, 64, 128, 256, 512)
    dropout: float = 0.0  # before the bottleneck's second conv and in each decoder block
    encoder_depths: tuple[int, ...] = (3, 4, 6, 3)  # resunet34: residual blocks per stage
    decoder_features: tuple[int, ...] = (256, 128, 64, 32, 16)  # resunet34: decoder block widths
    input_mode: str = "channels"  # resunet34: channels (any count) | pseudo_rgb (1 channel copied 3x)
    # Start training from these weights instead of a random initialisation: a run folder (e.g. made
    # by `jaxseg import-weights`) or a PyTorch .pth/.safetensors file (resunet34). "" = none.
    pretrained: str = ""
    transformer_layers: int = 4  # transunet: encoder blocks on the bottleneck tokens
    transformer_heads: int = 8
    transformer_dim: int = 256  # token width
    transformer_mlp_dim: int = 1024


@dataclass(frozen=True)
class InferConfig:
    """Whole-volume inference of 3D models (sliding windows) and test-time augmentation."""
    overlap: float = 0.5  # share of a window's edge overlapping its neighbour, in [0, 1)
    blend: str = "gaussian"  # gaussian (centre-weighted, sigma = window / 8) | constant
    window_batch: int = 2  # windows per forward pass
    tta_flips: bool = False  # average the probabilities over flips of every in-plane (2D) or spatial (3D) axis


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 4  # global, over all devices and hosts
    steps_per_epoch: int = 0  # 0 = one pass over the training slices
    optimizer: str = "adam"  # adam | adamw
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4  # adamw only
    schedule: str = "constant"  # constant | warmup_cosine | plateau (on validation Dice)
    warmup_steps: int = 0
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    clip_norm: float = 0.0  # global-norm gradient clipping; 0 = off
    loss: str = "bce_dice"  # bce | dice | bce_dice | dice_focal | ce_dice
    bf16: bool = False  # compute in bfloat16, keep parameters and the loss in float32
    seed: int = 0
    save_every_steps: int = 0  # also checkpoint every N steps; 0 = only at the end of each epoch
    keep_checkpoints: int = 2
    val_every_epochs: int = 1
    # Minutes of wall-clock time: epochs and the schedule are fitted to them (jaxseg/train/budget.py),
    # train.epochs is then ignored; 0 = no budget.
    budget_minutes: float = 0.0


@dataclass(frozen=True)
class Config:
    name: str = "unnamed"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    @property
    def out_channels(self) -> int:
        return TARGET_KINDS[self.data.target].channels

    @property
    def in_channels(self) -> int:
        return len(self.data.modalities)


_CHOICES = {
    ("data", "target"): TARGETS,
    ("data", "normalize"): ("zscore_minmax", "slice_zscore", "channel_minmax"),
    ("data", "crop"): ("brain_bbox", "none"),
    ("data", "fit"): ("resize", "crop_pad"),
    ("data", "format"): ("brats", "figshare_mat", "image_folder"),
    ("data", "patch_mode"): ("center", "tumor"),
    ("model", "name"): ("unet", "attention_unet", "resunet34", "transunet", "unet3d"),
    ("model", "input_mode"): ("channels", "pseudo_rgb"),
    ("infer", "blend"): ("gaussian", "constant"),
    ("train", "optimizer"): ("adam", "adamw"),
    ("train", "schedule"): ("constant", "warmup_cosine", "plateau"),
    ("train", "loss"): ("bce", "dice", "bce_dice", "dice_focal", "ce_dice"),
}

_MODALITY_ALIASES = {"flair": "flair", "t2f": "flair", "t1": "t1", "t1n": "t1", "t1ce": "t1ce",
                     "t1c": "t1ce", "t2": "t2", "t2w": "t2"}


def shipped_configs() -> dict[str, Path]:
    """The configs installed with jaxseg (the repository's ``configs/``, the package
    ``jaxseg.configs``): name -> file, sorted by name."""
    folder = importlib.resources.files("jaxseg.configs")
    return {f.name[:-len(".toml")]: Path(str(f)) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".toml")}


def resolve_path(name: str | Path) -> Path:
    """Find a config: a path to a TOML file (``.toml`` may be left off), else a shipped config by
    name (``demo``, ``demo.toml`` or ``configs/demo``), wherever the current folder is."""
    p = Path(name)
    for candidate in (p, p.with_name(p.name + ".toml")):
        if candidate.is_file():
            return candidate
    shipped = shipped_configs()
    stem = p.name[:-len(".toml")] if p.name.endswith(".toml") else p.name
    if (p.parent == Path(".") or p.parent == Path("configs")) and stem in shipped:
        return shipped[stem]
    raise JaxsegError(f"{name}: no such config file, and no shipped config of that name "
                      f"(shipped: {', '.join(shipped)}; or give the path of a .toml file)")


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a TOML config, apply ``key=value`` overrides (``train.epochs=3``) and validate it.

    ``path=None`` gives the defaults. Raises :class:`JaxsegError` naming the file and the setting
    for unknown keys, wrong types and out-of-range values.
    """
    source = "defaults"
    raw: dict[str, Any] = {}
    if path is not None:
        file = resolve_path(path)
        source = str(file)
        try:
            raw = tomllib.loads(file.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise JaxsegError(f"{file}: cannot read config ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise JaxsegError(f"{file}: not valid TOML ({e})") from None
        raw.setdefault("name", file.stem)
    return load_from_dict(raw, overrides, source)


def load_from_dict(raw: dict[str, Any], overrides: typing.Sequence[str] = (), source: str = "config"
                   ) -> Config:
    """Build and validate a config from a nested dict plus ``key=value`` overrides."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise JaxsegError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare word such as adamw
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise JaxsegError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = parsed
    cfg = _build(Config, raw, source, ())
    _validate(cfg, source)
    return cfg


def _build(cls: type, raw: dict[str, Any], source: str, prefix: tuple[str, ...]) -> Any:
    if not isinstance(raw, dict):
        raise JaxsegError(f"{source}: [{'.'.join(prefix)}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        where = ".".join(prefix + (key,))
        if key not in fields:
            known = ", ".join(sorted(fields))
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean {'.'.join(prefix + (close[0],))!r}? " if close else ""
            raise JaxsegError(f"{source}: unknown setting {where!r} ({hint}known here: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, source, prefix + (key,))
        else:
            kwargs[key] = _coerce(hint, value, source, where)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, source: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise JaxsegError(f"{source}: {where} must be a list, got {value!r}")
        return tuple(_coerce(item_type, v, source, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise JaxsegError(f"{source}: {where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise JaxsegError(f"{source}: {where} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise JaxsegError(f"{source}: {where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise JaxsegError(f"{source}: {where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} at {where}")  # a bug in this file, not user input


def _validate(cfg: Config, source: str) -> None:
    def bad(where: str, problem: str) -> JaxsegError:
        return JaxsegError(f"{source}: {where} {problem}")

    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise bad(f"{section}.{key}", f"must be one of {', '.join(choices)}; got {value!r}")
    d, m, t = cfg.data, cfg.model, cfg.train
    if not d.modalities:
        raise bad("data.modalities", "must name at least one modality")
    for mod in d.modalities:
        if mod not in _MODALITY_ALIASES:
            raise bad("data.modalities", f"has unknown modality {mod!r} (known: {', '.join(_MODALITY_ALIASES)})")
    canonical = [_MODALITY_ALIASES[x] for x in d.modalities]
    if len(set(canonical)) != len(canonical):
        raise bad("data.modalities", f"names a modality twice: {d.modalities}")
    if m.name == "resunet34":
        if len(m.features) != 5 or len(m.encoder_depths) != 4 or len(m.decoder_features) != 5:
            raise bad("model", "resunet34 needs five features (stem, stages 1-4), four encoder_depths "
                      f"and five decoder_features; got {m.features}, {m.encoder_depths}, {m.decoder_features}")
        if min(m.encoder_depths) < 1 or min(m.decoder_features) < 1:
            raise bad("model", "resunet34 encoder_depths and decoder_features must be positive")
        if d.image_size < 32:
            raise bad("data.image_size", f"must be at least 32 for resunet34 (five stride-2 stages); got {d.image_size}")
    elif d.image_size < 16 or d.image_size % 2 ** (len(m.features) - 1):
        raise bad("data.image_size", f"must be at least 16 and divisible by {2 ** (len(m.features) - 1)} "
                  f"(the U-Net halves it {len(m.features) - 1} times); got {d.image_size}")
    if m.input_mode == "pseudo_rgb" and len(d.modalities) != 1:
        raise bad("model.input_mode", f"pseudo_rgb copies one channel three times; data.modalities has {len(d.modalities)}")
    if m.name == "unet3d" and (d.patch_size < 8 or d.patch_size % 2 ** (len(m.features) - 1)):
        raise bad("data.patch_size", f"must be divisible by {2 ** (len(m.features) - 1)} (the 3D U-Net halves "
                  f"it {len(m.features) - 1} times); got {d.patch_size}")
    if d.format != "brats":  # 2D slices (data/records.py) with binary tumor masks
        if not TARGET_KINDS[d.target].whole_tumor_only:
            wt_only = ", ".join(f'"{k.name}"' for k in TARGET_KINDS.values() if k.whole_tumor_only)
            raise bad("data.target", f"must be {wt_only} for data.format = {d.format!r}: its masks are binary "
                      f"tumor masks, with no sub-regions; got {d.target!r}")
        if m.name == "unet3d":
            raise bad("model.name", f"unet3d needs volumes; data.format = {d.format!r} gives 2D slices")
        if d.format == "figshare_mat" and len(d.modalities) != 1:
            raise bad("data.modalities", f"figshare_mat slices have one channel (T1 contrast-enhanced): list one "
                      f"modality, e.g. [\"t1ce\"]; got {list(d.modalities)}")
        if not d.mask_suffix:
            raise bad("data.mask_suffix", "must not be empty (the mask of x.png is x<mask_suffix>.png)")
        if d.min_tumor_fraction > 0:
            raise bad("data.min_tumor_fraction", "filters volumes; for 2D slices use data.min_tumor_pixels "
                      "and data.empty_slice_fraction")
    if not 0 <= d.tumor_probability <= 1:
        raise bad("data.tumor_probability", f"must be in [0, 1]; got {d.tumor_probability}")
    if d.samples_per_case < 1:
        raise bad("data.samples_per_case", f"must be at least 1; got {d.samples_per_case}")
    if m.name == "transunet":
        for key in ("transformer_layers", "transformer_heads", "transformer_dim", "transformer_mlp_dim"):
            if getattr(m, key) < 1:
                raise bad(f"model.{key}", f"must be at least 1; got {getattr(m, key)}")
        if m.transformer_dim % m.transformer_heads:
            raise bad("model.transformer_dim", f"must be divisible by transformer_heads ({m.transformer_heads}); "
                      f"got {m.transformer_dim}")
    i = cfg.infer
    if not 0 <= i.overlap < 1:
        raise bad("infer.overlap", f"must be in [0, 1); got {i.overlap}")
    if i.window_batch < 1:
        raise bad("infer.window_batch", f"must be at least 1; got {i.window_batch}")
    if len(d.split) != 3 or any(x < 0 for x in d.split) or abs(sum(d.split) - 1) > 1e-6 or d.split[0] <= 0:
        raise bad("data.split", f"must be three non-negative train/val/test ratios summing to 1; got {d.split}")
    if len(d.phantom_shape) != 3 or min(d.phantom_shape) < 16:
        raise bad("data.phantom_shape", f"must be three sizes of at least 16; got {d.phantom_shape}")
    if not 0 <= d.empty_slice_fraction <= 1:
        raise bad("data.empty_slice_fraction", f"must be in [0, 1]; got {d.empty_slice_fraction}")
    if not 0 <= d.min_tumor_fraction < 1:
        raise bad("data.min_tumor_fraction", f"must be in [0, 1); got {d.min_tumor_fraction}")
    for key in ("phantom_cases", "cache_volumes"):
        if getattr(d, key) < 1:
            raise bad(f"data.{key}", f"must be at least 1; got {getattr(d, key)}")
    for key in ("workers", "min_tumor_pixels"):
        if getattr(d, key) < 0:
            raise bad(f"data.{key}", f"must not be negative; got {getattr(d, key)}")
    if len(m.features) < 2 or any(f < 1 for f in m.features):
        raise bad("model.features", f"must list at least two positive channel counts; got {m.features}")
    if not 0 <= m.dropout < 1:
        raise bad("model.dropout", f"must be in [0, 1); got {m.dropout}")
    kind = TARGET_KINDS[d.target]
    if not kind.accepts_loss(t.loss):
        if kind.activation == "softmax":
            raise bad("train.loss", f"data.target = \"{d.target}\" is softmax and needs loss {kind.default_loss}; "
                      f"got {t.loss}")
        softmax_kinds = " or ".join(f'"{k.name}"' for k in TARGET_KINDS.values() if k.activation == "softmax")
        raise bad("train.loss", f"ce_dice (softmax) needs data.target = {softmax_kinds}")
    for key in ("epochs", "batch_size", "keep_checkpoints", "val_every_epochs"):
        if getattr(t, key) < 1:
            raise bad(f"train.{key}", f"must be at least 1; got {getattr(t, key)}")
    for key in ("steps_per_epoch", "warmup_steps", "save_every_steps", "plateau_patience"):
        if getattr(t, key) < 0:
            raise bad(f"train.{key}", f"must not be negative; got {getattr(t, key)}")
    if not (t.budget_minutes == 0 or (t.budget_minutes > 0 and math.isfinite(t.budget_minutes))):
        raise bad("train.budget_minutes", f"must be a positive number of minutes (or 0 for no budget); "
                                          f"got {t.budget_minutes}")
    if not t.learning_rate > 0:
        raise bad("train.learning_rate", f"must be positive; got {t.learning_rate}")
    if t.weight_decay < 0 or t.clip_norm < 0:
        raise bad("train.weight_decay/clip_norm", "must not be negative")
    if not 0 < t.plateau_factor < 1:
        raise bad("train.plateau_factor", f"must be in (0, 1); got {t.plateau_factor}")


# Every config has a smoke size (CONTRIBUTING.md, habit 7): the same code path at toy sizes, so tests
# and `jaxseg demo --smoke` run any config in seconds. Real-data configs keep their data.root.
SMOKE_OVERRIDES = (
    "data.image_size=32", "data.phantom_cases=4", "data.phantom_shape=[32, 32, 20]",
    "data.cache_volumes=2", "model.features=[4, 8]", "train.epochs=1", "train.steps_per_epoch=2",
    "train.batch_size=4", "train.warmup_steps=0",
)


# What each model needs beyond SMOKE_OVERRIDES to be tiny.
SMOKE_MODEL_OVERRIDES = {
    "resunet34": ("model.features=[4, 4, 8, 8, 16]", "model.encoder_depths=[1, 1, 1, 1]",
                  "model.decoder_features=[8, 8, 4, 4, 4]"),
    "transunet": ("model.transformer_layers=1", "model.transformer_heads=2", "model.transformer_dim=16",
                  "model.transformer_mlp_dim=32"),
    "unet3d": ("data.patch_size=16", "data.samples_per_case=1", "train.batch_size=2"),
}


def smoke_overrides(model_name: str = "unet") -> tuple[str, ...]:
    """The ``key=value`` overrides that make a config of ``model_name`` smoke-sized."""
    return SMOKE_OVERRIDES + SMOKE_MODEL_OVERRIDES.get(model_name, ())


def smoke(cfg: Config) -> Config:
    """``cfg`` at smoke size."""
    return load_from_dict(to_dict(cfg), smoke_overrides(cfg.model.name))


def canonical_modalities(cfg: Config) -> tuple[str, ...]:
    """The configured modalities under their 2017-2021 names (flair, t1, t1ce, t2)."""
    return tuple(_MODALITY_ALIASES[m] for m in cfg.data.modalities)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dumps(cfg: Config) -> str:
    """The config as TOML that :func:`load` reads back to an equal config."""
    raw = to_dict(cfg)
    lines = [f"name = {_toml_value(raw.pop('name'))}"]

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"\n[{name}]")
        subtables = {k: v for k, v in body.items() if isinstance(v, dict)}
        for k, v in body.items():
            if k not in subtables:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subtables.items():
            table(f"{name}.{k}", v)

    for section in ("data", "model", "train", "infer"):
        table(section, raw[section])
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


