"""The grain input pipeline: cases -> slice index -> SliceSource -> Augment -> batches on devices.

Why it looks the way it does:

- **A slice index first.** Which axial slices a model trains on depends on the labels
  (``keep_slices``), so :func:`build_slice_index` prepares every case and lists ``(case, z)``
  pairs; the grain sampler then shuffles *slices* across cases. With a ``cache_dir`` (the
  training loop always gives one, ``<workdir>/cache``) those prepared volumes are stored and
  every later read is a memory map; without one a volume is decoded again when a slice needs it.
- **Lazy volumes, bounded cache.** :class:`SliceSource` prepares a volume the first time one of
  its slices is asked for and keeps ``data.cache_volumes`` prepared volumes per process (grain
  workers each hold their own). grain reads with several threads, so the cache is locked and a
  volume is prepared by one thread while the others wait for it.
- **An optional store on disk.** Shuffled slices from more cases than the cache holds mean a
  NIfTI load (~2.5 s for a real BraTS case) for most slices. With a ``cache_dir`` every prepared
  volume is also saved there as ``.npy`` (about 40 MB per real case at 128 x 128) and memory-mapped
  afterwards, so a cache miss costs a page-in, not a decode.
- **Checkpointable order.** grain's iterator state is a few integers plus ``repr(sampler)`` and
  ``repr(source)``, checked on restore; :class:`SliceSource` has a content-derived ``repr``, so a
  changed dataset or preprocessing is refused rather than silently resumed.
- **One global order on every host.** :class:`GlobalBatchSampler` gives process ``p`` its own
  contiguous rows of each global batch of one shuffled order, so N hosts train like one.
- **Validation sees every slice exactly once, on every host.** The validation index is padded
  to a multiple of the global batch (repeating its last entry) and each element carries
  ``valid``; all hosts get the same number of full batches, and metrics ignore padded rows.
- **Random augmentation is reproducible.** grain gives each record ``Philox(seed + index)``, so
  the augmented stream depends on the seed only, not on the worker or thread count.
"""
from __future__ import annotations

import collections
import hashlib
import json
import threading
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg.config import AugmentConfig, Config, DataConfig, canonical_modalities
from jaxseg.data import brats, preprocess
from jaxseg.errors import JaxsegError
from jaxseg.files import atomic_path, write_text
from jaxseg.target import target_kind

READ_THREADS = 2  # threads reading the source per process; this project targets 2-core machines
_CACHE_VERSION = 1  # bump when the stored index or volume format changes


def _file_signature(path: Path | None) -> list:
    if path is None:
        return [None]
    try:
        st = Path(path).stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def _case_signature(case: brats.Case, modalities: Sequence[str]) -> list:
    return [case.case_id, [_file_signature(case.images.get(m)) for m in modalities], _file_signature(case.seg)]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps([_CACHE_VERSION, obj]).encode()).hexdigest()


def _store_stem(cache_dir: str | Path, case: brats.Case, modalities: Sequence[str], cfg: DataConfig) -> Path:
    key = _digest([_case_signature(case, modalities), cfg.image_size, cfg.normalize, cfg.crop, cfg.fit])
    return Path(cache_dir) / "volumes" / f"{case.case_id}-{key[:16]}"


def _beside(stem: Path, suffix: str) -> Path:
    return stem.parent / (stem.name + suffix)  # not with_suffix: case ids may contain dots


def load_prepared(case: brats.Case, modalities: Sequence[str], cfg: DataConfig,
                  cache_dir: str | Path | None = None) -> tuple[preprocess.PreparedVolume, float]:
    """``(prepared volume, tumor fraction)`` of a labelled case: from the store in ``cache_dir`` (memory-
    mapped, read-only arrays) when present, else loaded, prepared and, with ``cache_dir``, stored."""
    stem = None if cache_dir is None else _store_stem(cache_dir, case, modalities, cfg)
    if stem is not None:
        try:
            meta = json.loads(_beside(stem, ".json").read_text())
            prepared = preprocess.PreparedVolume(
                slices=np.load(_beside(stem, ".slices.npy"), mmap_mode="r"),
                classes=np.load(_beside(stem, ".classes.npy"), mmap_mode="r"),
                geometry=preprocess.SliceGeometry.from_dict(meta["geometry"]),
                brain_slices=np.asarray(meta["brain_slices"], dtype=bool),
                tumor_pixels=np.asarray(meta["tumor_pixels"], dtype=np.int64))
            return prepared, float(meta["tumor_fraction"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent, partial or from another version: prepare it again
    image, classes, _ = brats.load_case(case, modalities)
    if classes is None:
        raise JaxsegError(f"{case.folder}: case {case.case_id} has no segmentation; training and validation need one")
    prepared = preprocess.prepare_volume(image, classes, cfg)
    tumor_fraction = preprocess.case_tumor_fraction(classes, preprocess.brain_mask(image))
    if stem is not None:
        # arrays first, the JSON last: a store without its JSON is never read
        for suffix, array in ((".slices.npy", prepared.slices), (".classes.npy", prepared.classes)):
            with atomic_path(_beside(stem, suffix)) as tmp:
                np.save(tmp, array)
        write_text(_beside(stem, ".json"), json.dumps({
            "geometry": prepared.geometry.as_dict(), "brain_slices": prepared.brain_slices.tolist(),
            "tumor_pixels": prepared.tumor_pixels.tolist(), "tumor_fraction": tumor_fraction}))
    return prepared, tumor_fraction


class VolumeCache:
    """A thread-safe LRU of prepared volumes, one per process.

    ``get(key, load)`` returns the cached value or calls ``load()`` once, however many threads
    ask at the same time (the others wait, then share it). It pickles empty, so a spawned grain
    worker starts with its own cache. ``misses`` counts loads (for tests).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._reset()

    def _reset(self) -> None:
        self._items: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[int, threading.Lock] = {}
        self.misses = 0

    def __getstate__(self) -> dict:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self._reset()

    def keys(self) -> tuple[int, ...]:
        """Cached keys, least recently used first."""
        with self._lock:
            return tuple(self._items)

    def get(self, key: int, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            value = load()
            with self._lock:
                self.misses += 1
                self._items[key] = value
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return value


class CaseIndexedSource:
    """What the 2D and 3D sources share: cases, an ``(N, 2)`` index whose first column is the
    case position, a ``valid`` mask for padding records, and a per-process :class:`VolumeCache`.

    ``__repr__`` names the content (case ids, index, mask and ``_content_settings()``), never an
    address, the cache size or where the data sits: grain compares it when an iterator state is
    restored, and a run must resume after its dataset folder moved.
    """

    def __init__(self, cases: Sequence[brats.Case], modalities: Sequence[str], data_cfg: DataConfig,
                 index: np.ndarray | Sequence[tuple[int, int]], valid: np.ndarray | None = None,
                 cache_dir: str | Path | None = None):
        self._cases = tuple(cases)
        self._cache_dir = None if cache_dir is None else str(cache_dir)
        self._modalities = tuple(modalities)
        self._cfg = data_cfg
        self._index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self._valid = (np.ones(len(self._index), dtype=bool) if valid is None
                       else np.asarray(valid, dtype=bool).reshape(-1))
        if len(self._valid) != len(self._index):
            raise ValueError(f"valid has {len(self._valid)} entries for an index of {len(self._index)}")
        if len(self._index) and not (0 <= self._index[:, 0].min() and self._index[:, 0].max() < len(self._cases)):
            raise ValueError("the index refers to a case that is not in the case list")
        self._volumes = VolumeCache(data_cfg.cache_volumes)

    def _content_settings(self) -> tuple:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([k.case_id for k in self._cases]).encode())
        h.update(repr((self._modalities, *self._content_settings())).encode())
        h.update(self._index.tobytes())
        h.update(self._valid.tobytes())
        return f"{type(self).__name__}(cases={len(self._cases)}, records={len(self)}, content={h.hexdigest()[:16]})"

    @property
    def cached_cases(self) -> tuple[int, ...]:
        """Case indices whose prepared volume is cached, least recently used first."""
        return self._volumes.keys()

    @property
    def volumes_prepared(self) -> int:
        """How many times a volume was loaded (cache misses)."""
        return self._volumes.misses


class SliceSource(CaseIndexedSource):
    """grain ``RandomAccessDataSource`` of prepared axial slices; picklable for worker processes.

    Args:
      cases: the cases (``brats.Case``) that ``index`` refers to by position.
      modalities: canonical modality names, the channel order.
      data_cfg: the data config (target, preprocessing, ``cache_volumes``).
      index: ``(N, 2)`` ints ``(case_index, z)``, e.g. from :func:`build_slice_index`.
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


class Augment(grain.transforms.RandomMap):
    """Random flips (axes 0 and 1), 90-degree rotations and per-channel intensity scale/shift.

    Geometric changes apply identically to ``image``, ``target`` and ``classes``; intensity
    changes apply to the image's brain pixels only (any channel nonzero), so the zero background
    stays zero. Input and output: one SliceSource item (arrays are never modified in place).
    """

    def __init__(self, augment: AugmentConfig):
        self.augment = augment

    @property
    def active(self) -> bool:
        a = self.augment
        return a.flip or a.rot90 or a.intensity_scale > 0 or a.intensity_shift > 0

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        a = self.augment
        image, target, classes = element["image"], element["target"], element["classes"]
        # Draw every random number whatever the settings, so one setting does not shift the others.
        flips = rng.random(2) < 0.5
        turns = int(rng.integers(4))
        channels = image.shape[-1]
        scale = rng.uniform(1 - a.intensity_scale, 1 + a.intensity_scale, channels).astype(np.float32)
        shift = rng.uniform(-a.intensity_shift, a.intensity_shift, channels).astype(np.float32)
        if a.intensity_scale > 0 or a.intensity_shift > 0:
            brain = np.any(image != 0, axis=-1, keepdims=True)
            image = np.where(brain, image * scale + shift, np.float32(0)).astype(np.float32)
        arrays = [image, target, classes]
        if a.flip:
            for axis in (0, 1):
                if flips[axis]:
                    arrays = [np.flip(x, axis) for x in arrays]
        if a.rot90 and turns:
            arrays = [np.rot90(x, turns, axes=(0, 1)) for x in arrays]
        image, target, classes = (np.ascontiguousarray(x) for x in arrays)
        return {**element, "image": image, "target": target, "classes": classes}


class GlobalBatchSampler:
    """One global order for every process, each process reading its own rows of each batch.

    grain's DataLoader, sharded over P processes, asks process ``p`` for sampler index
    ``i * P + p``. This wrapper maps that read to global position
    ``(i // b) * P * b + p * b + i % b`` (``b`` = the per-process batch) of one unsharded
    sampler, so process ``p`` holds rows ``p*b .. p*b + b - 1`` of every global batch: the global
    batch, row for row and with the same per-record augmentation keys, is the one a single
    process would see. N hosts therefore train exactly like one, dropout masks included.
    A top-level class, so spawned workers can unpickle it.
    """

    def __init__(self, sampler: grain.samplers.IndexSampler, local_batch: int, process_count: int):
        self._sampler = sampler
        self._local_batch = local_batch
        self._processes = process_count

    def __repr__(self) -> str:  # grain compares it when an iterator state is restored
        return f"GlobalBatchSampler({self._sampler!r}, local_batch={self._local_batch}, processes={self._processes})"

    def __len__(self) -> int:
        return len(self._sampler)

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        local, process = divmod(index, self._processes)
        block, row = divmod(local, self._local_batch)
        position = (block * self._processes + process) * self._local_batch + row
        metadata = self._sampler[position]
        return grain.RecordMetadata(index=index, record_key=metadata.record_key, rng=metadata.rng)


def make_sampler(num_records: int, *, train: bool, seed: int, local_batch: int) -> GlobalBatchSampler:
    """The sampler of every jaxseg loader: shuffled endless epochs for training, one ordered pass
    for validation, in one global order read as per-process rows (:class:`GlobalBatchSampler`)."""
    base = grain.samplers.IndexSampler(num_records=num_records, shard_options=grain.sharding.NoSharding(),
                                       shuffle=train, num_epochs=None if train else 1, seed=seed)
    return GlobalBatchSampler(base, local_batch, jax.process_count())


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
    if data_cfg.format != "brats":  # 2D slice records (figshare .mat, image folders)
        from jaxseg.data import slices2d
        return slices2d.build_record_index(cases, modalities, data_cfg, seed, train, cache_dir)
    cache_file = None
    if cache_dir is not None:
        d = data_cfg
        key = _digest({"modalities": list(modalities), "train": train, "seed": seed if train else None,
                       "cases": [_case_signature(c, modalities) for c in cases],
                       "config": [d.image_size, d.crop, d.fit, d.min_tumor_pixels, d.empty_slice_fraction,
                                  d.min_tumor_fraction]})
        cache_file = Path(cache_dir) / f"slice_index_{'train' if train else 'val'}_{key[:16]}.json"
        try:
            stored = json.loads(cache_file.read_text())
            if stored.get("key") == key:
                return np.asarray(stored["index"], dtype=np.int64).reshape(-1, 2)
        except (OSError, ValueError, AttributeError):
            pass  # absent or unreadable: rebuild it
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
        write_text(cache_file, json.dumps({"key": key, "index": index.tolist()}))
    return index


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh ``('data',)`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


def _check_batch(global_batch: int, n_devices: int) -> None:
    if global_batch % n_devices:
        raise JaxsegError(f"train.batch_size = {global_batch} is not divisible by the {n_devices} devices "
                          "the batch is split over; use a multiple of the device count")
    if global_batch % jax.process_count():
        raise JaxsegError(f"train.batch_size = {global_batch} is not divisible by the "
                          f"{jax.process_count()} JAX processes")


def _allow_worker_processes() -> None:
    # grain 0.2.18 workers read absl flags and fail with UnparsedFlagAccessError when the main
    # program never parsed them (google/grain#1355); jaxseg has no absl flags of its own.
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(cfg: Config, cases: Sequence[brats.Case], *, train: bool, seed: int,
                index: np.ndarray | None = None, mesh: Mesh | None = None,
                cache_dir: str | Path | None = None) -> grain.DataLoader:
    """A grain DataLoader of this process's share of the batches.

    Training: shuffled slices, endless epochs (the loop counts steps), :class:`Augment`, sharded by
    JAX process with the remainder dropped so every process has the same number of slices.
    Validation: every indexed slice once in order, padded to whole global batches (``valid`` marks
    the real rows). Per-process batch = ``train.batch_size / jax.process_count()``.
    Batches: dict of numpy ``'image' (B, S, S, C) float32``, ``'target' (B, S, S, K) float32``,
    ``'classes' (B, S, S) uint8``, ``'case' (B,) int32``, ``'z' (B,) int32``, ``'valid' (B,) bool``.

    Args:
      index: ``(N, 2)`` slice index; default :func:`build_slice_index` (with ``cache_dir``).
      cache_dir: folder for the slice index and the prepared-volume store; None = no disk cache.
      mesh: the mesh the batches go to; ``train.batch_size`` must divide over its ``'data'`` axis
        (default: all devices). Raises JaxsegError otherwise.
    The iterator's ``get_state()`` / ``set_state()`` (JSON bytes) resume at the identical batch.
    """
    n_devices = mesh.shape["data"] if mesh is not None else jax.device_count()
    _check_batch(cfg.train.batch_size, n_devices)
    if not 0 <= seed < 2 ** 32:
        raise JaxsegError(f"train.seed must be in [0, 2**32) for the data order; got {seed}")
    modalities = canonical_modalities(cfg)
    source_class = SliceSource
    if cfg.data.format != "brats":  # 2D slice records (figshare .mat, image folders): same batches
        from jaxseg.data.slices2d import RecordSource
        source_class = RecordSource
    if index is None:
        index = build_slice_index(cases, modalities, cfg.data, seed, train, cache_dir)
    index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
    if not len(index):
        raise JaxsegError(f"data: no {'training' if train else 'validation'} slices in {len(cases)} "
                          f"{'cases' if cfg.data.format == 'brats' else 'records'} (check data.min_tumor_pixels, "
                          "data.min_tumor_fraction, data.empty_slice_fraction)")
    index, valid = padded_index(index, cfg.train.batch_size, train, "training slices")
    source = source_class(cases, modalities, cfg.data, index, valid, cache_dir)
    augment = Augment(cfg.data.augment)
    return build_loader(source, [augment] if train and augment.active else [], train=train, seed=seed,
                        global_batch=cfg.train.batch_size, workers=cfg.data.workers)


def padded_index(index: np.ndarray, global_batch: int, train: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(index, valid)``: validation repeats the last record up to whole global batches (marked
    not valid) so every host runs the same number of batches; training needs one full batch."""
    valid = np.ones(len(index), dtype=bool)
    if not train:
        pad = -len(index) % global_batch
        index = np.concatenate([index, np.repeat(index[-1:], pad, axis=0)])
        valid = np.concatenate([valid, np.zeros(pad, dtype=bool)])
    elif len(index) < global_batch:
        raise JaxsegError(f"train.batch_size = {global_batch} is larger than the {len(index)} {what}")
    return index, valid


def build_loader(source: CaseIndexedSource, operations: list, *, train: bool, seed: int, global_batch: int,
                 workers: int) -> grain.DataLoader:
    """The grain DataLoader every jaxseg loader ends with: one global order read as per-process
    rows (:func:`make_sampler`), ``operations`` then batching to the per-process batch."""
    local_batch = global_batch // jax.process_count()
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    sampler = make_sampler(len(source), train=train, seed=seed, local_batch=local_batch)
    operations = [*operations, grain.transforms.Batch(batch_size=local_batch, drop_remainder=train)]
    if workers > 0:
        _allow_worker_processes()
    return grain.DataLoader(
        data_source=source, sampler=sampler, operations=operations, shard_options=shard,
        worker_count=workers,
        read_options=grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=2 * local_batch))


def device_batches(iterator: Iterable[dict[str, np.ndarray]], mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
    """Put each per-process numpy batch on ``mesh`` as global arrays sharded on ``'data'``.

    Each array of local shape ``(B_local, ...)`` becomes a global ``(B_local * process_count, ...)``
    ``jax.Array`` with ``NamedSharding(mesh, P('data'))``: every device holds ``B / n_devices`` rows.
    Raises JaxsegError when the global batch does not divide over the ``'data'`` axis.
    """
    sharding = NamedSharding(mesh, P("data"))
    n_devices = mesh.shape["data"]
    for batch in iterator:
        rows = len(next(iter(batch.values()))) * jax.process_count()
        _check_batch(rows, n_devices)
        yield {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
