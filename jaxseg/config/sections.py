"""The sections of a config: ``[data]`` (with ``[data.augment]``), ``[model]``, ``[train]``, ``[infer]``.

Every field carries its default, its meaning (the comment beside it) and its check; choices are
``Literal`` types. Checks that span fields are validators of the section that holds them (the data
formats' needs in :class:`DataConfig`, a model's needs of the data in its ``check_data``, the loss
against the target in :class:`Config`). The model section's class is chosen by ``model.name``
(:data:`jaxseg.config.model_sections.MODEL_SECTIONS`).
"""
from __future__ import annotations

import math
from dataclasses import field
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Field, model_validator

from jaxseg.config.fields import (Bool, Float, FloatList, Int, IntList, NonNegativeFloat, NonNegativeInt,
                                  PositiveInt, SettingError, Str, StrList, check, interval, section)
from jaxseg.config.model_sections import MODEL_SECTIONS, UNetConfig
from jaxseg.target import TARGET_KINDS

MODALITIES = ("flair", "t1", "t1ce", "t2")
TARGETS = tuple(TARGET_KINDS)  # the target-kind registry (jaxseg/target.py) decides channels and losses

# BraTS 2023 names beside the 2017-2021 ones.
MODALITY_ALIASES = {"flair": "flair", "t2f": "flair", "t1": "t1", "t1n": "t1", "t1ce": "t1ce",
                    "t1c": "t1ce", "t2": "t2", "t2w": "t2"}


def _known_distinct_modalities(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError("must name at least one modality")
    for name in names:
        if name not in MODALITY_ALIASES:
            raise ValueError(f"has unknown modality {name!r} (known: {', '.join(MODALITY_ALIASES)})")
    canonical = [MODALITY_ALIASES[n] for n in names]
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"names a modality twice: {list(names)}")
    return names


def _is_split(ratios: tuple[float, ...]) -> bool:
    return (len(ratios) == 3 and min(ratios) >= 0 and abs(sum(ratios) - 1) <= 1e-6 and ratios[0] > 0)


@section
class AugmentConfig:
    flip: Bool = True  # random left-right and anterior-posterior flips
    rot90: Bool = False  # random multiples of 90 degrees in-plane
    intensity_scale: NonNegativeFloat = 0.0  # multiply each channel by U(1 - s, 1 + s)
    intensity_shift: NonNegativeFloat = 0.0  # add U(-s, s) to each channel


@section
class DataConfig:
    root: Str = ""  # dataset folder; "" = synthetic phantoms written into the workdir
    phantom_cases: PositiveInt = 12
    phantom_shape: Annotated[IntList, check(lambda s: len(s) == 3 and min(s) >= 16,
                                            "must be three sizes of at least 16")] = (96, 96, 64)
    phantom_seed: Int = 0
    # Any subset, in channel order; the 2023 names (t2f, t1n, t1c, t2w) work too.
    modalities: Annotated[StrList, AfterValidator(_known_distinct_modalities)] = MODALITIES
    target: Literal[TARGETS] = "wt"  # wt (binary whole tumor) | regions (WT/TC/ET) | classes (bg/NCR/ED/ET)
    image_size: PositiveInt = 128  # every slice becomes image_size x image_size
    normalize: Literal["zscore_minmax", "slice_zscore", "channel_minmax"] = "zscore_minmax"
    crop: Literal["brain_bbox", "none"] = "brain_bbox"  # in-plane crop before fitting to image_size
    fit: Literal["resize", "crop_pad"] = "resize"  # resize (bilinear images, nearest labels) | crop_pad (centre)
    min_tumor_pixels: NonNegativeInt = 0  # keep a tumor slice only if it has at least this many tumor pixels
    empty_slice_fraction: Annotated[Float, interval("[0, 1]")] = 1.0  # share of tumor-free brain slices kept
    min_tumor_fraction: Annotated[Float, interval("[0, 1)")] = 0.0  # drop training cases with less tumor
    split: Annotated[FloatList, check(_is_split, "must be three non-negative train/val/test ratios summing "
                                      "to 1")] = (0.7, 0.15, 0.15)  # by subject
    split_seed: Int = 0
    val_cases: StrList = ()  # a fixed validation split (overrides the ratios)
    test_cases: StrList = ()
    cache_volumes: PositiveInt = 4  # preprocessed volumes kept per worker
    workers: NonNegativeInt = 0  # grain worker processes (0 = in the main process)
    # 2D sources beside BraTS NIfTI cases: figshare_mat (MATLAB v7.3 `cjdata` slices, split by PID)
    # or image_folder (PNG/TIFF images with `<name><mask_suffix>` masks, as in the LGG set).
    format: Literal["brats", "figshare_mat", "image_folder"] = "brats"
    mask_suffix: Str = "_mask"  # image_folder: the mask of x.png is x_mask.png
    # 3D models train on patches of the brain-box volume (data/patches.py).
    patch_size: PositiveInt = 128  # cube edge in voxels; a multiple of 2**depth of the 3D U-Net
    patch_mode: Literal["center", "tumor"] = "tumor"  # the centre crop | tumor-biased random patches
    tumor_probability: Annotated[Float, interval("[0, 1]")] = 0.67  # tumor mode: share centred on tumor
    samples_per_case: PositiveInt = 4  # patches per training case per epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _two_d_formats(self) -> DataConfig:
        if self.format == "brats":
            return self
        # 2D slices (data/records.py) with binary tumor masks.
        if not TARGET_KINDS[self.target].whole_tumor_only:
            wt_only = " or ".join(f'"{k.name}"' for k in TARGET_KINDS.values() if k.whole_tumor_only)
            raise SettingError("target", f"must be {wt_only} for data.format = {self.format!r}: its masks are "
                               f"binary tumor masks, with no sub-regions; got {self.target!r}")
        if self.format == "figshare_mat" and len(self.modalities) != 1:
            raise SettingError("modalities", "figshare_mat slices have one channel (T1 contrast-enhanced): list "
                               f"one modality, e.g. [\"t1ce\"]; got {list(self.modalities)}")
        if not self.mask_suffix:
            raise SettingError("mask_suffix", "must not be empty (the mask of x.png is x<mask_suffix>.png)")
        if self.min_tumor_fraction > 0:
            raise SettingError("min_tumor_fraction", "filters volumes; for 2D slices use data.min_tumor_pixels "
                               "and data.empty_slice_fraction")
        return self


@section
class InferConfig:
    """Whole-volume inference of 3D models (sliding windows) and test-time augmentation."""
    overlap: Annotated[Float, interval("[0, 1)")] = 0.5  # share of a window's edge overlapping its neighbour
    blend: Literal["gaussian", "constant"] = "gaussian"  # gaussian: centre-weighted, sigma = window / 8
    window_batch: PositiveInt = 2  # windows per forward pass
    tta_flips: Bool = False  # average the probabilities over flips of every in-plane (2D) or spatial (3D) axis


@section
class TrainConfig:
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 4  # global, over all devices and hosts
    steps_per_epoch: NonNegativeInt = 0  # 0 = one pass over the training slices
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: Annotated[Float, check(lambda lr: lr > 0, "must be positive")] = 1e-3
    weight_decay: NonNegativeFloat = 1e-4  # adamw only
    schedule: Literal["constant", "warmup_cosine", "plateau"] = "constant"  # plateau: on validation Dice
    warmup_steps: NonNegativeInt = 0
    plateau_patience: NonNegativeInt = 2
    plateau_factor: Annotated[Float, interval("(0, 1)")] = 0.5
    clip_norm: NonNegativeFloat = 0.0  # global-norm gradient clipping; 0 = off
    loss: Literal["bce", "dice", "bce_dice", "dice_focal", "ce_dice"] = "bce_dice"
    # The compute dtype of the model (training and, unless the predictor is told otherwise,
    # inference): bfloat16 halves activation memory; parameters, optimizer state, gradients'
    # accumulation and the loss stay float32. Replaces `bf16 = true` (still read: load.py).
    precision: Literal["float32", "bfloat16"] = "float32"
    seed: Annotated[Int, check(lambda s: 0 <= s < 2 ** 32, "must be in [0, 2**32) (it seeds the data order)")] = 0
    save_every_steps: NonNegativeInt = 0  # also checkpoint every N steps; 0 = only at the end of each epoch
    keep_checkpoints: PositiveInt = 2
    val_every_epochs: PositiveInt = 1
    # After the last epoch, fit one temperature per region on the validation cases and write
    # <run>/calibration.json, which predict/explain/serve then apply (docs/calibration.md).
    calibrate: Bool = False
    # Minutes of wall-clock time: epochs and the schedule are fitted to them (jaxseg/train/budget.py),
    # train.epochs is then ignored; 0 = no budget.
    budget_minutes: Annotated[Float, check(lambda m: m == 0 or (m > 0 and math.isfinite(m)),
                                           "must be a positive number of minutes (or 0 for no budget)")] = 0.0


# The [model] table: the class its `name` chooses.
ModelSection = Annotated[Union[tuple(MODEL_SECTIONS.values())], Field(discriminator="name")]


@section
class Config:
    name: Str = "unnamed"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    @property
    def out_channels(self) -> int:
        return TARGET_KINDS[self.data.target].channels

    @property
    def in_channels(self) -> int:
        return len(self.data.modalities)

    @model_validator(mode="after")
    def _sections_agree(self) -> Config:
        self.model.check_data(self.data)
        kind = TARGET_KINDS[self.data.target]
        if not kind.accepts_loss(self.train.loss):
            if kind.activation == "softmax":
                raise SettingError("train.loss", f"data.target = \"{kind.name}\" is softmax and needs loss "
                                   f"{kind.default_loss}; got {self.train.loss}")
            softmax_kinds = " or ".join(f'"{k.name}"' for k in TARGET_KINDS.values() if k.activation == "softmax")
            raise SettingError("train.loss", f"ce_dice (softmax) needs data.target = {softmax_kinds}")
        return self


def canonical_modalities(cfg: Config) -> tuple[str, ...]:
    """The configured modalities under their 2017-2021 names (flair, t1, t1ce, t2)."""
    return tuple(MODALITY_ALIASES[m] for m in cfg.data.modalities)
