"""The ``brats`` format: NIfTI volumes, one case folder per patient (or phantoms made on the fly).

- **Cases.** :func:`jaxseg.data.brats.find_cases` under ``data.root``; with no root, synthetic
  phantoms are written once into the run folder (by process 0; the others wait).
- **A slice index first (2D models).** Which axial slices a model trains on depends on the
  labels (``preprocess.keep_slices``), so :meth:`BratsVolumes.slice_index` prepares every case and
  lists ``(case, z)`` pairs; the grain sampler then shuffles *slices* across cases. With a
  ``cache_dir`` (the training loop always gives one, ``<workdir>/cache``) the prepared volumes go
  to the volume store (:mod:`jaxseg.data.store`, about 40 MB per real case at 128 x 128) and
  every later read is a memory map, so a cache miss costs a page-in, not a ~2.5 s NIfTI decode.
- **Lazy volumes, bounded cache.** :class:`SliceSource` prepares a volume the first time one of
  its slices is asked for and keeps ``data.cache_volumes`` of them per process.
3D models sample the same cases as patches of brain boxes (:mod:`jaxseg.data.patches`).
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from jaxseg.config import Config, DataConfig, canonical_modalities
from jaxseg.data import brats, inspect, phantom, preprocess, store
from jaxseg.data.formats.base import DataFormat
from jaxseg.data.pipeline import CaseIndexedSource
from jaxseg.errors import JaxsegError, file_error
from jaxseg.target import target_kind


def load_prepared(case: brats.Case, modalities: Sequence[str], cfg: DataConfig,
                  cache_dir: str | Path | None = None) -> tuple[preprocess.PreparedVolume, float]:
    """``(prepared volume, tumor fraction)`` of a labelled case: from the store in ``cache_dir`` (memory-
    mapped, read-only arrays) when present, else loaded, prepared and, with ``cache_dir``, stored."""
    stem = None if cache_dir is None else store.stem(
        cache_dir, "volumes", case.case_id,
        [store.case_signature(case, modalities), cfg.image_size, cfg.normalize, cfg.crop, cfg.fit])
    stored = None if stem is None else store.read_volume(stem, ("slices", "classes"))
    if stored is not None:
        arrays, meta = stored
        try:
            prepared = preprocess.PreparedVolume(
                slices=arrays["slices"], classes=arrays["classes"],
                geometry=preprocess.SliceGeometry.from_dict(meta["geometry"]),
                brain_slices=np.asarray(meta["brain_slices"], dtype=bool),
                tumor_pixels=np.asarray(meta["tumor_pixels"], dtype=np.int64))
            return prepared, float(meta["tumor_fraction"])
        except (ValueError, KeyError, TypeError):
            pass  # from another version: prepare it again
    image, classes, _ = brats.load_case(case, modalities)
    if classes is None:
        raise JaxsegError(f"{case.folder}: case {case.case_id} has no segmentation; training and validation need one")
    prepared = preprocess.prepare_volume(image, classes, cfg)
    tumor_fraction = preprocess.case_tumor_fraction(classes, preprocess.brain_mask(image))
    if stem is not None:
        store.write_volume(stem, {"slices": prepared.slices, "classes": prepared.classes}, {
            "geometry": prepared.geometry.as_dict(), "brain_slices": prepared.brain_slices.tolist(),
            "tumor_pixels": prepared.tumor_pixels.tolist(), "tumor_fraction": tumor_fraction})
    return prepared, tumor_fraction


class SliceSource(CaseIndexedSource):
    """grain ``RandomAccessDataSource`` of prepared axial slices; picklable for worker processes.

    Args:
      cases: the cases (``brats.Case``) that ``index`` refers to by position.
      modalities: canonical modality names, the channel order.
      data_cfg: the data config (target, preprocessing, ``cache_volumes``).
      index: ``(N, 2)`` ints ``(case_index, z)``, e.g. from :meth:`BratsVolumes.slice_index`.
      valid: ``(N,)`` bool, False for padding entries (validation); default all True.
      cache_dir: where prepared volumes are stored on disk (see :func:`load_prepared`); None = off.
    Items: ``'image' (S, S, C) float32``, ``'target' (S, S, K) float32``, ``'classes' (S, S) uint8``,
    ``'case' int32``, ``'z' int32``, ``'valid' bool``.
    """

    def _content_settings(self) -> tuple:
        c = self._cfg
        return (c.target, c.image_size, c.normalize, c.crop, c.fit)

    def volume(self, case_index: int) -> preprocess.PreparedVolume:
        """The prepared volume of ``cases[case_index]``, from the LRU cache or loaded now."""
        return self._volumes.get(case_index, lambda: load_prepared(
            self._cases[case_index], self._modalities, self._cfg, self._cache_dir)[0])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        case_index, z = (int(v) for v in self._index[i])
        prepared = self.volume(case_index)
        classes = np.array(prepared.classes[z])  # copies into plain arrays: never alias the cache or a memmap
        return {"image": np.array(prepared.slices[z]), "target": target_kind(self._cfg.target).encode(classes),
                "classes": classes, "case": np.int32(case_index), "z": np.int32(z),
                "valid": np.bool_(self._valid[i])}


def build_slice_index(cases: Sequence[brats.Case], modalities: Sequence[str], data_cfg: DataConfig,
                      seed: int, train: bool, cache_dir: str | Path | None = None) -> np.ndarray:
    """``(N, 2)`` int64 rows ``(case_index, z)``: the slices a loader reads, case by case.

    Training keeps cases whose tumor fraction (tumor / brain voxels) is at least
    ``min_tumor_fraction`` and, in them, :func:`preprocess.keep_slices` (random choices seeded by
    ``seed`` and the case id, so the index does not depend on the case order). Validation keeps
    every brain slice of every case. With ``cache_dir`` the index is stored there as JSON, keyed
    by a hash of the case files (path, size, mtime) and the settings that decide it, and so are
    the prepared volumes (:func:`load_prepared`), ready for the loaders.
    """
    cache_file = key = None
    if cache_dir is not None:
        d = data_cfg
        key = store.digest({"modalities": list(modalities), "train": train, "seed": seed if train else None,
                            "cases": [store.case_signature(c, modalities) for c in cases],
                            "config": [d.image_size, d.crop, d.fit, d.min_tumor_pixels, d.empty_slice_fraction,
                                       d.min_tumor_fraction]})
        cache_file = Path(cache_dir) / f"slice_index_{'train' if train else 'val'}_{key[:16]}.json"
        stored = store.read_index(cache_file, key)
        if stored is not None:
            return stored
    rows = []
    for case_index, case in enumerate(cases):
        prepared, tumor_fraction = load_prepared(case, modalities, data_cfg, cache_dir)
        if train and tumor_fraction < data_cfg.min_tumor_fraction:
            continue
        if train:
            rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
            zs = preprocess.keep_slices(prepared, data_cfg, rng)
        else:
            zs = np.flatnonzero(prepared.brain_slices)
        rows.extend((case_index, int(z)) for z in zs)
    index = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    if cache_file is not None:
        store.write_index(cache_file, key, index)
    return index


class BratsVolumes(DataFormat):
    """BraTS NIfTI volumes: 2D models read their axial slices, 3D models patches of brain boxes."""

    name = "brats"
    unit = "cases"
    suffixes = (".nii", ".nii.gz")
    samplings = (2, 3)
    output = "nifti"

    def find_cases(self, cfg: Config, workdir: Path) -> list[brats.Case]:
        """``data.root``'s cases; with no root, ``data.phantom_*`` phantoms written once into
        ``<workdir>/phantoms`` (by process 0, the others wait for it)."""
        if cfg.data.root:
            return brats.find_cases(cfg.data.root, canonical_modalities(cfg))
        root = Path(workdir) / "phantoms"
        if jax.process_index() == 0 and not root.is_dir():
            phantom.write_phantoms(root, cfg.data.phantom_cases, cfg.data.phantom_seed, cfg.data.phantom_shape)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("phantoms")
        return brats.find_cases(root, canonical_modalities(cfg))

    def inspect(self, root: Path, mask_suffix: str = "_mask") -> tuple[Any, bool]:
        reports = inspect.inspect_dataset(root)
        return inspect.render_table(reports), any(r.problems for r in reports)

    def input_records(self, path: Path, mask_suffix: str = "_mask") -> list:
        """Volumes are no 2D slice records: JaxsegError (``predict`` asks for 2D slices here)."""
        raise file_error(path, "not a 2D slice file (.mat, .png, .tif, .tiff)" if path.is_file()
                         else "holds NIfTI volumes, not 2D slices")

    def slice_index(self, cases, modalities, data_cfg, seed, train, cache_dir=None) -> np.ndarray:
        return build_slice_index(cases, modalities, data_cfg, seed, train, cache_dir)

    def slice_source(self, cases, modalities, data_cfg, index, valid=None, cache_dir=None) -> SliceSource:
        return SliceSource(cases, modalities, data_cfg, index, valid, cache_dir)


FORMAT = BratsVolumes()
