"""BraTS conventions, all in one place: file naming, case discovery, file labels and tumor volumes.

Two file namings are recognised (by the file-name suffix, not by folder names):

* ``brats2021`` (BraTS 2017-2021): ``<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, seg labels 0, 1, 2, 4;
* ``brats2023`` (BraTS 2023+, GLI, PED, SSA, MEN, MET): ``<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``,
  seg labels 0, 1, 2, 3.

Uncompressed ``.nii`` works too. Inside jaxseg labels are *internal classes*: 0 background,
1 NCR (necrotic / non-enhancing core), 2 ED (edema), 3 ET (enhancing tumor), uint8; file label 4 of
the 2021 convention is internal 3. The BraTS regions are WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
Internal classes, regions and what a model predicts of them (the target kinds, the training
target, outputs -> classes) are :mod:`jaxseg.target`'s.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jaxseg.data import checks
from jaxseg.data.nifti import VolumeProperties, geometry_mismatch, read_label_volume, read_volume
from jaxseg.errors import JaxsegError, file_error
# The internal classes and the regions made of them are the target module's; here beside the
# file labels they are converted from.
from jaxseg.target import CLASS_NAMES, REGION_CLASSES, REGIONS, region_masks  # noqa: F401

MODALITIES = ("flair", "t1", "t1ce", "t2")
# Every accepted modality name -> its canonical (2017-2021) name; canonical names map to themselves.
MODALITY_ALIASES: dict[str, str] = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2",
                                    "t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
NAMINGS = ("brats2021", "brats2023")
# The file suffix of each canonical modality (and the seg) in each naming.
SUFFIXES: dict[str, dict[str, str]] = {
    "brats2021": {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "seg": "seg"},
    "brats2023": {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"},
}
SEPARATORS = {"brats2021": "_", "brats2023": "-"}
FILE_LABELS = {"brats2021": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3)}

_PATTERNS = {
    naming: re.compile(rf"^(?P<case>.+){re.escape(SEPARATORS[naming])}"
                       rf"(?P<mod>{'|'.join(SUFFIXES[naming].values())})\.nii(?:\.gz)?$", re.IGNORECASE)
    for naming in NAMINGS
}
_EXPECTED = "expected <case>_flair.nii.gz ... <case>_seg.nii.gz or <case>-t2f.nii.gz ... <case>-seg.nii.gz"


@dataclass(frozen=True)
class Case:
    """One subject: its image files by canonical modality and its segmentation, if any."""

    case_id: str
    folder: Path
    naming: str  # 'brats2021' (labels 0,1,2,4) or 'brats2023' (labels 0,1,2,3)
    images: dict[str, Path] = field(default_factory=dict)  # canonical modality -> file
    seg: Path | None = None

    def expected_file(self, modality: str) -> Path:
        """Where this case's file for ``modality`` (any alias, or 'seg') would be by its naming."""
        key = "seg" if modality == "seg" else canonical_modality(modality)
        return self.folder / f"{self.case_id}{SEPARATORS[self.naming]}{SUFFIXES[self.naming][key]}.nii.gz"


def canonical_modality(name: str) -> str:
    """``'t2f'`` -> ``'flair'`` etc.; canonical names pass through. Unknown names raise."""
    try:
        return MODALITY_ALIASES[name.lower()]
    except KeyError:
        raise JaxsegError(f"unknown modality {name!r} (known: {', '.join(MODALITY_ALIASES)})") from None


def _canonical_list(modalities: Iterable[str]) -> tuple[str, ...]:
    names = tuple(canonical_modality(m) for m in modalities)
    if len(set(names)) != len(names):
        raise JaxsegError(f"modalities name one modality twice: {tuple(modalities)}")
    return names


def parse_name(path: str | Path) -> tuple[str, str, str] | None:
    """``(case_id, naming, canonical modality or 'seg')`` for a BraTS file name, else None."""
    name = Path(path).name
    for naming, pattern in _PATTERNS.items():
        match = pattern.match(name)
        if match:
            suffix = match["mod"].lower()
            modality = "seg" if suffix == "seg" else MODALITY_ALIASES[suffix]
            return match["case"], naming, modality
    return None


def _group(files: Iterable[Path]) -> list[Case]:
    """Group BraTS-named files into cases by (folder, case id, naming)."""
    groups: dict[tuple[Path, str, str], dict[str, Path]] = {}
    for path in sorted(files):
        if path.name.startswith("."):  # hidden files, e.g. half-written temporaries of atomic_path
            continue
        parsed = parse_name(path)
        if parsed is None:
            continue
        case_id, naming, modality = parsed
        members = groups.setdefault((path.parent, case_id, naming), {})
        if modality in members:
            raise file_error(path, f"case {case_id} has two {modality} files (also {members[modality].name})")
        members[modality] = path
    cases = []
    for (folder, case_id, naming), members in groups.items():
        seg = members.pop("seg", None)
        images = {m: members[m] for m in MODALITIES if m in members}
        cases.append(Case(case_id=case_id, folder=folder, naming=naming, images=images, seg=seg))
    return sorted(cases, key=lambda c: (c.case_id, str(c.folder)))


def _require(case: Case, modalities: Sequence[str]) -> None:
    for modality in modalities:
        if modality not in case.images:
            raise file_error(case.expected_file(modality),
                             f"missing: case {case.case_id} has no {modality} image")


def find_cases(root: str | Path, modalities: Sequence[str] | None = None) -> list[Case]:
    """All BraTS cases under ``root`` (searched recursively), sorted by case id.

    Args:
      root: a dataset folder (case folders may be nested at any depth) or one case folder.
      modalities: if given (any aliases), every case must have each of them, else JaxsegError
        naming the case and the missing file.
    Raises:
      JaxsegError for a missing folder, a folder with no cases, a case id found in two folders,
      or two files for one modality of a case.
    """
    root = Path(root)
    if not root.exists():
        raise file_error(root, "no such folder")
    if not root.is_dir():
        raise file_error(root, "is not a folder (give the dataset folder)")
    cases = _group(p for p in root.rglob("*.nii*") if p.is_file())
    if not cases:
        raise file_error(root, f"no BraTS cases found under this folder ({_EXPECTED})")
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise file_error(case.folder, f"case {case.case_id} is also in {seen[case.case_id].folder}; "
                                          "case ids must be unique")
        seen[case.case_id] = case
    if modalities is not None:
        wanted = _canonical_list(modalities)
        for case in cases:
            _require(case, wanted)
    return cases


def case_from_path(path: str | Path, *, modality: str = "flair") -> Case:
    """The case of a case folder, or of any one of its files (images or seg).

    A lone ``.nii``/``.nii.gz`` that follows neither naming becomes a single-modality case: case id =
    the file name without extension, naming 'brats2021', ``images = {modality: path}`` (flair by
    default; any alias accepted), no seg.
    """
    path = Path(path)
    if not path.exists():
        raise file_error(path, "no such file or folder")
    if path.is_dir():
        cases = _group(p for p in path.rglob("*.nii*") if p.is_file())
        if not cases:
            raise file_error(path, f"no BraTS case found in this folder ({_EXPECTED})")
        if len(cases) > 1:
            ids = ", ".join(c.case_id for c in cases[:3]) + (", ..." if len(cases) > 3 else "")
            raise file_error(path, f"holds {len(cases)} cases ({ids}); give one case folder or file")
        return cases[0]
    parsed = parse_name(path)
    if parsed is None:
        name = path.name
        if not (name.lower().endswith(".nii.gz") or name.lower().endswith(".nii")):
            raise file_error(path, "not a NIfTI file name (expected .nii or .nii.gz)")
        stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]
        return Case(case_id=stem, folder=path.parent, naming="brats2021",
                    images={canonical_modality(modality): path}, seg=None)
    if path.name.startswith("."):  # as in find_cases: hidden files (half-written temporaries) are no case
        raise file_error(path, "a hidden file (half-written, or not meant to be read); give a visible case file")
    case_id, naming, _ = parsed
    siblings = [p for p in path.parent.iterdir() if p.is_file()]
    return next(c for c in _group(siblings) if c.case_id == case_id and c.naming == naming)


def load_case(case: Case, modalities: Sequence[str] | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, VolumeProperties]:
    """Read a case's images and segmentation, checking that they belong together.

    Args:
      case: from :func:`find_cases` or :func:`case_from_path`.
      modalities: channel order (any aliases); None = the case's images in MODALITIES order.
    Returns:
      image ``(X, Y, Z, C)`` float32 in RAS order, internal classes ``(X, Y, Z)`` uint8 (None if the
      case has no seg), and the properties of the first modality (use them to write results).
    Raises:
      JaxsegError (one line naming the file) for a missing file, unreadable or non-3D data,
      NaN/Inf voxels, volumes of different shapes or affines, seg labels outside the naming's set,
      or a modality that is constant or a label map (:func:`jaxseg.data.checks.check_content`).
    """
    wanted = _canonical_list(modalities) if modalities is not None else tuple(case.images)
    if not wanted:
        raise file_error(case.folder, f"case {case.case_id} has no image files")
    _require(case, wanted)
    channels, reference = [], None
    for modality in wanted:
        volume, props = read_volume(case.images[modality])
        if reference is not None and (problem := geometry_mismatch(props, reference)):
            raise JaxsegError(problem)
        reference = reference or props
        channels.append(volume)
    image = np.stack(channels, axis=-1)
    # An all-zero or constant modality, or a label map given as an image, would be segmented
    # into a confident wrong answer; refuse it here, for training as for inference.
    checks.check_content(image, [case.images[m] for m in wanted])
    classes = None
    if case.seg is not None:
        labels, seg_props = read_label_volume(case.seg)
        if problem := geometry_mismatch(seg_props, reference):
            raise JaxsegError(problem)
        classes = to_internal(labels, case.naming, case.seg)
    return image, classes, reference


def label_values(seg: np.ndarray) -> tuple[int, ...]:
    """The distinct values of an integer label map, sorted (bincount: ~10x faster than np.unique)."""
    seg = np.asarray(seg)
    if seg.size and np.issubdtype(seg.dtype, np.integer) and seg.min() >= 0 and seg.max() < 65536:
        counts = np.bincount(seg.ravel())
        return tuple(int(v) for v in np.flatnonzero(counts))
    return tuple(int(v) for v in np.unique(seg))


def _lut(naming: str) -> np.ndarray:
    if naming not in FILE_LABELS:
        raise JaxsegError(f"unknown BraTS naming {naming!r} (known: {', '.join(NAMINGS)})")
    return np.asarray(FILE_LABELS[naming], dtype=np.uint8)


def to_internal(seg: np.ndarray, naming: str, path: str | Path = "segmentation") -> np.ndarray:
    """File labels -> internal classes.

    Args:
      seg: ``(...)`` integer labels in the ``naming`` convention (0,1,2,4 or 0,1,2,3).
      path: named in the error message.
    Returns:
      ``(...)`` uint8 internal classes 0..3. Raises JaxsegError naming ``path`` and the bad values.
    """
    _lut(naming)  # validates the naming
    allowed = FILE_LABELS[naming]
    present = label_values(seg)
    bad = [v for v in present if v not in allowed]
    if bad:
        raise file_error(path, f"label values {bad} are not {naming} labels (expected {', '.join(map(str, allowed))})")
    inverse = np.zeros(max(allowed) + 1, dtype=np.uint8)
    inverse[list(allowed)] = np.arange(len(allowed), dtype=np.uint8)
    return inverse[np.asarray(seg).astype(np.intp, copy=False)]


def from_internal(classes: np.ndarray, naming: str) -> np.ndarray:
    """Internal classes ``(...)`` (0..3) -> uint8 labels in the file convention of ``naming``."""
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() > 3):
        raise ValueError(f"internal classes must be 0..3, got {label_values(classes)}")
    return _lut(naming)[classes.astype(np.intp, copy=False)]


def tumor_volumes_ml(classes: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volumes of WT, TC and ET in millilitres.

    Args:
      classes: ``(X, Y, Z)`` internal classes.
      spacing: voxel size in mm, three values (canonical order, as in VolumeProperties.spacing).
    """
    counts = np.bincount(np.asarray(classes, dtype=np.uint8).ravel(), minlength=4)[:4]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {region: int(counts[list(members)].sum()) * voxel_ml for region, members in REGION_CLASSES.items()}
