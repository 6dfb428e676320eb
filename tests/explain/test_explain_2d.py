"""`jaxseg explain` on 2D sources: a figshare ``.mat`` and a PNG slice, the report in one-slice form."""
import base64
import json
import re
import zlib

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from jaxseg import cli
from jaxseg.errors import JaxsegError
from jaxseg.explain.captions import describe_image
from jaxseg.explain.run import ExplainSettings, explain
from tests.data.formats2d import tumor_slice, write_image_pair
from tests.train.test_loop_2d import tiny_figshare_run

QUICK = ExplainSettings(mc_samples=3, faithfulness_steps=5, attribution_steps=2, compare_layers=())


@pytest.fixture(scope="module")
def fig_run(tmp_path_factory):
    """A tiny whole-tumor U-Net with dropout, trained on figshare-like .mat slices."""
    return tiny_figshare_run(tmp_path_factory)


@pytest.fixture(scope="module")
def explained_mat(fig_run, tmp_path_factory):
    root, run = fig_run
    one = next(root.rglob("2.mat"))  # 64 x 48: a transposed map would be 48 x 64
    out = tmp_path_factory.mktemp("explained")
    return one, out, explain(one, run, out, QUICK)


def test_a_mat_slice_gets_every_map_on_its_own_pixel_grid(fig_run, explained_mat, tmp_path):
    from jaxseg.data import figshare
    from jaxseg.infer.predict import predict
    root, run = fig_run
    one, out, result = explained_mat
    files = result.files
    assert files["segmentation"] == out / "2_seg.png" and files["summary"] == out / "2_explain.json"
    mask = iio.imread(files["segmentation"])
    assert mask.shape == (64, 48) and set(np.unique(mask)) <= {0, 255}
    for key in ("probabilities", "gradcam", "mc_mean", "mc_variance", "mc_entropy", "mc_mutual_information"):
        assert np.load(files[key]).shape == (64, 48), key
    cam = np.load(files["gradcam"])
    # In [0, 1]: normalised in the model's grid, then resampled to the input's (the peak may fall between pixels).
    assert cam.min() >= 0 and 0 < cam.max() <= 1
    # The same probabilities and mask as `predict` writes for this file (its own, independent path).
    [p] = predict(one, run, tmp_path / "seg.png", probabilities=True)
    np.testing.assert_allclose(np.load(files["probabilities"]), np.load(p.probabilities), atol=1e-5)
    np.testing.assert_array_equal(mask, iio.imread(p.segmentation))

    summary = json.loads(files["summary"].read_text())
    assert summary["input_kind"] == "slice" and summary["input"] == str(one)
    assert "volumes_ml" not in summary and "slices_to_review" not in summary
    reference = figshare.read_slice(one).mask
    assert summary["areas_px"] == {"predicted": {"WT": int((mask > 0).sum())},
                                   "ground_truth": {"WT": int(reference.sum())}}
    # One channel: all of the whole tumor's attribution is that channel's.
    assert summary["modality_attribution"] == {"WT": {"t1ce": pytest.approx(1.0)}}
    assert summary["calibration"]["source"] == "mc_mean" and "WT" in summary["calibration"]  # against the .mat's mask
    assert summary["faithfulness_slices"]["n"] == (1 if mask.any() else 0)
    caption = summary["caption"]
    assert "image" in caption and "hemisphere" not in caption and " mL" not in caption
    assert summary["slice_captions"] == [caption]


def test_the_report_shows_the_image_as_stored_in_one_view(explained_mat):
    one, out, result = explained_mat
    page = result.report.read_text()
    assert 'id="view-axial"' in page and 'id="view-sagittal"' not in page and 'id="panel-3d"' not in page
    assert "Tumor area" in page and "(px)" in page and "64 × 48 pixels" in page
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    assert data["image_2d"] and data["views"] == ["axial"] and data["meshes"] == []
    assert [c["name"] for c in data["classes"]] == ["tumor"]  # a whole-tumor model: no NCR/ED/ET legend
    # The axial view draws [x, y] at screen column X-1-x, row Y-1-y (viewer.js): undo it on the
    # embedded labels and the input's mask must come out, in its own rows and columns.
    X, Y, Z = data["shape"]
    labels = np.frombuffer(zlib.decompress(base64.b64decode(data["segmentation"])), np.uint8).reshape(X, Y, Z)
    screen = labels[::-1, ::-1, 0].T  # screen[v, u] = labels[X-1-u, Y-1-v]
    mask = iio.imread(result.files["segmentation"]) > 0
    full_x, full_y, _ = data["full_shape"]
    assert (full_y, full_x) == mask.shape == (64, 48)
    row0 = full_y - (data["offset"][1] + Y)  # the embedded crop's first row and column in the image
    col0 = full_x - (data["offset"][0] + X)
    assert data["stride"] == 1
    np.testing.assert_array_equal(screen > 0, mask[row0:row0 + Y, col0:col0 + X])
    assert mask[:row0].sum() + mask[row0 + Y:].sum() + mask[:, :col0].sum() + mask[:, col0 + X:].sum() == 0


def test_a_png_slice_report_reads_out_rows_and_columns(fig_run, browser, tmp_path):
    root, run = fig_run
    image, reference = tumor_slice((56, 40), (16, 28), 6, seed=3)
    png, _ = write_image_pair(tmp_path / "slices", "case7", np.clip(image // 4, 0, 255).astype(np.uint8), reference)
    result = explain(png, run, tmp_path / "report.html", QUICK)
    assert result.summary["areas_px"]["ground_truth"] == {"WT": int(reference.sum())}  # the mask beside it
    browser.open(result.report)
    assert browser.problems() == []
    assert browser.evaluate("document.querySelectorAll('canvas.view').length") == 1
    readout = browser.evaluate("document.getElementById('readout').innerText")
    cells = dict(line.split("\t", 1) for line in readout.splitlines() if "\t" in line)
    row, col = (int(v) for v in cells["Pixel (row, column)"].split(","))
    # What the cursor reads is the input's pixel at that row and column: its mask and `predict`'s.
    from jaxseg.infer.predict import predict
    [p] = predict(png, run, tmp_path / "pred.png")
    predicted = iio.imread(p.segmentation) > 0
    assert cells["Ground truth"] == ("tumor" if reference[row, col] else "background")
    assert cells["Prediction"] == ("tumor" if predicted[row, col] else "background")


def test_the_image_caption_places_and_counts_the_tumor():
    brain = np.zeros((60, 90, 1), bool)
    brain[:, 30:, :] = True  # the nonzero image: rows 0-59, columns 30-89
    classes = np.zeros((60, 90, 1), np.uint8)
    classes[5:10, 35:41] = 1  # upper left of that area
    text = describe_image(classes, brain).text
    assert text.startswith(f"Tumor predicted: 30 pixels ({30 / brain.sum():.1%} of the image's nonzero area), "
                           "in the upper left part of the image.")
    centred = np.zeros_like(classes)
    centred[28:32, 58:62] = 1
    assert "near the centre of the image" in describe_image(centred, brain).text
    assert describe_image(np.zeros_like(classes), brain).text == "No tumor predicted in this image."
    uncertainty = np.zeros((60, 90, 1), np.float32)
    uncertainty[5:10, 35:41] = 1.0  # every uncertain pixel inside the tumor's border band
    assert "30 uncertain pixels" in describe_image(classes, brain, uncertainty=uncertainty).text


def test_2d_sources_refuse_what_they_cannot_explain(fig_run, smoke_run, tmp_path):
    root, run = fig_run
    one = next(root.rglob("2.mat"))
    runner = CliRunner()
    # No --checkpoint: no bundled model reads 2D slices; one line saying what to pass.
    done = runner.invoke(cli.app, ["explain", str(one), "--out", str(tmp_path / "r.html")])
    assert done.exit_code != 0 and "none reads 2D slices" in " ".join(done.output.split())
    assert "Traceback" not in done.output and not (tmp_path / "r.html").exists()
    # A folder of several slices: explain takes one.
    with pytest.raises(JaxsegError, match="holds 12 slices .*explain takes one"):
        explain(root, run, tmp_path / "r.html", QUICK)
    # A constant image names its file.
    flat, _ = write_image_pair(tmp_path / "flat", "flat", np.full((40, 40), 7, np.uint8), np.zeros((40, 40), np.uint8))
    with pytest.raises(JaxsegError, match=f"{re.escape(str(flat))}: the image is constant"):
        explain(flat, run, tmp_path / "r.html", QUICK)
    # The mask given instead of its image.
    with pytest.raises(JaxsegError, match="a mask .*not an image"):
        explain(flat.with_name("flat_mask.png"), run, tmp_path / "r.html", QUICK)
    # A BraTS-region model (the smoke run) cannot explain a slice as a whole-tumor mask.
    with pytest.raises(JaxsegError, match="whole-tumor model"):
        explain(one, smoke_run, tmp_path / "r.html", QUICK)
    assert not (tmp_path / "r.html").exists()
