"""The grain machinery every jaxseg loader shares: sources indexed by case, the one global
order, batching, device placement. The formats and samplings that fill it are in
:mod:`jaxseg.data.formats`; the loader builder is :func:`jaxseg.data.loader.make_loader`.

Why it looks the way it does:

- **Lazy volumes, bounded cache.** A :class:`CaseIndexedSource` prepares a volume the first time
  one of its records is asked for and keeps ``data.cache_volumes`` prepared volumes per process
  (grain workers each hold their own; :class:`jaxseg.data.store.VolumeCache`).
- **Checkpointable order.** grain's iterator state is a few integers plus ``repr(sampler)`` and
  ``repr(source)``, checked on restore; a source has a content-derived ``repr``, so a
  changed dataset or preprocessing is refused rather than silently resumed.
- **One global order on every host.** :class:`GlobalBatchSampler` gives process ``p`` its own
  contiguous rows of each global batch of one shuffled order, so N hosts train like one.
- **Validation sees every record exactly once, on every host.** The validation index is padded
  to a multiple of the global batch (repeating its last entry) and each element carries
  ``valid``; all hosts get the same number of full batches, and metrics ignore padded rows.
- **Random augmentation is reproducible.** grain gives each record ``Philox(seed + index)``, so
  the augmented stream depends on the seed only, not on the worker or thread count.
- **Workers are spawned processes**, so sources and transforms are picklable top-level classes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg.config import AugmentConfig, DataConfig
from jaxseg.data import store
from jaxseg.errors import JaxsegError

READ_THREADS = 2  # threads reading the source per process; this project targets 2-core machines


class CaseIndexedSource:
    """What the 2D and 3D sources share: cases, an ``(N, 2)`` index whose first column is the
    case position, a ``valid`` mask for padding records, and a per-process :class:`VolumeCache`.

    ``__repr__`` names the content (case ids, index, mask and ``_content_settings()``), never an
    address, the cache size or where the data sits: grain compares it when an iterator state is
    restored, and a run must resume after its dataset folder moved.
    """

    def __init__(self, cases: Sequence[Any], modalities: Sequence[str], data_cfg: DataConfig,
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
        self._volumes = store.VolumeCache(data_cfg.cache_volumes)

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


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh ``('data',)`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


def check_batch(global_batch: int, n_devices: int) -> None:
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
        check_batch(rows, n_devices)
        yield {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
