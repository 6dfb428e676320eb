"""The figshare .mat reader, its records, the patient split and its errors."""
import pickle

import h5py
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg.data import figshare, records, split
from jaxseg.data import formats
from jaxseg.data.formats import brats_volumes
from jaxseg.errors import JaxsegError
from tests.data.formats2d import tumor_slice, write_figshare_mat


def test_a_slice_reads_back_in_matlab_orientation(tmp_path):
    # Non-square with an off-centre tumor: a missing transpose changes the shape and the position.
    image, mask = tumor_slice((40, 24), centre=(8, 16), radius=4)
    path = write_figshare_mat(tmp_path / "17.mat", image, mask, label=3, pid="MR-0042")
    with h5py.File(path, "r") as f:  # stored column-major, as MATLAB writes it
        assert f["cjdata/image"].shape == (24, 40)
    s = figshare.read_slice(path)
    assert s.image.shape == (40, 24) and s.image.dtype == np.float32
    np.testing.assert_array_equal(s.image, image.astype(np.float32))
    np.testing.assert_array_equal(s.mask, mask)
    assert s.mask[8, 16] == 1 and s.mask[16, 8] == 0
    assert (s.label, s.pid) == (3, "MR-0042")
    assert figshare.read_header(path) == ("MR-0042", 3)


def test_records_carry_patient_and_tumor_class_and_skip_cvind(tmp_path):
    image, mask = tumor_slice((32, 32), (16, 16), 5)
    for n, pid, label in ((1, "A", 1), (2, "A", 1), (3, "B", 2)):
        write_figshare_mat(tmp_path / f"part{n % 2}" / f"{n}.mat", image, mask, label, pid)
    (tmp_path / "cvind.mat").write_bytes(b"MATLAB 5.0 MAT-file")  # the dataset's fold indices
    found = formats.get("figshare_mat").find_records(tmp_path)
    assert [(r.case_id, r.subject, r.label) for r in found] == [("1", "A", 1), ("2", "A", 1), ("3", "B", 2)]
    assert formats.detect(tmp_path) == "figshare_mat"


def test_slices_of_one_patient_never_cross_splits(tmp_path):
    image, mask = tumor_slice((16, 16), (8, 8), 3)
    pids = {str(n): f"P{n % 7}" for n in range(1, 43)}  # 7 patients, 6 slices each, interleaved
    for n, pid in pids.items():
        write_figshare_mat(tmp_path / f"{n}.mat", image, mask, 1, pid)
    found = formats.get("figshare_mat").find_records(tmp_path)
    for seed in range(5):
        splits = split.split_cases([r.case_id for r in found], (0.6, 0.2, 0.2), seed,
                                   subjects=records.subjects_of(found))
        patients = [{pids[c] for c in splits[name]} for name in split.SPLITS]
        assert all(patients) and not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
        assert sorted(sum(splits.values(), [])) == sorted(pids)
    # A fixed validation split may name a patient; it brings all of that patient's slices.
    fixed = split.split_cases(list(pids), seed=0, val_cases=["P3"], subjects=pids)
    assert fixed["val"] == sorted(c for c, p in pids.items() if p == "P3")


def _broken_files(tmp_path):
    image, mask = tumor_slice((20, 12), (10, 6), 3)
    good = write_figshare_mat(tmp_path / "good.mat", image, mask)
    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(good.read_bytes()[:1500])
    (tmp_path / "v5.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: PCWIN64" + bytes(200))
    no_mask = tmp_path / "no_mask.mat"
    with h5py.File(no_mask, "w") as f:
        f["cjdata/image"] = image.T
        f["cjdata/label"] = np.array([[1.0]])
        f["cjdata/PID"] = np.array([[ord("x")]], np.uint16)
    mismatch = write_figshare_mat(tmp_path / "mismatch.mat", image, mask[:, :10])
    nan = tmp_path / "nan.mat"
    with h5py.File(nan, "w") as f:
        f["cjdata/image"] = np.where(image > 0, np.nan, 0.0).T
        f["cjdata/tumorMask"] = mask.T
        f["cjdata/label"] = np.array([[1.0]])
        f["cjdata/PID"] = np.array([[ord("x")]], np.uint16)
    bad_label = write_figshare_mat(tmp_path / "label.mat", image, mask, label=7)
    bad_mask = write_figshare_mat(tmp_path / "maskvalues.mat", image, mask * 3)
    return {truncated: "not a MATLAB v7.3 \\(HDF5\\) file, or truncated",
            tmp_path / "v5.mat": "not a MATLAB v7.3",
            no_mask: "cjdata has no 'tumorMask' field",
            mismatch: "cjdata.tumorMask is 20x10 but cjdata.image is 20x12",
            nan: "NaN or Inf pixels",
            bad_label: "cjdata.label is \\[7.0\\]",
            bad_mask: "tumorMask has values \\[0, 3\\]"}


def test_bad_files_are_one_error_naming_the_file(tmp_path):
    for path, problem in _broken_files(tmp_path).items():
        with pytest.raises(JaxsegError, match=f"^{path}: .*{problem}") as err:
            figshare.read_slice(path)
        assert "\n" not in str(err.value)


def test_inspect_reports_patients_labels_sizes_and_problems(tmp_path):
    from jaxseg.data import inspect
    from jaxseg.data.formats import figshare_mat, inspect_folder
    image, mask = tumor_slice((32, 24), (10, 10), 4)
    write_figshare_mat(tmp_path / "1.mat", image, mask, 1, "A")
    write_figshare_mat(tmp_path / "2.mat", np.zeros((16, 16)), np.zeros((16, 16)), 3, "A")
    write_figshare_mat(tmp_path / "3.mat", image, mask, 2, "B")
    (tmp_path / "4.mat").write_bytes(b"junk")
    reports = {r.subject: r for r in inspect.inspect_slices(figshare_mat.FORMAT.inspect_jobs(tmp_path, "_mask"))}
    assert sorted(reports) == ["(unreadable)", "A", "B"]
    a = reports["A"]
    assert [(s.case_id, s.size, s.label, s.tumor_pixels > 0) for s in a.slices] == [
        ("1", (32, 24), 1, True), ("2", (16, 16), 3, False)]
    assert reports["(unreadable)"].problems[0].startswith(f"{tmp_path / '4.mat'}: ")
    table, problems = inspect_folder(tmp_path)
    assert problems
    text = str(table.caption)
    assert "4 slices of 3 patient(s)" in text and "meningioma" in text and "32x24 x2" in text


def test_prepared_records_fit_image_size_and_batch_like_brats_slices(tmp_path):
    """Both sizes of the set (here 64 and 32 for 512 and 256) become image_size, and an item has
    the keys, dtypes and shapes of a BraTS SliceSource item."""
    from jaxseg.data import phantom, brats
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, "data.format=figshare_mat",
                                   'data.modalities=["t1ce"]', "data.target=wt", "data.crop=none"])
    for n, size in ((1, 64), (2, 32)):
        image, mask = tumor_slice((size, size), (size // 4, size // 2), size // 8)
        write_figshare_mat(tmp_path / "fig" / f"{n}.mat", image, mask, 2, f"P{n}")
    found = formats.get("figshare_mat").find_records(tmp_path / "fig")
    index = formats.get("figshare_mat").slice_index(found, ["t1ce"], cfg.data, 0, False)
    source = formats.get("figshare_mat").slice_source(found, ["t1ce"], cfg.data, index)
    items = [source[i] for i in range(len(source))]
    for item in items:
        assert item["image"].shape == (32, 32, 1) and item["classes"].shape == (32, 32)
        # the tumor is in the top half (rows) in both: orientation survives the fit
        assert item["classes"][:16].sum() > 0 and item["classes"][16:].sum() == 0
    # grain workers are spawned: the source (and the format reading its records) travels by pickle
    clone = pickle.loads(pickle.dumps(source))
    assert repr(clone) == repr(source)
    for item, cloned in zip(items, (clone[i] for i in range(len(clone)))):
        assert all(np.array_equal(item[k], cloned[k]) for k in item)
    phantom.write_phantoms(tmp_path / "ph", 1, 0, (32, 32, 20))
    cases = brats.find_cases(tmp_path / "ph")
    brats_cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, 'data.modalities=["t1ce"]', "data.target=wt"])
    reference = brats_volumes.SliceSource(cases, ["t1ce"], brats_cfg.data, [(0, 10)])[0]
    assert set(items[0]) == set(reference)
    for key in reference:
        assert np.asarray(items[0][key]).dtype == np.asarray(reference[key]).dtype, key
        assert np.shape(items[0][key]) == np.shape(reference[key]), key


def test_2d_formats_refuse_regions_and_classes():
    for target, loss in (("regions", "bce_dice"), ("classes", "ce_dice")):
        with pytest.raises(JaxsegError, match="data.target: must be \"wt\" for data.format = 'figshare_mat'"):
            config_lib.load("figshare_resunet34", [f"data.target={target}", f"train.loss={loss}"])
    with pytest.raises(JaxsegError, match="figshare_mat slices have one channel"):
        config_lib.load("figshare_resunet34", ['data.modalities=["t1ce", "flair"]', "model.input_mode=channels"])


def test_cli_inspect_of_a_figshare_folder(tmp_path):
    from typer.testing import CliRunner
    from jaxseg import cli
    image, mask = tumor_slice((32, 24), (10, 10), 4)
    write_figshare_mat(tmp_path / "1.mat", image, mask, 1, "A")
    result = CliRunner().invoke(cli.app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "figshare_mat dataset" in result.output and "meningioma" in result.output
    (tmp_path / "2.mat").write_bytes(b"\x89HDF\r\n")  # a truncated download
    result = CliRunner().invoke(cli.app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 2 and "2.mat:notaMATLABv7.3" in "".join(result.output.split())  # wrapped
    assert "Traceback" not in result.output
