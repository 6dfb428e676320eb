"""Inputs the model was not made for (jaxseg/data/checks.py), each with a file made here:
refused with one line naming the file and nothing written, or, for an image that is not
skull-stripped, answered with a warning on stderr, in explain's JSON summary and in the report.
(The all-zero, constant and label-map images are also in tests/data/test_bad_inputs.py's corpus,
which runs them through load_case, ``data inspect`` and ``predict``.)"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.data import checks, phantom
from jaxseg.errors import JaxsegError
from tests.data.test_bad_inputs import case_labels

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def one_case(root: Path, **kwargs) -> Path:
    """One smoke-size phantom case folder (what the smoke run was trained on)."""
    return phantom.write_phantoms(root, 1, 7, (32, 32, 20), **kwargs)[0]


def modality_file(case: Path, modality: str) -> Path:
    return case / f"{case.name}_{modality}.nii.gz"


def add_head_around_the_brain(case: Path, modality: str) -> Path:
    """Rewrite one modality as an image that is not skull-stripped: background noise of a raw
    MRI (Rician-like, positive) wherever the skull-stripped image was exactly 0."""
    path = modality_file(case, modality)
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.int16)
    noise = np.random.default_rng(0).uniform(5, 40, data.shape).astype(np.int16)
    data = np.where(data == 0, noise, data)
    nib.Nifti1Image(data, img.affine, img.header).to_filename(path)
    return path


def test_border_fraction_against_an_explicit_count():
    rng = np.random.default_rng(1)
    volume = np.zeros((12, 10, 8), np.float32)
    volume[2:-2, 2:-2, 2:-2] = rng.uniform(50, 100, (8, 6, 4))  # a brain inside the volume
    assert checks.border_signal_fraction(volume) == 0.0
    volume[0, :5, :] = 80.0  # signal on part of one face, and along an edge of another
    volume[:, -1, :3] = rng.uniform(50, 100, (12, 3))
    on_border = above = 0
    for index in np.ndindex(volume.shape):
        if any(i in (0, n - 1) for i, n in zip(index, volume.shape)):
            on_border += 1
            above += volume[index] > 0.1
    assert on_border == 12 * 10 * 8 - 10 * 8 * 6
    assert checks.border_signal_fraction(volume) == pytest.approx(above / on_border)
    assert 0.1 < above / on_border < 0.5


def test_content_checks_name_the_file(tmp_path):
    image = np.random.default_rng(2).uniform(0, 500, (10, 10, 10, 2)).astype(np.float32)
    files = [tmp_path / "a_flair.nii.gz", tmp_path / "a_t1ce.nii.gz"]
    checks.check_content(image, files)  # an MRI-like image passes
    for fill, problem in ((0.0, "all zeros"), (7.0, "constant (every voxel is 7)")):
        bad = image.copy()
        bad[..., 1] = fill
        with pytest.raises(JaxsegError, match=re.escape(f"a_t1ce.nii.gz: the image is {problem}")):
            checks.check_content(bad, files)
    labels = image.copy()
    labels[..., 0] = case_labels((10, 10, 10))
    with pytest.raises(JaxsegError, match=r"a_flair\.nii\.gz: only the values 0, 1, 2, 4: a label map"):
        checks.check_content(labels, files)
    binary = image.copy()
    binary[..., 0] = (image[..., 0] > 250) * 1000.0  # a mask scaled to 0/1000 is no image either
    with pytest.raises(JaxsegError, match="only the values 0, 1000"):
        checks.check_content(binary, files)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 5.0), (0.4, 0.4, 0.4), (2.0, 2.0, 2.0)])
def test_spacing_far_from_1_mm_is_refused(spacing):
    with pytest.raises(JaxsegError, match=r"scan\.nii\.gz: voxel spacing .* mm is far from the 1 mm"):
        checks.check_geometry(spacing, "scan.nii.gz")
    checks.check_geometry((0.9375, 0.9375, 1.2), "scan.nii.gz")  # a common clinical 1 mm-ish grid


def test_predict_refuses_thick_slices_in_one_line_and_writes_nothing(tmp_path, smoke_run):
    case = one_case(tmp_path / "data", spacing=(1.0, 1.0, 5.0))
    out = tmp_path / "out" / "seg.nii.gz"
    result = invoke("predict", case, "--checkpoint", smoke_run, "--out", out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("predicting ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert f"{case.name}_flair.nii.gz: voxel spacing 1 x 1 x 5 mm" in lines[0]
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_a_folder_with_one_thick_sliced_case_is_refused_before_any_case_is_written(tmp_path, smoke_run):
    data = tmp_path / "data"
    good = one_case(data / "a")
    thick = phantom.write_phantoms(data / "b", 1, 8, (32, 32, 20), spacing=(1.0, 1.0, 3.0))[0]
    out = tmp_path / "out"
    result = invoke("predict", data, "--checkpoint", smoke_run, "--out", out)
    assert result.exit_code == 2, result.output
    assert f"{thick.name}_flair.nii.gz: voxel spacing 1 x 1 x 3 mm" in result.output
    assert not (out / f"{good.name}.nii.gz").exists() and not (out.exists() and any(out.iterdir()))


def test_explain_refuses_an_all_zero_t1ce_in_one_line_and_writes_nothing(tmp_path, smoke_run):
    case = one_case(tmp_path / "data")
    t1ce = modality_file(case, "t1ce")
    img = nib.load(t1ce)
    nib.Nifti1Image(np.zeros(img.shape, np.int16), img.affine, img.header).to_filename(t1ce)
    out = tmp_path / "explained"
    result = invoke("explain", case, "--checkpoint", smoke_run, "--out", out, "--mc-samples", 2)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {t1ce}: the image is all zeros: no MRI signal to segment "
                      "(an empty or failed export?)"], result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_training_stops_at_a_case_with_an_all_zero_modality(tmp_path):
    from jaxseg.train import loop
    root = tmp_path / "data"
    cases = phantom.write_phantoms(root, 4, 0, (32, 32, 20))
    flair = modality_file(cases[2], "flair")
    img = nib.load(flair)
    nib.Nifti1Image(np.zeros(img.shape, np.int16), img.affine, img.header).to_filename(flair)
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, f"data.root={root}", "data.val_cases=[]",
                                   "data.split=[1.0, 0.0, 0.0]"])
    with pytest.raises(JaxsegError, match=rf"{cases[2].name}_flair\.nii\.gz: the image is all zeros"):
        loop.train(cfg, tmp_path / "run", quiet=True)


def test_not_skull_stripped_is_answered_with_a_warning_everywhere(tmp_path, smoke_run):
    case = one_case(tmp_path / "data")
    t2 = add_head_around_the_brain(case, "t2")
    image = np.asarray(nib.load(t2).dataobj, np.float32)[..., None]
    fraction = checks.border_signal_fraction(image[..., 0])
    assert fraction > 0.9  # the noise fills the border: far above the threshold

    seg = tmp_path / "seg.nii.gz"
    result = invoke("predict", case, "--checkpoint", smoke_run, "--out", seg)
    assert result.exit_code == 0, result.output
    assert seg.is_file()
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and f"{t2}:" in warned[0] and "not skull-stripped" in warned[0]

    out = tmp_path / "explained"
    result = invoke("explain", case, "--checkpoint", smoke_run, "--out", out, "--mc-samples", 2)
    assert result.exit_code == 0, result.output
    assert any(line.startswith("warning: ") and "not skull-stripped" in line for line in result.stderr.splitlines())
    summary = json.loads((out / f"{case.name}_explain.json").read_text())
    assert len(summary["warnings"]) == 1 and str(t2) in summary["warnings"][0]
    assert f"{fraction:.0%} of the volume's border" in summary["warnings"][0]
    report = (out / f"{case.name}_report.html").read_text()
    banner = report[report.index('id="input-warnings"'):]
    assert "Check the input" in banner[:200] and t2.name in banner[:2000]


def test_a_skull_stripped_case_gets_no_warning(tmp_path, smoke_run):
    case = one_case(tmp_path / "data")
    out = tmp_path / "explained"
    result = invoke("explain", case, "--checkpoint", smoke_run, "--out", out, "--mc-samples", 2)
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.stderr
    assert json.loads((out / f"{case.name}_explain.json").read_text())["warnings"] == []
    assert 'id="input-warnings"' not in (out / f"{case.name}_report.html").read_text()
