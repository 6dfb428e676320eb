"""A corpus of bad inputs, each of which must raise one clear JaxsegError naming the file.

``BAD_INPUTS`` is importable (``from tests.data.test_bad_inputs import BAD_INPUTS``) so CLI tests can
run the same corpus through the commands and check the exit code. Each entry's ``make(tmp)`` writes
the bad input under ``tmp`` and returns ``(given, culprit)``: the path to hand to jaxseg (a file or a
case folder) and the file or folder the message must name. ``write_nifti`` and ``write_case`` are
shared with the other data tests.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from jaxseg.data.brats import MODALITIES, SUFFIXES, case_from_path, find_cases, load_case
from jaxseg.data.inspect import inspect_dataset
from jaxseg.data.nifti import read_volume
from jaxseg.errors import JaxsegError

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # how BraTS stores volumes
SHAPE = (8, 9, 10)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = LPS) -> Path:
    """Write ``data`` (stored order) with ``affine``; the dtype is kept (int16 images, uint8 labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(data), affine, dtype=np.asarray(data).dtype).to_filename(path)
    return path


def case_labels(shape: tuple[int, ...] = SHAPE, naming: str = "brats2021") -> np.ndarray:
    """A stored-order seg with every label of ``naming`` (a small tumor in one corner)."""
    seg = np.zeros(shape, np.uint8)
    seg[1:4, 1:4, 1:4] = 2  # ED around
    seg[2:4, 2:4, 2:4] = 1  # NCR
    seg[3, 3, 3] = 4 if naming == "brats2021" else 3  # ET
    return seg


def write_case(root: Path, case_id: str, naming: str = "brats2021", modalities=MODALITIES,
               seg: bool = True, shape: tuple[int, ...] = SHAPE, affine: np.ndarray = LPS,
               ext: str = ".nii.gz") -> Path:
    """A small BraTS case folder ``root/case_id``; modality i is filled with 100 * (i + 1) + x index."""
    folder = root / case_id
    sep = "_" if naming == "brats2021" else "-"
    ramp = np.arange(shape[0], dtype=np.int16)[:, None, None]
    for modality in modalities:
        value = 100 * (MODALITIES.index(modality) + 1)
        data = np.broadcast_to(ramp + value, shape).astype(np.int16)
        write_nifti(folder / f"{case_id}{sep}{SUFFIXES[naming][modality]}{ext}", data, affine)
    if seg:
        write_nifti(folder / f"{case_id}{sep}seg{ext}", case_labels(shape, naming), affine)
    return folder


def _file(folder: Path, modality: str, naming: str = "brats2021") -> Path:
    sep = "_" if naming == "brats2021" else "-"
    return folder / f"{folder.name}{sep}{SUFFIXES[naming][modality]}.nii.gz"


@dataclass(frozen=True)
class BadInput:
    name: str
    make: Callable[[Path], tuple[Path, Path]]  # tmp -> (path given to jaxseg, file/folder to be named)
    problem: str  # a word the message must contain (case-insensitive)
    in_dataset: bool = True  # inspect_dataset(tmp) reports it as a per-case problem (else it raises)


def _missing_file(tmp: Path) -> tuple[Path, Path]:
    path = tmp / "Bad_1" / "Bad_1_flair.nii.gz"
    return path, path


def _missing_modality(tmp: Path) -> tuple[Path, Path]:
    folder = write_case(tmp, "Bad_1", modalities=("flair", "t1ce", "t2"))
    return folder, _file(folder, "t1")


def _replace(tmp: Path, modality: str, data: np.ndarray, affine: np.ndarray = LPS) -> tuple[Path, Path]:
    folder = write_case(tmp, "Bad_1")
    culprit = _file(folder, modality) if modality != "seg" else folder / "Bad_1_seg.nii.gz"
    write_nifti(culprit, data, affine)
    return folder, culprit


def _text_as_nifti(tmp: Path) -> tuple[Path, Path]:
    folder = write_case(tmp, "Bad_1")
    _file(folder, "flair").write_text("this is not an image\n")
    return folder, _file(folder, "flair")


def _truncated_gzip(tmp: Path) -> tuple[Path, Path]:
    folder = write_case(tmp, "Bad_1", shape=(40, 40, 40))
    path = _file(folder, "t1ce")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return folder, path


def _truncated_nii(tmp: Path) -> tuple[Path, Path]:
    folder = write_case(tmp, "Bad_1", ext=".nii")
    path = folder / "Bad_1_t2.nii"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 200])  # header intact, voxels cut short
    return folder, path


def _gzip_of_garbage(tmp: Path) -> tuple[Path, Path]:
    folder = write_case(tmp, "Bad_1")
    _file(folder, "t1").write_bytes(gzip.compress(b"\x00" * 1000))
    return folder, _file(folder, "t1")


def _empty_file(tmp: Path) -> tuple[Path, Path]:
    folder = write_case(tmp, "Bad_1")
    _file(folder, "t2").write_bytes(b"")
    return folder, _file(folder, "t2")


def _nan_or_inf(value: float) -> Callable[[Path], tuple[Path, Path]]:
    def make(tmp: Path) -> tuple[Path, Path]:
        data = np.ones(SHAPE, np.float32)
        data[2, 3, 4] = value
        return _replace(tmp, "flair", data)
    return make


def _empty_folder(tmp: Path) -> tuple[Path, Path]:
    (tmp / "empty").mkdir()
    return tmp / "empty", tmp / "empty"


def _seg_2023_label_4(tmp: Path) -> tuple[Path, Path]:
    folder = write_case(tmp, "BraTS-GLI-00009-000", naming="brats2023")
    seg = folder / "BraTS-GLI-00009-000-seg.nii.gz"
    write_nifti(seg, case_labels(naming="brats2021"))  # 2021 labels in a 2023-named case
    return folder, seg


_shifted = LPS.copy()
_shifted[:3, 3] = (5.0, 0.0, 0.0)  # 5 mm off: not co-registered

BAD_INPUTS: list[BadInput] = [
    BadInput("missing_file", _missing_file, "no such file", in_dataset=False),
    BadInput("missing_modality", _missing_modality, "missing"),
    BadInput("text_named_nii_gz", _text_as_nifti, "NIfTI"),
    BadInput("truncated_gzip", _truncated_gzip, "truncated"),
    BadInput("truncated_nii", _truncated_nii, "truncated"),
    BadInput("gzip_of_garbage", _gzip_of_garbage, "NIfTI"),
    BadInput("empty_file", _empty_file, "empty"),
    BadInput("volume_2d", lambda tmp: _replace(tmp, "t1", np.ones((8, 9), np.int16)), "2D"),
    BadInput("volume_4d", lambda tmp: _replace(tmp, "t1", np.ones(SHAPE + (3,), np.int16)), "4D"),
    BadInput("empty_volume", lambda tmp: _replace(tmp, "t1", np.ones((8, 0, 10), np.int16)), "empty"),
    BadInput("different_shapes", lambda tmp: _replace(tmp, "t1", np.ones((8, 9, 11), np.int16)), "shape"),
    BadInput("different_affines", lambda tmp: _replace(tmp, "t2", np.ones(SHAPE, np.int16), _shifted), "affine"),
    BadInput("seg_different_shape", lambda tmp: _replace(tmp, "seg", np.zeros((8, 9, 11), np.uint8)), "shape"),
    BadInput("nan_voxels", _nan_or_inf(np.nan), "NaN"),
    BadInput("inf_voxels", _nan_or_inf(np.inf), "Inf"),
    BadInput("seg_label_7", lambda tmp: _replace(tmp, "seg", np.full(SHAPE, 7, np.uint8)), "label"),
    BadInput("seg_not_whole_numbers", lambda tmp: _replace(tmp, "seg", np.full(SHAPE, 0.5, np.float32)),
             "whole-number"),
    BadInput("seg_2023_label_4", _seg_2023_label_4, "label"),
    BadInput("empty_folder", _empty_folder, "no BraTS case", in_dataset=False),
    # Inputs the model was not made for (jaxseg/data/checks.py): refused before any answer.
    BadInput("all_zero_modality", lambda tmp: _replace(tmp, "t1ce", np.zeros(SHAPE, np.int16)), "all zeros"),
    BadInput("constant_modality", lambda tmp: _replace(tmp, "t2", np.full(SHAPE, 300, np.int16)), "constant"),
    BadInput("label_map_as_image", lambda tmp: _replace(tmp, "flair", case_labels()), "label map"),
]
_IDS = [b.name for b in BAD_INPUTS]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=_IDS)
def test_load_raises_one_line_naming_the_file(tmp_path: Path, bad: BadInput) -> None:
    given, culprit = bad.make(tmp_path)
    with pytest.raises(JaxsegError) as info:
        load_case(case_from_path(given), MODALITIES)
    message = str(info.value)
    assert "\n" not in message
    assert culprit.name in message
    assert bad.problem.lower() in message.lower()


_IN_DATASET = [b for b in BAD_INPUTS if b.in_dataset]


@pytest.mark.parametrize("bad", _IN_DATASET, ids=[b.name for b in _IN_DATASET])
def test_inspect_reports_problem_and_keeps_going(tmp_path: Path, bad: BadInput) -> None:
    _, culprit = bad.make(tmp_path)
    write_case(tmp_path, "Good_1")
    reports = {r.case_id: r for r in inspect_dataset(tmp_path)}
    assert reports["Good_1"].problems == []
    bad_report = next(r for r in reports.values() if r.case_id != "Good_1")
    assert any(culprit.name in p and bad.problem.lower() in p.lower() for p in bad_report.problems), bad_report.problems
    assert all("\n" not in p for p in bad_report.problems)


@pytest.mark.parametrize("name", ["volume_2d", "volume_4d", "nan_voxels", "truncated_gzip", "text_named_nii_gz"])
def test_read_volume_alone_raises_for_bad_file(tmp_path: Path, name: str) -> None:
    bad = next(b for b in BAD_INPUTS if b.name == name)
    _, culprit = bad.make(tmp_path)
    with pytest.raises(JaxsegError, match=bad.problem):
        read_volume(culprit)


def test_mismatch_message_names_both_files(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "Bad_1")
    write_nifti(_file(folder, "t1"), np.ones((8, 9, 11), np.int16))
    with pytest.raises(JaxsegError) as info:
        load_case(case_from_path(folder), ["flair", "t1"])
    assert "Bad_1_t1.nii.gz" in str(info.value) and "Bad_1_flair.nii.gz" in str(info.value)


def test_missing_and_empty_dataset_folders(tmp_path: Path) -> None:
    with pytest.raises(JaxsegError, match="no such folder"):
        find_cases(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "scan.nii.gz").write_bytes(b"")  # a NIfTI name that follows no BraTS convention
    with pytest.raises(JaxsegError, match=r"no BraTS cases found .*_flair\.nii\.gz.*-t2f\.nii\.gz"):
        find_cases(tmp_path)
    with pytest.raises(JaxsegError, match="not a folder"):
        find_cases(tmp_path / "notes.txt")


def test_missing_modality_in_find_cases_names_case_and_file(tmp_path: Path) -> None:
    write_case(tmp_path, "Ok_1")
    write_case(tmp_path, "Short_1", modalities=("flair", "t2"))
    assert len(find_cases(tmp_path, ["t2f", "t2w"])) == 2
    with pytest.raises(JaxsegError, match=r"Short_1_t1ce\.nii\.gz: missing: case Short_1 has no t1ce"):
        find_cases(tmp_path, ["flair", "t1c"])


def test_duplicate_case_ids_and_files(tmp_path: Path) -> None:
    write_case(tmp_path / "train", "Dup_1")
    write_case(tmp_path / "val", "Dup_1")
    with pytest.raises(JaxsegError, match="Dup_1 is also in"):
        find_cases(tmp_path)
    other = tmp_path / "other"
    write_case(other, "Two_1")
    write_nifti(other / "Two_1" / "Two_1_flair.nii", np.ones(SHAPE, np.int16))
    with pytest.raises(JaxsegError, match="two flair files"):
        find_cases(other)
