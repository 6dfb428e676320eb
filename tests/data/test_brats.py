"""BraTS conventions: discovery of both namings, file labels, volumes, inspection (targets and
regions: tests/test_target.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from jaxseg.data.brats import (MODALITIES, MODALITY_ALIASES, Case, case_from_path, find_cases,
                               from_internal, label_values, load_case, parse_name, to_internal, tumor_volumes_ml)
from jaxseg.data.inspect import inspect_dataset, render_table
from jaxseg.data.nifti import read_label_volume
from jaxseg.errors import JaxsegError
from tests.data.test_bad_inputs import SHAPE, case_labels, write_case, write_nifti


def test_parse_both_namings() -> None:
    assert parse_name("Brats18_2013_11_1_t1ce.nii.gz") == ("Brats18_2013_11_1", "brats2021", "t1ce")
    assert parse_name("Brats18_2013_11_1_t1.nii") == ("Brats18_2013_11_1", "brats2021", "t1")
    assert parse_name("BraTS2021_00000_seg.nii.gz") == ("BraTS2021_00000", "brats2021", "seg")
    assert parse_name("BraTS-GLI-00001-000-t2f.nii.gz") == ("BraTS-GLI-00001-000", "brats2023", "flair")
    assert parse_name("BraTS-MEN-00004-000-t1c.nii") == ("BraTS-MEN-00004-000", "brats2023", "t1ce")
    assert parse_name("BraTS-PED-00010-000-seg.nii.gz") == ("BraTS-PED-00010-000", "brats2023", "seg")
    for other in ("scan.nii.gz", "Brats18_x_flair.png", "BraTS-GLI-1-t1ce.nii.gz", "x_t2f.nii.gz"):
        assert parse_name(other) is None, other


def test_aliases() -> None:
    assert {MODALITY_ALIASES[a] for a in ("t2f", "t1n", "t1c", "t2w")} == set(MODALITIES)
    assert all(MODALITY_ALIASES[m] == m for m in MODALITIES)


def test_find_cases_mixed_nested_tree(tmp_path: Path) -> None:
    write_case(tmp_path / "2018" / "HGG", "Brats18_B_1")
    write_case(tmp_path / "2018" / "LGG", "Brats18_A_1", ext=".nii")
    write_case(tmp_path / "2023", "BraTS-SSA-00002-000", naming="brats2023", seg=False)
    write_case(tmp_path / "2023", "BraTS-MET-00003-000", naming="brats2023", modalities=("flair", "t1ce"))
    (tmp_path / "notes.txt").write_text("not a case")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["BraTS-MET-00003-000", "BraTS-SSA-00002-000", "Brats18_A_1", "Brats18_B_1"]
    by_id = {c.case_id: c for c in cases}
    assert by_id["Brats18_A_1"].naming == "brats2021"
    assert by_id["Brats18_A_1"].images["t1ce"].name == "Brats18_A_1_t1ce.nii"
    assert by_id["Brats18_B_1"].seg.name == "Brats18_B_1_seg.nii.gz"
    ssa = by_id["BraTS-SSA-00002-000"]
    assert ssa.naming == "brats2023" and ssa.seg is None and list(ssa.images) == list(MODALITIES)
    assert ssa.images["flair"].name == "BraTS-SSA-00002-000-t2f.nii.gz"
    # A subset of modalities, asked for by either name: only the cases that have them pass.
    with pytest.raises(JaxsegError, match="BraTS-MET-00003-000-t1n.nii.gz: missing"):
        find_cases(tmp_path, ["t2f", "t1n"])
    assert len(find_cases(tmp_path, ["flair", "t1c"])) == 4
    with pytest.raises(JaxsegError, match="unknown modality 'pd'"):
        find_cases(tmp_path, ["pd"])


def test_case_from_path(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "Brats18_Z_1")
    write_case(tmp_path, "BraTS-GLI-00001-000", naming="brats2023")
    for given in (folder, folder / "Brats18_Z_1_t2.nii.gz", folder / "Brats18_Z_1_seg.nii.gz"):
        case = case_from_path(given)
        assert case.case_id == "Brats18_Z_1" and list(case.images) == list(MODALITIES) and case.seg is not None
    case = case_from_path(tmp_path / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1c.nii.gz")
    assert case.naming == "brats2023" and case.case_id == "BraTS-GLI-00001-000"
    with pytest.raises(JaxsegError, match="holds 2 cases"):
        case_from_path(tmp_path)
    lone = write_nifti(tmp_path / "patient7.nii.gz", np.ones(SHAPE, np.int16))
    assert case_from_path(lone) == Case("patient7", tmp_path, "brats2021", {"flair": lone}, None)
    assert case_from_path(lone, modality="t1c").images == {"t1ce": lone}
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(JaxsegError, match="not a NIfTI file name"):
        case_from_path(tmp_path / "notes.txt")


@pytest.mark.parametrize("naming", ["brats2021", "brats2023"])
def test_load_case_channels_orientation_and_labels(tmp_path: Path, naming: str) -> None:
    case = case_from_path(write_case(tmp_path, "Case_1" if naming == "brats2021" else "BraTS-GLI-00005-000",
                                     naming=naming))
    image, classes, props = load_case(case, ["t2", "t1n"])  # channel order is the order asked for
    assert image.shape == SHAPE + (2,) and image.dtype == np.float32
    # Modality i holds 100 * (i + 1) + stored x; LPS storage flips x, so RAS x = 7 holds stored x 0.
    assert image[7, 0, 0, 0] == 400 and image[0, 0, 0, 0] == 407 and image[7, 0, 0, 1] == 200
    assert classes.dtype == np.uint8 and label_values(classes) == (0, 1, 2, 3)
    np.testing.assert_array_equal(classes, to_internal(np.flip(case_labels(SHAPE, naming), (0, 1)), naming))
    assert props.path == str(case.images["t2"])
    _, no_seg, _ = load_case(case_from_path(write_case(tmp_path, "Unlabelled_1", seg=False)))
    assert no_seg is None


@pytest.mark.parametrize("naming, file_labels", [("brats2021", [0, 1, 2, 4]), ("brats2023", [0, 1, 2, 3])])
def test_label_conversion_round_trip(naming: str, file_labels: list[int]) -> None:
    labels = np.array(file_labels * 3, np.int16).reshape(3, 4)
    classes = to_internal(labels, naming)
    assert classes.dtype == np.uint8 and classes[0].tolist() == [0, 1, 2, 3]
    back = from_internal(classes, naming)
    assert back.dtype == np.uint8 and back.tolist() == labels.tolist()
    with pytest.raises(JaxsegError, match=r"seg.nii.gz: label values \[5\]"):
        to_internal(np.array([0, 5]), naming, "seg.nii.gz")


def test_tumor_volumes_ml() -> None:
    classes = np.zeros((10, 10, 10), np.uint8)
    classes[0, :, :] = 2  # 100 voxels ED
    classes[1, :5, :] = 1  # 50 NCR
    classes[2, :2, :] = 3  # 20 ET
    volumes = tumor_volumes_ml(classes, (1.0, 2.0, 3.0))  # 6 mm^3 = 0.006 mL per voxel
    assert volumes == pytest.approx({"WT": 170 * 0.006, "TC": 70 * 0.006, "ET": 20 * 0.006})


def test_inspect_synthetic_dataset(tmp_path: Path) -> None:
    write_case(tmp_path, "Brats18_A_1")
    write_case(tmp_path, "BraTS-GLI-00001-000", naming="brats2023", seg=False, modalities=("flair", "t1"))
    reports = inspect_dataset(tmp_path, workers=2)
    assert [r.case_id for r in reports] == ["BraTS-GLI-00001-000", "Brats18_A_1"]
    a = reports[1]
    assert (a.naming, a.shape, a.spacing, a.orientation) == ("brats2021", SHAPE, (1, 1, 1), "LPS")
    assert a.labels == (0, 1, 2, 4)
    assert a.problems == [] and a.volumes_ml == pytest.approx({"WT": 0.027, "TC": 0.008, "ET": 0.001})
    gli = reports[0]
    assert gli.labels is None and gli.volumes_ml is None
    assert [p.split("/")[-1] for p in gli.problems] == ["BraTS-GLI-00001-000-t1c.nii.gz: missing (t1ce image)",
                                                        "BraTS-GLI-00001-000-t2w.nii.gz: missing (t2 image)"]
    console = Console(width=250, record=True)
    console.print(render_table(reports))
    text = console.export_text()
    assert "Brats18_A_1" in text and "0,1,2,4" in text and "t2f t1n" in text and "1 with problems" in text


@pytest.mark.real_data
def test_real_brats2018(real_data: Path) -> None:
    cases = find_cases(real_data / "brats2018", MODALITIES)
    assert len(cases) == 16 and all(c.naming == "brats2021" and c.seg is not None for c in cases)
    assert [c.case_id for c in cases] == sorted(c.case_id for c in cases)
    file_labels = set()
    for case in cases:
        file_labels.update(label_values(read_label_volume(case.seg)[0]))
    assert file_labels == {0, 1, 2, 4}
    image, classes, props = load_case(cases[0], MODALITIES)
    assert image.shape == (240, 240, 155, 4) and image.dtype == np.float32
    assert label_values(classes) == (0, 1, 2, 3) and props.orientation == ("L", "P", "S")
    assert 25 <= tumor_volumes_ml(classes, props.spacing)["WT"] <= 232


@pytest.mark.real_data
def test_real_brats2023_example(real_data: Path) -> None:
    (case,) = find_cases(real_data / "brats2023-example")
    assert case.case_id == "BraTS-GLI-00001-000" and case.naming == "brats2023" and case.seg is None
    assert list(case.images) == list(MODALITIES)
    assert case.images["t1ce"].name == "BraTS-GLI-00001-000-t1c.nii.gz"
    assert case_from_path(case.images["flair"]) == case


def test_a_hidden_case_file_is_one_clear_error(tmp_path):
    hidden = tmp_path / ".Case_1_flair.nii.gz"
    hidden.write_bytes(b"x")
    with pytest.raises(JaxsegError, match="hidden file"):
        case_from_path(hidden)
