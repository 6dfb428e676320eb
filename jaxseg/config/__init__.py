"""Typed, frozen experiment configuration.

A config is a TOML file with the sections ``[data]``, ``[data.augment]``, ``[model]``, ``[train]``
and ``[infer]`` (see ``configs/``). :func:`load` reads one, applies ``--set key=value`` overrides,
checks every value and returns a :class:`Config`; a problem is one line naming the file and the
setting (``configs/x.toml: model.transformer_heads: must divide transformer_dim (256); got 3``).
:func:`dumps` writes the resolved config back as TOML; the training loop saves it next to every
run so a run can always be repeated.

- :mod:`~jaxseg.config.sections`: the sections, every key with its default, meaning and check;
- :mod:`~jaxseg.config.model_sections`: the ``[model]`` section, one class per model chosen by
  ``model.name`` (:data:`MODEL_SECTIONS`);
- :mod:`~jaxseg.config.fields`: the field types and checks the sections are written with;
- :mod:`~jaxseg.config.load`: finding, reading, overriding and validating;
- :mod:`~jaxseg.config.write`: ``to_dict``, ``dumps`` (``tomli-w``) and the smoke size.
"""
from __future__ import annotations

from jaxseg.config.load import load, load_from_dict, resolve_path, shipped_configs
from jaxseg.config.model_sections import (MODEL_SECTIONS, AttentionUNetConfig, ModelConfig, ResUNet34Config,
                                          TransUNetConfig, UNet3DConfig, UNetConfig)
from jaxseg.config.sections import (MODALITIES, TARGETS, AugmentConfig, Config, DataConfig,
                                    InferConfig, TrainConfig, canonical_modalities)
from jaxseg.config.write import SMOKE_MODEL_OVERRIDES, SMOKE_OVERRIDES, dumps, smoke, smoke_overrides, to_dict

__all__ = [
    "MODALITIES", "MODEL_SECTIONS", "SMOKE_MODEL_OVERRIDES", "SMOKE_OVERRIDES", "TARGETS",
    "AttentionUNetConfig", "AugmentConfig", "Config", "DataConfig", "InferConfig", "ModelConfig",
    "ResUNet34Config", "TrainConfig", "TransUNetConfig", "UNet3DConfig", "UNetConfig", "canonical_modalities",
    "dumps", "load", "load_from_dict", "resolve_path", "shipped_configs", "smoke", "smoke_overrides", "to_dict",
]
