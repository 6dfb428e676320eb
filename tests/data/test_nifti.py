"""NIfTI reading and writing keep the geometry: RAS arrays inside, the input's own layout outside."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jaxseg.data.nifti import (from_canonical, read_header, read_label_volume, read_volume, to_canonical,
                               write_volume)
from jaxseg.errors import JaxsegError
from tests.data.test_bad_inputs import write_nifti


def _affine(columns, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.array(columns, dtype=float).T  # columns = world direction * size of each voxel axis
    affine[:3, 3] = origin
    return affine


def _rot_z(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


# name -> (affine, stored axis codes, canonical spacing in mm)
ORIENTATIONS = {
    "RAS": (_affine([(1.5, 0, 0), (0, 2, 0), (0, 0, 3)], (-10, -20, -30)), ("R", "A", "S"), (1.5, 2, 3)),
    "LPS": (_affine([(-1, 0, 0), (0, -1, 0), (0, 0, 1)], (0, 239, 0)), ("L", "P", "S"), (1, 1, 1)),
    "PLS": (_affine([(0, -2, 0), (-1, 0, 0), (0, 0, 3)], (5, 6, 7)), ("P", "L", "S"), (1, 2, 3)),
    "SRA": (_affine([(0, 0, 1), (1, 0, 0), (0, 1, 0)]), ("S", "R", "A"), (1, 1, 1)),
    "oblique_PLS": (_rot_z(20) @ _affine([(0, -2, 0), (-1, 0, 0), (0, 0, 3)], (5, 6, 7)), ("P", "L", "S"), (1, 2, 3)),
}
SHAPE = (5, 6, 7)  # all different, so a wrong permutation cannot go unnoticed


def _random_volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, SHAPE).astype(np.int16)


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_orientations_round_trip_and_match_nibabel(tmp_path: Path, name: str) -> None:
    affine, codes, spacing = ORIENTATIONS[name]
    stored = _random_volume()
    path = write_nifti(tmp_path / "in.nii.gz", stored, affine)
    canon, props = read_volume(path)

    assert props.orientation == codes and props.shape == SHAPE
    np.testing.assert_allclose(props.spacing, spacing)
    # Independent reference: nibabel's own closest-canonical reorientation.
    reference = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_array_equal(canon, reference.get_fdata().astype(np.float32))
    np.testing.assert_allclose(props.canonical_affine, reference.affine)
    assert canon.shape == props.canonical_shape

    # Exact inverses, also with trailing channel axes.
    np.testing.assert_array_equal(from_canonical(to_canonical(stored, props), props), stored)
    channels = np.stack([stored, stored * 2], axis=-1)
    np.testing.assert_array_equal(from_canonical(to_canonical(channels, props), props), channels)

    out = write_volume(canon, props, tmp_path / "out.nii.gz", dtype=np.int16)
    written = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), stored)
    np.testing.assert_array_equal(written.affine, nib.load(path).affine)
    assert written.shape == SHAPE and nib.aff2axcodes(written.affine) == codes


@pytest.mark.parametrize("name", ["RAS", "LPS", "PLS", "SRA"])
def test_canonical_axes_point_right_anterior_superior(tmp_path: Path, name: str) -> None:
    affine, _, spacing = ORIENTATIONS[name]
    _, props = read_volume(write_nifti(tmp_path / "v.nii.gz", _random_volume(), affine))
    # Index 0, 1, 2 of the RAS array step toward +x (R), +y (A), +z (S) by the voxel size.
    np.testing.assert_allclose(props.canonical_affine[:3, :3], np.diag(spacing))


@pytest.mark.parametrize("affine, canonical_index", [
    # LPS, 2 x 3 x 4 mm: world (8, 14, 42) is stored voxel (1, 2, 3); in RAS order x and y are flipped.
    (_affine([(-2, 0, 0), (0, -3, 0), (0, 0, 4)], (10, 20, 30)), (2, 2, 3)),
    # RAS: the stored voxel is the canonical voxel.
    (_affine([(2, 0, 0), (0, 3, 0), (0, 0, 4)], (6, 8, 30)), (1, 2, 3)),
])
def test_bright_voxel_lands_at_its_world_position(tmp_path: Path, affine: np.ndarray, canonical_index) -> None:
    world = np.array([8.0, 14.0, 42.0])
    stored_index = np.round(np.linalg.solve(affine[:3, :3], world - affine[:3, 3])).astype(int)
    data = np.zeros((4, 5, 6), np.int16)
    data[tuple(stored_index)] = 1000
    canon, props = read_volume(write_nifti(tmp_path / "v.nii.gz", data, affine))
    found = np.unravel_index(np.argmax(canon), canon.shape)
    assert tuple(int(i) for i in found) == canonical_index
    np.testing.assert_allclose(props.canonical_affine @ np.array([*canonical_index, 1.0]), [*world, 1.0])


@pytest.mark.real_data
@pytest.mark.parametrize("suffix, reader", [("flair", read_volume), ("seg", read_label_volume)])
def test_real_case_round_trip(real_data: Path, tmp_path: Path, suffix: str, reader) -> None:
    source = real_data / "brats2018" / "Brats18_2013_11_1" / f"Brats18_2013_11_1_{suffix}.nii.gz"
    original = nib.load(source)
    canon, props = reader(source)
    assert props.orientation == ("L", "P", "S") and canon.shape == (240, 240, 155)
    out = write_volume(canon, props, tmp_path / source.name, dtype=original.get_data_dtype())
    written = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj))
    np.testing.assert_array_equal(written.affine, original.affine)
    for key in ("dim", "pixdim", "qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "quatern_b",
                "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "xyzt_units"):
        np.testing.assert_array_equal(written.header[key], original.header[key], err_msg=key)
    assert written.get_data_dtype() == original.get_data_dtype()
    again, _ = reader(out)
    np.testing.assert_array_equal(again, canon)


def test_labels_written_exactly_even_if_input_was_scaled(tmp_path: Path) -> None:
    affine = ORIENTATIONS["LPS"][0]
    image = nib.Nifti1Image(_random_volume(), affine, dtype=np.int16)
    image.header.set_slope_inter(2.0, 10.0)
    image.header.set_qform(affine, code=1)  # scanner
    image.header.set_sform(affine, code=2)  # aligned
    image.to_filename(tmp_path / "scaled.nii.gz")
    canon, props = read_volume(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(canon, to_canonical(_random_volume() * 2.0 + 10.0, props))

    classes = (np.arange(canon.size) % 4).reshape(canon.shape).astype(np.uint8)
    written = nib.load(write_volume(classes, props, tmp_path / "labels.nii.gz"))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), from_canonical(classes, props))
    assert written.dataobj.slope == 1.0 and written.dataobj.inter == 0.0
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2


def test_write_dtypes_channels_and_atomicity(tmp_path: Path) -> None:
    _, props = read_volume(write_nifti(tmp_path / "in.nii.gz", _random_volume(), ORIENTATIONS["PLS"][0]))
    mask = np.zeros(props.canonical_shape, bool)
    mask[0, 1, 2] = True
    written = nib.load(write_volume(mask, props, tmp_path / "mask.nii.gz"))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), from_canonical(mask, props).astype(np.uint8))

    probs = np.random.default_rng(1).random((*props.canonical_shape, 3))  # float64 -> float32
    written = nib.load(write_volume(probs, props, tmp_path / "probs.nii"))
    assert written.shape == SHAPE + (3,) and written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), from_canonical(probs, props).astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "mask.nii.gz", "probs.nii"]

    with pytest.raises(JaxsegError, match=r"wrong\.nii\.gz: array of shape \(5, 6, 7\) does not fit"):
        write_volume(np.zeros(SHAPE), props, tmp_path / "wrong.nii.gz")  # stored order, not RAS
    assert not (tmp_path / "wrong.nii.gz").exists()


def test_4d_with_one_volume_is_read_as_3d(tmp_path: Path) -> None:
    stored = _random_volume()[..., None]
    canon, props = read_volume(write_nifti(tmp_path / "v4.nii.gz", stored, ORIENTATIONS["LPS"][0]))
    assert canon.shape == SHAPE and props.shape == SHAPE
    written = nib.load(write_volume(canon, props, tmp_path / "out.nii.gz", dtype=np.int16))
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), stored[..., 0])  # written as 3D


def test_nifti2_stays_nifti2(tmp_path: Path) -> None:
    nib.Nifti2Image(_random_volume(), ORIENTATIONS["LPS"][0], dtype=np.int16).to_filename(tmp_path / "n2.nii")
    canon, props = read_volume(tmp_path / "n2.nii")
    written = nib.load(write_volume(canon, props, tmp_path / "out.nii", dtype=np.int16))
    assert isinstance(written, nib.Nifti2Image)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), _random_volume())


def test_label_reader_dtypes(tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, np.int16)
    labels[1, 2, 3] = 4
    seg, _ = read_label_volume(write_nifti(tmp_path / "int.nii.gz", labels))
    assert seg.dtype == np.int16 and seg.sum() == 4
    seg, _ = read_label_volume(write_nifti(tmp_path / "float.nii.gz", labels.astype(np.float32)))
    assert seg.dtype == np.int32 and seg.sum() == 4


def test_finite_check_can_be_turned_off(tmp_path: Path) -> None:
    data = np.ones(SHAPE, np.float32)
    data[0, 0, 0] = np.nan
    path = write_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(JaxsegError, match="nan.nii.gz: contains 1 NaN"):
        read_volume(path)
    canon, _ = read_volume(path, check_finite=False)
    assert np.isnan(canon).sum() == 1


def test_read_header_does_not_touch_the_voxels(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "big.nii.gz", np.zeros((40, 40, 40), np.int16), ORIENTATIONS["PLS"][0])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    props = read_header(path)  # header intact: fine
    assert props.orientation == ("P", "L", "S") and props.canonical_shape == (40, 40, 40)
    with pytest.raises(JaxsegError, match="truncated"):
        read_volume(path)
