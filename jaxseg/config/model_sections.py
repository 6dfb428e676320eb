"""The ``[model]`` section: one class per model, chosen by ``model.name``.

Each class holds the settings its network reads (``jaxseg/models/registry.py`` builds the network
from it) and nothing else: ``model.transformer_heads`` exists for ``transunet`` only. Every model
has ``name``, ``features``, ``dropout`` and ``pretrained``. A class also says

- ``spatial_dims``: 2 (slices ``(B, H, W, C)``) or 3 (volumes ``(B, X, Y, Z, C)``);
- ``smoke_overrides``: the ``--set`` items beyond ``config.SMOKE_OVERRIDES`` that make it tiny;
- ``check_data(data)``: what it needs of the ``[data]`` section (slice size, patch size, format).

Adding a model: a class here, its entry in :data:`MODEL_SECTIONS`, and its builder under the same
name in ``jaxseg/models/registry.py`` (a test checks the two registries name the same models).
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import model_validator

from jaxseg.config.fields import (Float, IntList, NonNegativeInt, PositiveInt, SettingError, Str, check, interval,
                                  section)

# check_data receives the [data] section (sections.DataConfig), typed Any here: sections.py
# imports this module, and this module does not import it back.
DataSection = Any


def _positive_list(values: tuple[int, ...]) -> bool:
    return all(v >= 1 for v in values)


@section
class ModelConfig:
    """What every model has; a model's own class adds its settings and checks."""
    name: Str = "unet"
    # U-Net family: channels per level, len = depth + 1. resunet34: the encoder's widths
    # (stem, stage 1..4), five entries; ResNet-34 is [64, 64, 128, 256, 512].
    features: Annotated[IntList, check(lambda f: len(f) >= 2 and _positive_list(f),
                                       "must list at least two positive channel counts")] = (32, 64, 128, 256, 512)
    dropout: Annotated[Float, interval("[0, 1)")] = 0.0  # before the bottleneck's second conv and in each decoder block
    # Start training from these weights instead of a random initialisation: a run folder (e.g. made
    # by `jaxseg import-weights`) or a PyTorch .pth/.safetensors file (resunet34). "" = none.
    pretrained: Str = ""

    spatial_dims: ClassVar[int] = 2
    smoke_overrides: ClassVar[tuple[str, ...]] = ()

    def check_data(self, data: DataSection) -> None:
        """Raise :class:`SettingError` (setting dotted from the top) if ``data`` does not suit this model."""


@section
class _UNetFamilyConfig(ModelConfig):
    """Models that halve the slice once per level below the first (len(features) - 1 times)."""

    def check_data(self, data: DataSection) -> None:
        halvings = len(self.features) - 1
        if data.image_size < 16 or data.image_size % 2 ** halvings:
            raise SettingError("data.image_size", f"must be at least 16 and divisible by {2 ** halvings} "
                               f"(the U-Net halves it {halvings} times); got {data.image_size}")


def _check_deep_supervision(levels: int, features: tuple[int, ...]) -> None:
    """Auxiliary heads fit on decoder levels 1 .. depth - 1 (level 0 is the main head's)."""
    depth = len(features) - 1
    if levels > depth - 1:
        raise SettingError("deep_supervision", f"must be at most {depth - 1} (decoder levels 1 .. {depth - 1} "
                           f"of features {list(features)}); got {levels}")


@section
class UNetConfig(_UNetFamilyConfig):
    name: Literal["unet"] = "unet"
    # Deep supervision: 1x1 heads on decoder levels 1 .. N add their losses (at 1/2 .. 1/2**N of
    # the size, weights 1/2**level, normalised) in training only; 0 = off. docs/models.md.
    deep_supervision: NonNegativeInt = 0

    # The smoke size has one decoder level below the top, none for an auxiliary head.
    smoke_overrides: ClassVar[tuple[str, ...]] = ("model.deep_supervision=0",)

    @model_validator(mode="after")
    def _deep_supervision_fits(self) -> UNetConfig:
        _check_deep_supervision(self.deep_supervision, self.features)
        return self


@section
class AttentionUNetConfig(_UNetFamilyConfig):
    name: Literal["attention_unet"] = "attention_unet"


@section
class TransUNetConfig(_UNetFamilyConfig):
    name: Literal["transunet"] = "transunet"
    transformer_layers: PositiveInt = 4  # encoder blocks on the bottleneck tokens
    transformer_heads: PositiveInt = 8
    transformer_dim: PositiveInt = 256  # token width
    transformer_mlp_dim: PositiveInt = 1024

    smoke_overrides: ClassVar[tuple[str, ...]] = (
        "model.transformer_layers=1", "model.transformer_heads=2", "model.transformer_dim=16",
        "model.transformer_mlp_dim=32")

    @model_validator(mode="after")
    def _heads_split_the_tokens(self) -> TransUNetConfig:
        if self.transformer_dim % self.transformer_heads:
            raise SettingError("transformer_heads", f"must divide transformer_dim ({self.transformer_dim}); "
                               f"got {self.transformer_heads}")
        return self


@section
class ResUNet34Config(ModelConfig):
    name: Literal["resunet34"] = "resunet34"
    features: Annotated[IntList, check(lambda f: len(f) == 5 and _positive_list(f),
                                       "must list five positive widths for resunet34 (stem, stages 1-4)")
                        ] = (32, 64, 128, 256, 512)
    encoder_depths: Annotated[IntList, check(lambda d: len(d) == 4 and _positive_list(d),
                                             "must list four positive residual-block counts (stages 1-4)")
                              ] = (3, 4, 6, 3)
    decoder_features: Annotated[IntList, check(lambda d: len(d) == 5 and _positive_list(d),
                                               "must list five positive decoder block widths")
                                ] = (256, 128, 64, 32, 16)
    input_mode: Literal["channels", "pseudo_rgb"] = "channels"  # pseudo_rgb: 1 channel copied 3x

    smoke_overrides: ClassVar[tuple[str, ...]] = (
        "model.features=[4, 4, 8, 8, 16]", "model.encoder_depths=[1, 1, 1, 1]",
        "model.decoder_features=[8, 8, 4, 4, 4]")

    def check_data(self, data: DataSection) -> None:
        if data.image_size < 32:
            raise SettingError("data.image_size", "must be at least 32 for resunet34 (five stride-2 stages); "
                               f"got {data.image_size}")
        if self.input_mode == "pseudo_rgb" and len(data.modalities) != 1:
            raise SettingError("model.input_mode", "pseudo_rgb copies one channel three times; data.modalities "
                               f"has {len(data.modalities)}")


@section
class UNet3DConfig(ModelConfig):
    name: Literal["unet3d"] = "unet3d"
    deep_supervision: NonNegativeInt = 0  # as the 2D U-Net's

    @model_validator(mode="after")
    def _deep_supervision_fits(self) -> UNet3DConfig:
        _check_deep_supervision(self.deep_supervision, self.features)
        return self

    spatial_dims: ClassVar[int] = 3
    smoke_overrides: ClassVar[tuple[str, ...]] = (
        "data.patch_size=16", "data.samples_per_case=1", "train.batch_size=2", "model.deep_supervision=0")

    def check_data(self, data: DataSection) -> None:
        if data.format != "brats":
            raise SettingError("model.name", f"unet3d needs volumes; data.format = {data.format!r} gives 2D slices")
        halvings = len(self.features) - 1
        if data.patch_size < 8 or data.patch_size % 2 ** halvings:
            raise SettingError("data.patch_size", f"must be divisible by {2 ** halvings} (the 3D U-Net halves "
                               f"it {halvings} times); got {data.patch_size}")


# model.name -> its section; the model registry (jaxseg/models/registry.py) builds the same names.
MODEL_SECTIONS: dict[str, type[ModelConfig]] = {
    "unet": UNetConfig, "attention_unet": AttentionUNetConfig, "resunet34": ResUNet34Config,
    "transunet": TransUNetConfig, "unet3d": UNet3DConfig}
