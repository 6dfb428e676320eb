"""How a model samples a dataset: 2D models read slices, 3D models patches of volumes.

One :class:`Sampling` per number of spatial dims (:data:`SLICES`, :data:`PATCHES`) decides, for
training, which records a loader reads (the index), the grain source and the random operations
on them; and for inference, what the model is given (the run's preprocessing of a canonical
``(X, Y, Z, C)`` image) and the inverse of that geometry (probabilities back on the canonical
grid). :func:`jaxseg.data.loader.make_loader` and :class:`jaxseg.infer.predict.Predictor` ask
the sampling of their model (``formats.sampling(models.registry.spatial_dims(cfg))``) and branch
on nothing.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxseg.config import Config, DataConfig, canonical_modalities
from jaxseg.data import patches, preprocess
from jaxseg.data.formats.base import DataFormat
from jaxseg.data.pipeline import Augment, CaseIndexedSource


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """A canonical image as its model sees it: ``values`` (2D: ``(Z, S, S, C)`` slices; 3D: the
    ``(X', Y', Z', C)`` brain box) float32, and what :meth:`restore` needs to undo the geometry."""

    values: np.ndarray
    prepared: Any  # preprocess.PreparedVolume | patches.PreparedVolume3D
    sampling: "Sampling"

    def restore(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities shaped like ``values`` (last axis K) -> ``(X, Y, Z, K)`` float32 canonical."""
        return self.sampling.restore(probs, self.prepared)


class Sampling:
    """The interface; see :class:`Slices` and :class:`Patches`.

    Attributes:
      spatial_dims: 2 or 3, the model's (``models.registry.spatial_dims``).
      flip_axes: the batch axes test-time augmentation flips (those training may flip).
    """

    spatial_dims: int = 0
    flip_axes: tuple[int, ...] = ()

    def index(self, fmt: DataFormat, cfg: Config, cases: Sequence[Any], seed: int, train: bool,
              cache_dir: str | Path | None) -> np.ndarray:
        """``(N, 2)`` int64 records ``(case_index, z or draw)`` a loader reads, before padding."""
        raise NotImplementedError

    def no_records(self, fmt: DataFormat, cfg: Config, cases: Sequence[Any], train: bool) -> str:
        """The error message for an empty index."""
        raise NotImplementedError

    def records_named(self, cfg: Config, cases: Sequence[Any]) -> str:
        """What the records are, for "train.batch_size is larger than the N ..."."""
        raise NotImplementedError

    def source(self, fmt: DataFormat, cfg: Config, cases: Sequence[Any], index: np.ndarray, valid: np.ndarray,
               cache_dir: str | Path | None, train: bool) -> CaseIndexedSource:
        raise NotImplementedError

    def operations(self, cfg: Config, train: bool) -> list:
        """The grain operations between the source and batching (random ones get the record's key)."""
        raise NotImplementedError

    def prepare_input(self, image: np.ndarray, data_cfg: DataConfig) -> ModelInput:
        """A canonical ``(X, Y, Z, C)`` float32 image -> the model's input (the run's preprocessing)."""
        raise NotImplementedError

    def restore(self, probs: np.ndarray, prepared: Any) -> np.ndarray:
        raise NotImplementedError

    def probabilities(self, predictor: Any, values: np.ndarray) -> np.ndarray:
        """``predictor``'s probabilities of :attr:`ModelInput.values` (its forward pass of this kind)."""
        raise NotImplementedError


class Slices(Sampling):
    """2D models: the format's slice index (shuffled across cases for training), its slice
    source, :class:`jaxseg.data.pipeline.Augment` for training; inference on every axial slice
    fitted to ``data.image_size``, restored by linear interpolation."""

    spatial_dims = 2
    flip_axes = (1, 2)

    def index(self, fmt, cfg, cases, seed, train, cache_dir):
        return fmt.slice_index(cases, canonical_modalities(cfg), cfg.data, seed, train, cache_dir)

    def no_records(self, fmt, cfg, cases, train):
        return (f"{cfg.data.root or 'phantoms'}: no {'training' if train else 'validation'} slices in "
                f"{len(cases)} {fmt.unit} (check data.min_tumor_pixels, data.min_tumor_fraction, "
                "data.empty_slice_fraction)")

    def records_named(self, cfg, cases):
        return "training slices"

    def source(self, fmt, cfg, cases, index, valid, cache_dir, train):
        return fmt.slice_source(cases, canonical_modalities(cfg), cfg.data, index, valid, cache_dir)

    def operations(self, cfg, train):
        augment = Augment(cfg.data.augment)
        return [augment] if train and augment.active else []

    def prepare_input(self, image, data_cfg):
        prepared = preprocess.prepare_volume(image, None, data_cfg)
        return ModelInput(prepared.slices, prepared, self)

    def restore(self, probs, prepared):
        return preprocess.restore_slices(probs, prepared.geometry, order=1).astype(np.float32)

    def probabilities(self, predictor, values):
        return predictor.slice_probabilities(values)


class Patches(Sampling):
    """3D models: ``data.samples_per_case`` ``(case, draw)`` records per case, each a
    ``data.patch_mode`` patch of the brain box placed by grain's per-record generator
    (:mod:`jaxseg.data.patches`), flipped on all three axes with ``data.augment.flip`` (rot90 and
    intensity settings are 2D-only); validation on one centre patch per case, no flips.
    Inference by sliding windows over the brain box, restored into the canonical volume."""

    spatial_dims = 3
    flip_axes = (1, 2, 3)

    @staticmethod
    def spec(cfg: Config, train: bool) -> patches.PatchSpec:
        d = cfg.data
        return patches.PatchSpec(d.patch_size, d.patch_mode, d.tumor_probability) if train \
            else patches.PatchSpec(d.patch_size, "center")

    def index(self, fmt, cfg, cases, seed, train, cache_dir):
        self.spec(cfg, train)  # a bad patch setting is named before anything else
        return patches.patch_index(len(cases), cfg.data.samples_per_case if train else 1)

    def no_records(self, fmt, cfg, cases, train):
        return f"data: no {'training' if train else 'validation'} cases for 3D patches"

    def records_named(self, cfg, cases):
        return f"patch records ({len(cases)} cases x samples_per_case {cfg.data.samples_per_case})"

    def source(self, fmt, cfg, cases, index, valid, cache_dir, train):
        return patches.PatchSource(cases, canonical_modalities(cfg), cfg.data, self.spec(cfg, train), index,
                                   valid, cache_dir)

    def operations(self, cfg, train):
        # Each record's placement generator is keyed by its global position, so N hosts cut the
        # patches of one (see pipeline.GlobalBatchSampler).
        return [patches.RandomPatch(self.spec(cfg, train), cfg.data.target, flip=train and cfg.data.augment.flip)]

    def prepare_input(self, image, data_cfg):
        prepared = patches.prepare_volume_3d(image, None, data_cfg)
        return ModelInput(prepared.image, prepared, self)

    def restore(self, probs, prepared):
        return patches.restore_box(probs, prepared.box)

    def probabilities(self, predictor, values):
        return predictor.volume_probabilities(values)


SLICES = Slices()
PATCHES = Patches()
