"""Writing a config back: as a dict, as TOML (``tomli-w``), and at smoke size.

The training loop writes :func:`dumps` next to every run, so a run can always be repeated:
``load`` of that text gives an equal :class:`Config`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import tomli_w

from jaxseg.config.load import load_from_dict
from jaxseg.config.model_sections import MODEL_SECTIONS
from jaxseg.config.sections import Config

# Every config has a smoke size (CONTRIBUTING.md, habit 7): the same code path at toy sizes, so tests
# and `jaxseg demo --smoke` run any config in seconds. Real-data configs keep their data.root.
SMOKE_OVERRIDES = (
    "data.image_size=32", "data.phantom_cases=4", "data.phantom_shape=[32, 32, 20]",
    "data.cache_volumes=2", "model.features=[4, 8]", "train.epochs=1", "train.steps_per_epoch=2",
    "train.batch_size=4", "train.warmup_steps=0",
)

# What each model needs beyond SMOKE_OVERRIDES to be tiny (each model section's `smoke_overrides`).
SMOKE_MODEL_OVERRIDES = {name: section.smoke_overrides for name, section in MODEL_SECTIONS.items()
                         if section.smoke_overrides}


def smoke_overrides(model_name: str = "unet") -> tuple[str, ...]:
    """The ``key=value`` overrides that make a config of ``model_name`` smoke-sized."""
    return SMOKE_OVERRIDES + SMOKE_MODEL_OVERRIDES.get(model_name, ())


def smoke(cfg: Config) -> Config:
    """``cfg`` at smoke size."""
    return load_from_dict(to_dict(cfg), smoke_overrides(cfg.model.name))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config (or one of its sections) as nested dicts; lists are tuples."""
    return dataclasses.asdict(cfg)


def dumps(cfg: Config) -> str:
    """The config as TOML that :func:`jaxseg.config.load` reads back to an equal config."""
    return tomli_w.dumps(to_dict(cfg))
