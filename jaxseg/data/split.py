"""Train / validation / test splits by subject, and the manifest that records them.

A split must never put two scans of one person on both sides, or validation scores measure
memory rather than generalisation. BraTS 2023+ ids name a subject and a timepoint
(``BraTS-GLI-00001-000`` and ``BraTS-GLI-00001-001`` are one subject), so cases are grouped by
:func:`subject_id` before splitting. Every other id (BraTS 2017-2021 ``BraTS2021_00000``,
``Brats18_2013_2_1``, ``Phantom_0_000``) is its own subject.

Counts per split, over ``n`` subjects: the largest-remainder rounding of ``ratio * n`` (floor each
share, then give the leftover subjects to the largest fractional parts; ties go to train, then
val, then test), so the counts always add up to ``n`` and each is within one of its exact share:
100 subjects at 0.7/0.15/0.15 give 70/15/15, 12 give 8/2/2, 10 give 7/2/1. Then small sets are
adjusted so every split is usable: train keeps at least one subject; val gets one when there are
at least 2 subjects and its ratio is above 0; test gets one when there are at least 3 and its
ratio is above 0 (3 subjects give 1/1/1, 2 give 1/1/0, 1 gives 1/0/0).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxseg.errors import JaxsegError, file_error
from jaxseg.files import write_text

SPLITS = ("train", "val", "test")
# BraTS 2023+: <challenge>-<subject number>-<timepoint>, e.g. BraTS-GLI-00001-000, BraTS-MEN-RT-0001-1.
_TIMEPOINT_ID = re.compile(r"^(BraTS-[A-Za-z][A-Za-z-]*-\d+)-\d+$")


def subject_id(case_id: str) -> str:
    """The subject a case belongs to: a BraTS 2023+ id without its ``-NNN`` timepoint, else the id."""
    match = _TIMEPOINT_ID.match(case_id)
    return match.group(1) if match else case_id


def split_counts(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Subjects per split (train, val, test) for ``n`` subjects; the rule is in the module doc."""
    exact = [r * n for r in ratios]
    counts = [math.floor(e + 1e-9) for e in exact]  # 1e-9: 0.7 * 10 is 6.999...
    leftover = n - sum(counts)
    by_remainder = sorted(range(3), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[:leftover]:
        counts[k] += 1
    # Minimums, in priority order: train from 1 subject, val from 2, test from 3 (if wanted).
    minimum = [1 if n >= 1 else 0, int(n >= 2 and ratios[1] > 0), int(n >= 3 and ratios[2] > 0)]
    for k in range(3):
        while counts[k] < minimum[k]:
            spare = [counts[j] - minimum[j] if j != k else -1 for j in range(3)]
            counts[int(np.argmax(spare))] -= 1  # from the split with most to spare (first on ties)
            counts[k] += 1
    return counts[0], counts[1], counts[2]


def split_cases(case_ids: Sequence[str], ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                val_cases: Sequence[str] = (), test_cases: Sequence[str] = (),
                subjects: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Split case ids into ``{'train', 'val', 'test'}`` lists, keeping each subject in one split.

    Args:
        case_ids: the dataset's case ids, in any order (they are sorted first, so the result
            depends only on the set of ids and ``seed``).
        ratios: train, val, test shares; non-negative, train above 0, summing to 1.
        seed: shuffles the subjects (``np.random.default_rng(seed)``).
        val_cases, test_cases: fixed splits that override their ratio. A listed case brings its
            whole subject along (all its timepoints). The splits that are not fixed get their
            counts from their ratio applied to all subjects, as far as subjects remain; train
            gets the rest.
        subjects: case id -> subject, when the subject is not in the id (2D slices: the figshare
            PID, an image folder's name); default :func:`subject_id`. With it, val_cases and
            test_cases may also name subjects.

    Returns:
        ``{'train': [...], 'val': [...], 'test': [...]}``, each a sorted list of case ids; their
        union is ``case_ids``.

    Raises:
        JaxsegError: no cases, duplicate ids, bad ratios, fixed names that are not among the
            cases, a case fixed to both val and test, or fixed splits that leave nothing to train.
    """
    ids = sorted(str(c) for c in case_ids)
    if not ids:
        raise JaxsegError("split: there are no cases to split")
    duplicates = sorted(c for c, times in Counter(ids).items() if times > 1)
    if duplicates:
        raise JaxsegError(f"split: case ids appear more than once: {', '.join(duplicates)}")
    ratios = _check_ratios(ratios)
    subject_of = (lambda c: str(subjects[c])) if subjects is not None else subject_id
    by_subject: dict[str, list[str]] = {}
    for c in ids:
        by_subject.setdefault(subject_of(c), []).append(c)

    fixed: dict[str, set[str]] = {}
    known = set(ids)
    named_subjects = set(by_subject) if subjects is not None else set()
    for name, listed in (("val", val_cases), ("test", test_cases)):
        listed = [str(c) for c in listed]
        unknown = sorted(set(listed) - known - named_subjects)
        if unknown:
            raise JaxsegError(f"split: data.{name}_cases names cases that are not in the dataset: "
                              f"{', '.join(unknown)}")
        if listed:
            fixed[name] = {subject_of(c) if c in known else c for c in listed}
    both = fixed.get("val", set()) & fixed.get("test", set())
    if both:
        raise JaxsegError(f"split: subjects fixed to both val and test: {', '.join(sorted(both))}")

    order = sorted(by_subject)
    shuffled = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    taken = set().union(*fixed.values()) if fixed else set()
    free = [s for s in shuffled if s not in taken]
    if not free:
        raise JaxsegError("split: the fixed val/test cases leave no case for training")
    targets = dict(zip(SPLITS, split_counts(len(order), ratios)))
    chosen: dict[str, list[str]] = {}
    for name in ("test", "val"):  # draw the held-out splits first, train takes what is left
        if name in fixed:
            chosen[name] = sorted(fixed[name])
        else:
            count = max(0, min(targets[name], len(free) - 1))  # leave at least one for train
            chosen[name], free = free[:count], free[count:]
    chosen["train"] = free
    return {name: sorted(c for s in chosen[name] for c in by_subject[s]) for name in SPLITS}


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        raise JaxsegError(f"split: ratios must be three numbers; got {ratios!r}") from None
    if (len(values) != 3 or not all(math.isfinite(r) and r >= 0 for r in values)
            or abs(sum(values) - 1) > 1e-6 or values[0] <= 0):
        raise JaxsegError(f"split: ratios must be three non-negative train/val/test shares summing "
                          f"to 1, train above 0; got {ratios!r}")
    return values  # type: ignore[return-value]


def save_manifest(splits: dict[str, Sequence[str]], path: str | Path, **extra: Any) -> None:
    """Write the splits as JSON, atomically: ``{"train": [...], "val": [...], "test": [...], **extra}``.

    Pass what made the split as ``extra`` (``seed=``, ``ratios=``, ...), so a run records how to
    repeat it. Tuples become lists; numpy scalars and arrays are converted.
    """
    clash = sorted(set(extra) & set(SPLITS))
    if clash:
        raise ValueError(f"save_manifest: extra keys clash with split names: {clash}")
    body = {name: [str(c) for c in splits.get(name, ())] for name in SPLITS} | extra
    text = json.dumps(body, indent=2, default=_jsonable) + "\n"
    try:
        write_text(path, text)
    except OSError as err:
        raise file_error(path, f"cannot write the split manifest ({err.strerror or err})") from None


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest written by :func:`save_manifest`.

    Returns the JSON object: ``'train'``, ``'val'``, ``'test'`` as lists of case ids, plus the
    extra keys that were saved. Raises :class:`JaxsegError` when the file is missing, is not
    JSON, lacks a split, or puts a case in two splits.
    """
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise file_error(path, "split manifest not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise file_error(path, f"cannot read the split manifest ({err})") from None
    if not isinstance(body, dict):
        raise file_error(path, "split manifest is not a JSON object")
    for name in SPLITS:
        value = body.get(name)
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise file_error(path, f"split manifest has no list of case ids under {name!r}")
    seen: dict[str, str] = {}
    for name in SPLITS:
        for c in body[name]:
            if c in seen:
                raise file_error(path, f"split manifest puts case {c!r} in both {seen[c]} and {name}")
            seen[c] = name
    return body


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"save_manifest: cannot store a {type(value).__name__} in JSON")
