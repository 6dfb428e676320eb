"""The grain source of 2D slice records (figshare ``.mat``, image folders), beside BraTS volumes.

Each record is prepared as a one-slice volume by :mod:`jaxseg.data.preprocess` (crop to the
nonzero pixels, fit to ``data.image_size``, ``data.normalize``: statistics of that one slice), so a
batch is exactly a :class:`jaxseg.data.pipeline.SliceSource` batch: ``image (B, S, S, C)``,
``target (B, S, S, 1)``, ``classes (B, S, S)`` (1 = tumor), ``case`` (the record's position),
``z`` (always 0) and ``valid``, and the train step, validation and metrics run unchanged.

:func:`build_record_index` has the signature of ``pipeline.build_slice_index``, which hands
over to it when ``data.format`` is not ``brats``; ``pipeline.make_loader`` then builds the same
loader around :class:`RecordSource`. The index reads and prepares every record once (so a bad file
stops the run before the first step, naming the file) and is stored in the run's cache folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseg.config import DataConfig
from jaxseg.data import pipeline, preprocess
from jaxseg.data.records import Record, load_record, to_volume
from jaxseg.errors import JaxsegError
from jaxseg.files import write_text
from jaxseg.target import target_kind


def prepare_record(record: Record, channels: int, data_cfg: DataConfig) -> preprocess.PreparedVolume:
    """One record as a prepared one-slice volume: ``slices (1, S, S, C)`` float32, ``classes
    (1, S, S)`` uint8 (1 = tumor; None without a mask), geometry to restore the original size."""
    image, mask = load_record(record, channels)
    return preprocess.prepare_volume(*to_volume(image, mask), data_cfg)


def _record_signature(record: Record) -> list:
    return [record.case_id, pipeline._file_signature(record.image), pipeline._file_signature(record.mask)]


def build_record_index(records: Sequence[Record], modalities: Sequence[str], data_cfg: DataConfig,
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
        key = pipeline._digest({"records2d": [_record_signature(r) for r in records], "train": train,
                                "modalities": list(modalities), "seed": seed if train else None,
                                "config": [d.image_size, d.crop, d.fit, d.min_tumor_pixels, d.empty_slice_fraction]})
        cache_file = Path(cache_dir) / f"record_index_{'train' if train else 'val'}_{key[:16]}.json"
        try:
            stored = json.loads(cache_file.read_text())
            if stored.get("key") == key:
                return np.asarray(stored["index"], dtype=np.int64).reshape(-1, 2)
        except (OSError, ValueError, AttributeError):
            pass  # absent or unreadable: rebuild it
    tumor_pixels = np.zeros(len(records), dtype=np.int64)
    nonzero = np.zeros(len(records), dtype=bool)
    for i, record in enumerate(records):
        prepared = prepare_record(record, len(modalities), d)
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
        write_text(cache_file, json.dumps({"key": key, "index": index.tolist()}))
    return index


class RecordSource(pipeline.CaseIndexedSource):
    """grain ``RandomAccessDataSource`` of prepared 2D records; items as
    :class:`jaxseg.data.pipeline.SliceSource` items (``z`` is 0). ``cases`` are :class:`Record`
    objects; the index is ``(N, 2)`` ``(record_index, 0)``; the LRU keeps ``data.cache_volumes``
    prepared records (a record is small and quick to read, so nothing is stored on disk)."""

    def _content_settings(self) -> tuple:
        c = self._cfg
        return ("2d", c.format, c.mask_suffix, c.target, c.image_size, c.normalize, c.crop, c.fit)

    def record(self, record_index: int) -> preprocess.PreparedVolume:
        return self._volumes.get(record_index, lambda: prepare_record(
            self._cases[record_index], len(self._modalities), self._cfg))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        record_index = int(self._index[i, 0])
        prepared = self.record(record_index)
        classes = np.array(prepared.classes[0])  # copies: never alias the cache
        return {"image": np.array(prepared.slices[0]), "target": target_kind(self._cfg.target).encode(classes),
                "classes": classes, "case": np.int32(record_index), "z": np.int32(0),
                "valid": np.bool_(self._valid[i])}
