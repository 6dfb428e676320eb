"""What the 2D slice-record formats share (figshare ``.mat``, image folders): index and source.

Each record is prepared as a one-slice volume by :mod:`jaxseg.data.preprocess` (crop to the
nonzero pixels, fit to ``data.image_size``, ``data.normalize``: statistics of that one slice), so a
batch is exactly a BraTS slice batch (``brats_volumes.SliceSource``): ``image (B, S, S, C)``,
``target (B, S, S, 1)``, ``classes (B, S, S)`` (1 = tumor), ``case`` (the record's position),
``z`` (always 0) and ``valid``, and the train step, validation and metrics run unchanged.

:func:`build_record_index` reads and prepares every record once (so a bad file stops the run
before the first step, naming the file) and is stored in the run's cache folder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jaxseg.config import Config, DataConfig
from jaxseg.data import inspect, preprocess, records, store
from jaxseg.data.formats.base import DataFormat
from jaxseg.data.pipeline import CaseIndexedSource
from jaxseg.data.records import Record, to_volume
from jaxseg.errors import JaxsegError
from jaxseg.target import target_kind


def prepare_record(data_format: "SliceRecords", record: Record, channels: int,
                   data_cfg: DataConfig) -> preprocess.PreparedVolume:
    """One record as a prepared one-slice volume: ``slices (1, S, S, C)`` float32, ``classes
    (1, S, S)`` uint8 (1 = tumor; None without a mask), geometry to restore the original size."""
    image, mask = data_format.load_record(record, channels)
    return preprocess.prepare_volume(*to_volume(image, mask), data_cfg)


def _record_signature(record: Record) -> list:
    return [record.case_id, store.file_signature(record.image), store.file_signature(record.mask)]


def build_record_index(data_format: "SliceRecords", records: Sequence[Record], modalities: Sequence[str], data_cfg: DataConfig,
                       seed: int, train: bool, cache_dir: str | Path | None = None) -> np.ndarray:
    """``(N, 2)`` int64 rows ``(record_index, 0)``: the records a loader reads.

    Validation keeps every record. Training applies the slice rule of
    :func:`preprocess.keep_slices` over records: a record with tumor is kept when it has at least
    ``min_tumor_pixels`` tumor pixels after fitting; of the records without tumor (and a nonzero
    image) a random ``empty_slice_fraction`` is kept (seeded by ``seed``). Every record is read and
    prepared once here; with ``cache_dir`` the index is stored, keyed by the files and settings.
    """
    d = data_cfg
    cache_file = key = None
    if cache_dir is not None:
        key = store.digest({"records2d": [_record_signature(r) for r in records], "train": train,
                            "modalities": list(modalities), "seed": seed if train else None,
                            "config": [d.image_size, d.crop, d.fit, d.min_tumor_pixels, d.empty_slice_fraction]})
        cache_file = Path(cache_dir) / f"record_index_{'train' if train else 'val'}_{key[:16]}.json"
        stored = store.read_index(cache_file, key)
        if stored is not None:
            return stored
    tumor_pixels = np.zeros(len(records), dtype=np.int64)
    nonzero = np.zeros(len(records), dtype=bool)
    for i, record in enumerate(records):
        prepared = prepare_record(data_format, record, len(modalities), d)
        if prepared.classes is None:
            raise JaxsegError(f"{record.image}: has no mask; training and validation need one")
        tumor_pixels[i], nonzero[i] = prepared.tumor_pixels[0], prepared.brain_slices[0]
    if train:
        tumor = tumor_pixels > 0
        kept_tumor = np.flatnonzero(tumor & (tumor_pixels >= d.min_tumor_pixels))
        empty = np.flatnonzero(nonzero & ~tumor)
        n_empty = int(round(d.empty_slice_fraction * len(empty)))
        kept_empty = np.random.default_rng(seed).choice(empty, size=n_empty, replace=False) if n_empty else empty[:0]
        keep = np.sort(np.concatenate([kept_tumor, kept_empty]))
    else:
        keep = np.arange(len(records))
    index = np.stack([keep, np.zeros_like(keep)], axis=1).astype(np.int64).reshape(-1, 2)
    if cache_file is not None:
        store.write_index(cache_file, key, index)
    return index


class RecordSource(CaseIndexedSource):
    """grain ``RandomAccessDataSource`` of prepared 2D records; items as
    ``brats_volumes.SliceSource`` items (``z`` is 0). ``cases`` are :class:`Record` objects read by
    ``data_format``; the index is ``(N, 2)`` ``(record_index, 0)``; the LRU keeps
    ``data.cache_volumes`` prepared records (a record is small and quick to read, so nothing is
    stored on disk)."""

    def __init__(self, cases: Sequence[Record], modalities: Sequence[str], data_cfg: DataConfig,
                 index: np.ndarray | Sequence[tuple[int, int]], valid: np.ndarray | None = None,
                 cache_dir: str | Path | None = None, *, data_format: "SliceRecords"):
        super().__init__(cases, modalities, data_cfg, index, valid, cache_dir)
        self._format = data_format

    def _content_settings(self) -> tuple:
        c = self._cfg
        return ("2d", c.format, c.mask_suffix, c.target, c.image_size, c.normalize, c.crop, c.fit)

    def record(self, record_index: int) -> preprocess.PreparedVolume:
        return self._volumes.get(record_index, lambda: prepare_record(
            self._format, self._cases[record_index], len(self._modalities), self._cfg))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        record_index = int(self._index[i, 0])
        prepared = self.record(record_index)
        classes = np.array(prepared.classes[0])  # copies: never alias the cache
        return {"image": np.array(prepared.slices[0]), "target": target_kind(self._cfg.target).encode(classes),
                "classes": classes, "case": np.int32(record_index), "z": np.int32(0),
                "valid": np.bool_(self._valid[i])}


class SliceRecords(DataFormat):
    """A format of labelled 2D slices (:class:`jaxseg.data.records.Record`): 2D models only,
    one record per slice, a patient's records kept in one split, PNG masks out. A subclass
    finds and reads its files (the methods that raise NotImplementedError here)."""

    unit = "records"
    samplings = (2,)
    output = "png"

    def find_records(self, root: Path, mask_suffix: str = "_mask", require_masks: bool = True) -> list[Record]:
        """Every slice under ``root`` (a folder, or one file), sorted by case id; JaxsegError naming
        the file for a missing or empty folder, two files with one case id, and unreadable files."""
        raise NotImplementedError

    def input_record(self, path: Path) -> Record:
        """The unlabelled record of one file given to ``predict``."""
        raise NotImplementedError

    def input_records(self, path: Path, mask_suffix: str = "_mask") -> list[Record]:
        """What ``predict`` reads at ``path``: the file's record, or every slice under the folder
        (images without masks too; masks are not read to predict)."""
        if path.is_file():
            return [self.input_record(path)]
        return [dataclasses.replace(r, mask=None) for r in self.find_records(path, mask_suffix, require_masks=False)]

    def load_record(self, record: Record, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image (H, W, C) float32, mask (H, W) uint8 0/1 or None)`` with ``C == channels``;
        JaxsegError naming the file for every problem the reader checks."""
        raise NotImplementedError

    def read_mask(self, record: Record) -> np.ndarray:
        """The reference mask ``(H, W)`` uint8 0/1 of a labelled record (for evaluation)."""
        raise NotImplementedError

    def inspect_jobs(self, root: Path, mask_suffix: str) -> list[Callable[[], inspect.SliceReport]]:
        """One job per slice file under ``root``, each returning its :class:`inspect.SliceReport`."""
        raise NotImplementedError

    def inspect(self, root: Path, mask_suffix: str = "_mask") -> tuple[Any, bool]:
        reports = inspect.inspect_slices(self.inspect_jobs(Path(root), mask_suffix))
        return inspect.render_slices_table(reports, self.name), any(r.problems for r in reports)

    def find_cases(self, cfg: Config, workdir: Path) -> list[Record]:
        if not cfg.data.root:
            raise JaxsegError(f"data.root: data.format = {self.name!r} needs a dataset folder "
                              "(phantoms are BraTS volumes)")
        return self.find_records(Path(cfg.data.root), cfg.data.mask_suffix)

    def subjects(self, cases: Sequence[Record]) -> dict[str, str]:
        return records.subjects_of(cases)

    def slice_index(self, cases, modalities, data_cfg, seed, train, cache_dir=None) -> np.ndarray:
        return build_record_index(self, cases, modalities, data_cfg, seed, train, cache_dir)

    def slice_source(self, cases, modalities, data_cfg, index, valid=None, cache_dir=None) -> RecordSource:
        return RecordSource(cases, modalities, data_cfg, index, valid, cache_dir, data_format=self)
