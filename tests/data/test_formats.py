"""formats: the registry finds a dataset's format from its files, a prediction input's from its
name, and what prediction writes; every format and sampling is one entry."""
from __future__ import annotations

import pytest

from jaxseg import config
from jaxseg.data import formats
from jaxseg.errors import JaxsegError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_detect_ranks_nifti_over_mat_over_images(tmp_path):
    _touch(tmp_path / "p" / "a.png")
    assert formats.detect(tmp_path) == "image_folder"
    _touch(tmp_path / "q" / "b.MAT")
    assert formats.detect(tmp_path) == "figshare_mat"
    _touch(tmp_path / "r" / "c_flair.nii.gz")
    assert formats.detect(tmp_path) == "brats"
    _touch(tmp_path / "s" / ".hidden.nii")  # hidden files are not looked at
    with pytest.raises(JaxsegError, match="holds no NIfTI"):
        formats.detect(tmp_path / "s")
    with pytest.raises(JaxsegError, match="no such file or folder"):
        formats.detect(tmp_path / "missing")


def test_prediction_inputs_and_outputs(tmp_path):
    assert [formats.of_input(tmp_path / n).name for n in ("x.mat", "x.png", "x.tiff", "x.nii.gz", "case")] == [
        "figshare_mat", "image_folder", "image_folder", "brats", "brats"]
    (tmp_path / "empty").mkdir()
    assert formats.of_input(tmp_path / "empty").name == "brats"  # not 2D slices: the volume path explains
    volume_run = config.load(None, [])
    slice_run = config.load(None, ["data.format=image_folder", "data.target=wt"])
    assert formats.prediction_output([tmp_path / "a.nii.gz"], volume_run) == "nifti"
    assert formats.prediction_output([tmp_path / "a.nii.gz", tmp_path / "b.png"], volume_run) == "png"
    assert formats.prediction_output([tmp_path / "a.nii.gz"], slice_run) == "png"
    assert formats.prediction_output([tmp_path / "a.mat"]) == "png"


def test_each_format_and_sampling_is_one_entry():
    for name, data_format in formats.FORMATS.items():
        assert formats.get(name) is data_format and data_format.name == name
        assert set(data_format.samplings) <= set(formats.SAMPLINGS)
    assert [formats.sampling(d).spatial_dims for d in (2, 3)] == [2, 3]
    with pytest.raises(JaxsegError, match="data.format: unknown format 'nifti2d'"):
        formats.get("nifti2d")
