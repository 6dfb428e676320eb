"""The one store of prepared volumes: on disk (``<cache_dir>/<kind>/<case>-<key>``) and in memory
(a per-process LRU), shared by every data format and both samplings (2D slices, 3D patches).

- **Keys name the content.** A stored volume's key is a hash of its input files (path, size,
  mtime) and the settings that decide it, so a changed file or setting is prepared again and
  never read stale; :func:`digest` also keys the stored indexes.
- **Arrays first, the JSON last.** A stored volume is ``.npy`` arrays (memory-mapped, read-only
  when read back) plus a JSON of its small fields, written last: a volume without its JSON is
  never read, so a run killed mid-write prepares it again.
- **One LRU per process.** :class:`VolumeCache` is thread-safe (grain reads with several threads)
  and pickles empty, so each spawned grain worker keeps its own.
"""
from __future__ import annotations

import collections
import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxseg.files import atomic_path, write_text

STORE_VERSION = 1  # bump when a stored index or volume format changes


def file_signature(path: Path | None) -> list:
    """``[path, size, mtime_ns]`` of a file (``[None]`` for no file; size and mtime None if unreadable)."""
    if path is None:
        return [None]
    try:
        st = Path(path).stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def case_signature(case: Any, modalities: Sequence[str]) -> list:
    """A BraTS case's id and the signature of each file it is read from (``case.images[m]``, ``case.seg``)."""
    return [case.case_id, [file_signature(case.images.get(m)) for m in modalities], file_signature(case.seg)]


def digest(obj: Any) -> str:
    """A hex SHA-256 of the JSON of ``obj`` and :data:`STORE_VERSION`: the key of stored content."""
    return hashlib.sha256(json.dumps([STORE_VERSION, obj]).encode()).hexdigest()


def beside(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (not ``with_suffix``: case ids may contain dots)."""
    return stem.parent / (stem.name + suffix)


def stem(cache_dir: str | Path, kind: str, case_id: str, key: Any) -> Path:
    """Where the prepared volume of ``case_id`` keyed by ``key`` (any JSON) is stored: ``kind`` is
    the store's folder (``volumes`` for prepared slices, ``volumes3d`` for brain boxes)."""
    return Path(cache_dir) / kind / f"{case_id}-{digest(key)[:16]}"


def read_volume(path: Path, arrays: Sequence[str]) -> tuple[dict[str, np.ndarray], dict] | None:
    """``(arrays, meta)`` stored at ``path`` (a :func:`stem`): each named array memory-mapped
    read-only, and the JSON; None when absent, partial or unreadable (then prepare it again)."""
    try:
        meta = json.loads(beside(path, ".json").read_text())
        return {name: np.load(beside(path, f".{name}.npy"), mmap_mode="r") for name in arrays}, meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_volume(path: Path, arrays: Mapping[str, np.ndarray], meta: dict) -> None:
    """Store ``arrays`` as ``<path>.<name>.npy`` and ``meta`` as ``<path>.json`` (last), atomically each."""
    for name, array in arrays.items():
        with atomic_path(beside(path, f".{name}.npy")) as tmp:
            np.save(tmp, array)
    write_text(beside(path, ".json"), json.dumps(meta))


def read_index(path: Path, key: str) -> np.ndarray | None:
    """The ``(N, 2)`` int64 index stored at ``path`` under ``key``; None if absent, unreadable or
    of another key."""
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return np.asarray(stored["index"], dtype=np.int64).reshape(-1, 2)
    except (OSError, ValueError, AttributeError):
        pass
    return None


def write_index(path: Path, key: str, index: np.ndarray) -> None:
    """Store an ``(N, 2)`` index under ``key`` (read back by :func:`read_index`)."""
    write_text(path, json.dumps({"key": key, "index": np.asarray(index).tolist()}))


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
