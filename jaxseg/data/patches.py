"""The 3D half of the grain pipeline: cases -> brain-box volumes -> PatchSource -> RandomPatch -> batches.

Why it looks the way it does:

- **Whole volumes, cropped to the brain.** A 3D model sees voxels at their own spacing: no
  resampling, only normalisation (``data.normalize``) and a crop to the brain's bounding box
  (``data.crop``), recorded in a :class:`VolumeBox` that :func:`restore_box` undoes exactly.
- **One record per (case, draw).** Records are ``samples_per_case`` draws of every case; the
  grain sampler shuffles them, so a batch mixes cases and an epoch visits each case equally often.
- **Where a patch goes is decided by grain's per-record generator.** :class:`PatchSource` returns
  the cached volume *by reference* (no copy) and :class:`RandomPatch`, a ``RandomMap``, places and
  cuts the patch with ``Philox(seed + position)``, the generator grain derives from the record's
  *global* position in the sampler's order. So (a) placement is the same for any number of
  workers, threads or JAX processes, and resumes exactly from a checkpointed iterator; (b) the
  same (case, draw) record gets a new patch in every epoch (a generator seeded by the record
  index alone would cut the same ``samples_per_case`` patches forever). Whole volumes never cross
  a process boundary: grain runs the source and the operations of a worker in that worker's
  process, and only batched patches go through its queue. The price: a volume stays alive while
  a reference waits in the read-ahead buffer (at most ``2 * batch`` of them), even if the LRU
  evicted it.
- **Lazy volumes, bounded cache, optional store on disk**, as for slices (:mod:`jaxseg.data.store`):
  ``data.cache_volumes`` prepared volumes per process; with ``cache_dir`` each prepared volume is
  saved as ``.npy`` + JSON and memory-mapped afterwards.
The loader is :func:`jaxseg.data.loader.make_loader` with :data:`jaxseg.data.formats.PATCHES`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import grain
import numpy as np

from jaxseg.config import DataConfig
from jaxseg.data import brats, preprocess, store
from jaxseg.data.pipeline import CaseIndexedSource
from jaxseg.errors import JaxsegError
from jaxseg.target import target_kind

__all__ = ["VolumeBox", "PreparedVolume3D", "PatchSpec", "brain_box", "restore_box", "prepare_volume_3d",
           "load_prepared_volume", "patch_range", "place_patch", "cut_patch", "patch_index", "PatchSource",
           "RandomPatch"]

PATCH_MULTIPLE = 8  # a 3D U-Net halves a patch three times; 8 | P keeps every level whole
BRAIN_CANDIDATES = 64  # random voxels tried per brain-centred draw; brain fills ~1/2 of its box


@dataclass(frozen=True)
class VolumeBox:
    """Where a prepared volume sits in its canonical volume: voxels ``start:stop`` per axis.

    start, stop: ``(3,)`` ints, half-open, inside ``volume_shape`` (the canonical ``(X, Y, Z)``).
    """

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    volume_shape: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    def as_dict(self) -> dict:
        """JSON-friendly form, read back by :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VolumeBox":
        return cls(*(tuple(int(v) for v in d[k]) for k in ("start", "stop", "volume_shape")))


@dataclass(frozen=True)
class PreparedVolume3D:
    """One case ready for patches.

    image: ``(X', Y', Z', C)`` float32, normalised, cropped to ``box``; classes: ``(X', Y', Z')``
    uint8 internal classes or None; box: where the crop came from; tumor_voxels: ``(T, 3)`` int32
    coordinates (in the crop) of the voxels with class > 0, for tumor-centred patches.
    """

    image: np.ndarray
    classes: np.ndarray | None
    box: VolumeBox
    tumor_voxels: np.ndarray


def brain_box(mask: np.ndarray, crop: str) -> VolumeBox:
    """The tight 3D bounding box of ``mask (X, Y, Z)`` bool; the whole volume for ``crop='none'`` or
    an empty mask. No margin: nothing is resampled, so the edge needs no context voxels."""
    shape = tuple(int(n) for n in mask.shape)
    if crop == "none" or not mask.any():
        return VolumeBox((0, 0, 0), shape, shape)
    if crop != "brain_bbox":
        raise JaxsegError(f"data.crop: unknown method {crop!r}")
    axes = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return VolumeBox(tuple(int(a[0]) for a in axes), tuple(int(a[-1]) + 1 for a in axes), shape)


def restore_box(pred: np.ndarray, box: VolumeBox, fill: float = 0) -> np.ndarray:
    """Put ``pred (X', Y', Z', ...)`` (shaped like the prepared volume) back into the canonical grid:
    ``(X, Y, Z, ...)`` of ``pred``'s dtype, ``fill`` outside the box."""
    pred = np.asarray(pred)
    if pred.shape[:3] != box.shape:
        raise ValueError(f"prediction of shape {pred.shape} does not match the box {box.shape}")
    out = np.full(box.volume_shape + pred.shape[3:], fill, dtype=pred.dtype)
    out[tuple(slice(a, b) for a, b in zip(box.start, box.stop))] = pred
    return out


def prepare_volume_3d(image: np.ndarray, classes: np.ndarray | None, data_cfg: DataConfig) -> PreparedVolume3D:
    """Normalise and crop one canonical volume: ``image (X, Y, Z, C)``, ``classes (X, Y, Z)`` uint8 or None."""
    if image.ndim != 4:
        raise JaxsegError(f"image of shape {image.shape}: expected (X, Y, Z, C)")
    if classes is not None and classes.shape != image.shape[:3]:
        raise JaxsegError(f"labels of shape {classes.shape} do not match the image {image.shape[:3]}")
    mask = preprocess.brain_mask(image)
    box = brain_box(mask, data_cfg.crop)
    inside = tuple(slice(a, b) for a, b in zip(box.start, box.stop))
    # The box holds every brain voxel, so its statistics are the volume's and the normalised
    # volume is 0 outside it: normalising the box alone is the whole-volume result, cheaper.
    normalized = preprocess.normalize(image[inside], mask[inside], data_cfg.normalize)
    cropped = None if classes is None else np.ascontiguousarray(classes[inside], dtype=np.uint8)
    tumor = (np.zeros((0, 3), np.int32) if cropped is None
             else np.argwhere(cropped > 0).astype(np.int32))
    return PreparedVolume3D(image=normalized, classes=cropped, box=box, tumor_voxels=tumor)


_STORED_ARRAYS = (("image", "image"), ("classes", "classes"), ("tumor_voxels", "tumor"))  # field, file part


def load_prepared_volume(case: brats.Case, modalities: Sequence[str], data_cfg: DataConfig,
                         cache_dir: str | Path | None = None) -> PreparedVolume3D:
    """The :class:`PreparedVolume3D` of a labelled case: from the volume store in ``cache_dir``
    (:mod:`jaxseg.data.store`; memory-mapped, read-only arrays) when present, else loaded, prepared
    and, with ``cache_dir``, stored. Raises JaxsegError for a case without segmentation (patches
    need labels)."""
    stem = None if cache_dir is None else store.stem(
        cache_dir, "volumes3d", case.case_id,
        ["volume3d", 1, store.case_signature(case, modalities), data_cfg.normalize, data_cfg.crop])
    stored = None if stem is None else store.read_volume(stem, [part for _, part in _STORED_ARRAYS])
    if stored is not None:
        arrays, meta = stored
        try:
            box = VolumeBox.from_dict(meta["box"])
            if arrays["image"].shape[:3] == box.shape and arrays["classes"].shape == box.shape:
                return PreparedVolume3D(box=box, **{field: arrays[part] for field, part in _STORED_ARRAYS})
        except (ValueError, KeyError, TypeError):
            pass  # from another version: prepare it again
    image, classes, _ = brats.load_case(case, modalities)
    if classes is None:
        raise JaxsegError(f"{case.folder}: case {case.case_id} has no segmentation; training and validation need one")
    prepared = prepare_volume_3d(image, classes, data_cfg)
    if stem is not None:
        store.write_volume(stem, {part: getattr(prepared, field) for field, part in _STORED_ARRAYS},
                           {"box": prepared.box.as_dict()})
    return prepared


@dataclass(frozen=True)
class PatchSpec:
    """How patches are placed: ``size`` P (a positive multiple of 8), ``mode`` ``'center'`` or
    ``'tumor'``, and for ``'tumor'`` the probability of centring a patch on a tumor voxel."""

    size: int
    mode: str = "tumor"
    tumor_probability: float = 0.67

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) \
                or self.size < PATCH_MULTIPLE or self.size % PATCH_MULTIPLE:
            raise JaxsegError(f"data.patch_size must be a positive multiple of {PATCH_MULTIPLE} (a 3D U-Net "
                              f"halves it three times); got {self.size!r}")
        # mode and tumor_probability: checked by the config (data.patch_mode, data.tumor_probability).


def patch_range(shape: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``, ``(3,)`` int64 each: the patch origins that keep a ``size``-cube inside the volume
    of ``shape`` zero-padded (evenly on both sides) to at least ``size`` per axis; inclusive."""
    n = np.asarray(shape[:3], dtype=np.int64)
    lo = -(np.maximum(size - n, 0) // 2)
    return lo, lo + np.maximum(n, size) - size


def place_patch(volume: PreparedVolume3D, spec: PatchSpec, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``(origin (3,) int64, centred on tumor)``: the patch's first voxel in the prepared volume.

    ``'center'``: the middle of :func:`patch_range` (the centre crop). ``'tumor'``: with probability
    ``tumor_probability`` (and a case with tumor) the centre is a random tumor voxel, else a random
    brain voxel (the first brain voxel among ``BRAIN_CANDIDATES`` uniform ones; the box centre if
    none is); then clipped into :func:`patch_range`. The number of random draws is fixed, so the
    generator's later use (flips) does not depend on the outcome.
    """
    shape = volume.image.shape[:3]
    lo, hi = patch_range(shape, spec.size)
    if spec.mode == "center":
        return lo + (hi - lo) // 2, False
    wants_tumor = rng.random() < spec.tumor_probability
    tumor_pick = int(rng.integers(max(len(volume.tumor_voxels), 1)))
    candidates = rng.integers(0, shape, size=(BRAIN_CANDIDATES, 3))
    on_tumor = bool(wants_tumor and len(volume.tumor_voxels))
    if on_tumor:
        centre = np.asarray(volume.tumor_voxels[tumor_pick], dtype=np.int64)
    else:
        brain = np.flatnonzero(np.any(volume.image[tuple(candidates.T)] != 0, axis=-1))
        centre = candidates[brain[0]] if len(brain) else np.asarray(shape, np.int64) // 2
    return np.clip(centre - spec.size // 2, lo, hi), on_tumor


def cut_patch(array: np.ndarray, origin: Sequence[int], size: int) -> np.ndarray:
    """A fresh ``(size, size, size, ...)`` copy of ``array[o:o + size]`` per axis (array may be a memmap);
    zero where the cube leaves the array (negative origins included)."""
    out = np.zeros((size,) * 3 + array.shape[3:], dtype=array.dtype)
    src, dst = [], []
    for o, n in zip((int(v) for v in origin), array.shape[:3]):
        a, b = max(o, 0), max(min(o + size, n), max(o, 0))
        src.append(slice(a, b))
        dst.append(slice(a - o, b - o))
    out[tuple(dst)] = array[tuple(src)]
    return out


def patch_index(num_cases: int, samples_per_case: int) -> np.ndarray:
    """``(num_cases * samples_per_case, 2)`` int64 records ``(case_index, draw)``, case by case
    (``samples_per_case`` >= 1, as ``data.samples_per_case`` is checked by the config)."""
    cases, draws = np.meshgrid(np.arange(num_cases), np.arange(samples_per_case), indexing="ij")
    return np.stack([cases.ravel(), draws.ravel()], axis=1).astype(np.int64)


class PatchSource(CaseIndexedSource):
    """grain ``RandomAccessDataSource`` of prepared volumes, one record per (case, draw); picklable.

    Args:
      cases: the cases (``brats.Case``) that ``index`` refers to by position.
      modalities: canonical modality names, the channel order.
      data_cfg: the data config (target, normalize, crop, ``cache_volumes``).
      spec: the patch placement; part of the content named by ``repr`` (a resumed iterator with
        other patches is refused), used by the :class:`RandomPatch` built from it.
      index: ``(N, 2)`` ints ``(case_index, draw)``, e.g. :func:`patch_index`.
      valid: ``(N,)`` bool, False for padding records (validation); default all True.
      cache_dir: where prepared volumes are stored (see :func:`load_prepared_volume`); None = off.
    Items: ``'volume'`` the cached :class:`PreparedVolume3D` itself (shared and read-only: do not
    modify; :class:`RandomPatch` cuts copies from it), ``'case' int32``, ``'valid' bool``.
    """

    def __init__(self, cases: Sequence[brats.Case], modalities: Sequence[str], data_cfg: DataConfig,
                 spec: PatchSpec, index: np.ndarray | Sequence[tuple[int, int]],
                 valid: np.ndarray | None = None, cache_dir: str | Path | None = None):
        super().__init__(cases, modalities, data_cfg, index, valid, cache_dir)
        self.spec = spec

    def _content_settings(self) -> tuple:
        c, s = self._cfg, self.spec
        return (c.target, c.normalize, c.crop, s.size, s.mode, s.tumor_probability)

    def volume(self, case_index: int) -> PreparedVolume3D:
        """The prepared volume of ``cases[case_index]``, from the LRU cache or loaded now (read-only)."""
        def load() -> PreparedVolume3D:
            prepared = load_prepared_volume(self._cases[case_index], self._modalities, self._cfg, self._cache_dir)
            for array in (prepared.image, prepared.classes, prepared.tumor_voxels):
                if array.flags.writeable:
                    array.flags.writeable = False  # shared by every item of this case: guard the cache
            return prepared
        return self._volumes.get(case_index, load)

    def __getitem__(self, i: int) -> dict:
        case_index = int(self._index[i, 0])
        return {"volume": self.volume(case_index), "case": np.int32(case_index), "valid": np.bool_(self._valid[i])}


class RandomPatch(grain.transforms.RandomMap):
    """Cut one patch from a :class:`PatchSource` item, placed by :func:`place_patch`, then optionally
    flipped on each axis with probability 1/2 (image, target and classes alike).

    Output: ``'image' (P, P, P, C) float32``, ``'target' (P, P, P, K) float32``
    (``TargetKind.encode``), ``'classes' (P, P, P) uint8``, ``'case' int32``, ``'origin' (3,) int32``
    (the patch's first voxel in the canonical volume: box start + placement; negative or past the
    volume where the patch is zero padding; flips do not change it), ``'valid' bool``.
    """

    def __init__(self, spec: PatchSpec, target: str, flip: bool = False):
        self.spec, self.target, self.flip = spec, target, flip

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        volume: PreparedVolume3D = element["volume"]
        origin, _ = place_patch(volume, self.spec, rng)
        flips = rng.random(3) < 0.5  # drawn whatever the setting, so the setting shifts nothing else
        image = cut_patch(volume.image, origin, self.spec.size)
        classes = cut_patch(volume.classes, origin, self.spec.size)
        if self.flip:
            axes = tuple(int(a) for a in np.flatnonzero(flips))
            if axes:
                image = np.ascontiguousarray(np.flip(image, axes))
                classes = np.ascontiguousarray(np.flip(classes, axes))
        return {"image": image, "target": target_kind(self.target).encode(classes), "classes": classes,
                "case": element["case"], "origin": (np.asarray(volume.box.start) + origin).astype(np.int32),
                "valid": element["valid"]}
