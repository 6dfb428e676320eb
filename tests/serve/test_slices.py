"""The web app with a model trained on 2D slices: one `.mat`, PNG or TIFF slice uploaded, checked
and explained, in-process (Starlette's TestClient) and once in Chromium (`jaxseg serve` as a process).

The app's only checkpoint is a tiny whole-tumor U-Net trained on figshare-like `.mat` slices.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from jaxseg.data import figshare
from jaxseg.serve import slices
from jaxseg.serve.app import ServeSettings
from tests.data.formats2d import tumor_slice, write_image_pair
from tests.serve.conftest import Client, serve_process, wait_for_job
from tests.serve.test_app import served
from tests.train.test_loop_2d import tiny_figshare_run

JOB = {"checkpoint": "0", "source": "upload", "mc_samples": 3}


@pytest.fixture(scope="module")
def fig_run(tmp_path_factory):
    """A tiny whole-tumor U-Net with dropout, trained on figshare-like .mat slices (and its data)."""
    return tiny_figshare_run(tmp_path_factory)


@pytest.fixture(scope="module")
def server(fig_run, phantom_root, tmp_path_factory):
    settings = ServeSettings(checkpoints=(fig_run[1],), data=phantom_root, workdir=tmp_path_factory.mktemp("serve_slices"),
                             max_upload_mb=1)
    with served(settings) as s:
        yield s


@pytest.fixture
def client(server) -> Client:
    return Client(server[1])


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    iio.imwrite(out, array, extension=".png")
    return out.getvalue()


def test_a_mat_slice_is_explained_with_the_slice_model(fig_run, client, tmp_path):
    from jaxseg.infer.predict import predict
    root, run = fig_run
    one = next(root.rglob("2.mat"))  # 64 x 48
    status, info = client.get("/api/info")
    assert status == 200 and [c["input"] for c in info["checkpoints"]] == ["slice"]
    assert info["checkpoints"][0]["label"].endswith(", 2D slices")
    status, upload = client.upload("slice", one.read_bytes(), "patient 2.mat")
    assert status == 200, upload
    assert upload == {"slot": "slice", "name": "patient 2.mat", "bytes": one.stat().st_size, "shape": [64, 48],
                      "spacing": None, "labels": None, "kind": "mat", "channels": 1, "has_mask": True}

    status, job = client.post_json("/api/jobs", JOB)
    assert status == 202, job
    assert job["description"].startswith("uploaded slice patient 2.mat")
    job = wait_for_job(client, job["id"])
    assert job["state"] == "done", job
    result = job["result"]
    labels = {f["key"]: f["label"] for f in result["files"]}
    assert labels["segmentation"] == "Segmentation (PNG)" and labels["probabilities"] == "Probabilities (NumPy)"
    assert labels["summary"] == "Summary (JSON)" and labels["report"] == "Report (HTML)"
    urls = {f["key"]: f["url"] for f in result["files"]}

    status, mask_png, headers = client.request("GET", urls["segmentation"])
    assert status == 200 and headers["content-type"] == "image/png"
    mask = iio.imread(mask_png)
    # The same mask as `predict` writes for the original file (its own, independent path).
    [p] = predict(one, run, tmp_path / "seg.png")
    np.testing.assert_array_equal(mask, iio.imread(p.segmentation))
    # Areas in pixels, against the downloaded mask and the .mat's own mask.
    assert result["volumes_ml"] is None
    assert result["areas_px"] == {"predicted": {"WT": int(np.count_nonzero(mask))},
                                  "ground_truth": {"WT": int(figshare.read_slice(one).mask.sum())}}
    status, probabilities, _ = client.request("GET", urls["probabilities"])
    assert status == 200 and np.load(io.BytesIO(probabilities)).shape == (64, 48)
    status, page, headers = client.request("GET", result["report_url"])
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'id="view-axial"' in page and b'id="view-sagittal"' not in page


def test_a_png_slice_with_its_mask(fig_run, client):
    image, mask = tumor_slice((64, 64), (24, 30), 7, seed=3)
    image8 = np.clip(image // 4, 0, 255).astype(np.uint8)
    mask255 = (mask * 255).astype(np.uint8)
    # A mask of another size than its slice is refused, naming the file, whichever comes first.
    assert client.upload("slice_mask", png_bytes(mask255[:, :40]), "small_mask.png")[0] == 200
    status, answer = client.upload("slice", png_bytes(image8), "scan.png")
    assert status == 400 and answer["error"] == (
        "scan.png: the slice is 64 x 64 pixels but its mask is 64 x 40; a mask must have its slice's size")
    status, answer = client.upload("slice_mask", png_bytes(mask255), "scan_mask.png")
    assert status == 200 and answer["shape"] == [64, 64] and answer["has_mask"] is True
    status, answer = client.upload("slice", png_bytes(image8), "scan.png")
    assert status == 200 and answer["kind"] == "png" and answer["has_mask"] is False

    status, job = client.post_json("/api/jobs", {**JOB, "mc_samples": 1})
    assert status == 202, job
    assert job["description"].startswith("uploaded slice scan.png, scan_mask.png")
    job = wait_for_job(client, job["id"])
    assert job["state"] == "done", job
    assert job["result"]["areas_px"]["ground_truth"] == {"WT": int(mask.sum())}  # the uploaded mask was read


def mat_bytes(tmp_path: Path, image: np.ndarray, mask: np.ndarray) -> bytes:
    from tests.data.formats2d import write_figshare_mat
    path = write_figshare_mat(tmp_path / "x.mat", image, mask)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["text", "nifti", "truncated_png", "mat_as_mask", "mask_values", "mat_v5",
                                  "too_large"])
def test_bad_slice_uploads_give_one_line_naming_the_file(server, client, phantom_case, tmp_path, kind, monkeypatch):
    app, _ = server
    image, mask = tumor_slice((32, 32), (16, 16), 5)
    good_png = png_bytes(np.clip(image // 4, 0, 255).astype(np.uint8))
    slot, content, expected = {
        "text": ("slice", b"notes, not an image\n" * 10, "not a .mat, PNG or TIFF slice"),
        "nifti": ("slice", (phantom_case / f"{phantom_case.name}_flair.nii.gz").read_bytes(),
                  "not a .mat, PNG or TIFF slice"),
        "truncated_png": ("slice", good_png[:60], "cannot read this image"),
        "mat_as_mask": ("slice_mask", mat_bytes(tmp_path, image, mask), "not a PNG or TIFF mask"),
        "mask_values": ("slice_mask", png_bytes((np.arange(32 * 32) % 7).astype(np.uint8).reshape(32, 32)),
                        "are not binary"),
        "mat_v5": ("slice", b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + b"\0" * 200, "not a MATLAB v7.3"),
        "too_large": ("slice", good_png, "32 x 32 = 1,024 pixels is more than this app accepts"),
    }[kind]
    if kind == "too_large":
        monkeypatch.setattr(slices, "MAX_PIXELS", 1000)
    before = {p for p in (app.workdir / "sessions").iterdir()}
    status, answer = client.upload(slot, content, f"my_{kind}.bin")
    assert status == 400
    message = answer["error"]
    assert message.startswith(f"my_{kind}.bin: ") and expected in message and str(app.workdir) not in message
    assert "\n" not in message
    # Nothing kept: a first request refused leaves no session (and no file), and no part file anywhere.
    assert {p for p in (app.workdir / "sessions").iterdir()} == before and not list(app.workdir.rglob(".part-*"))


def test_job_requests_a_slice_model_cannot_take(client, phantom_case):
    status, answer = client.post_json("/api/jobs", JOB)
    assert status == 400 and answer["error"] == "this model reads one 2D slice (.mat, PNG or TIFF); upload it first"
    # Volumes uploaded are not a slice; a dataset case (volumes) is refused, saying what to do.
    client.upload_case(phantom_case, ("flair", "t1ce"))
    assert client.post_json("/api/jobs", JOB)[1]["error"].endswith("upload it first")
    status, answer = client.post_json("/api/jobs", {**JOB, "source": "case", "case": phantom_case.name})
    assert status == 400 and "reads one 2D slice (.mat, PNG or TIFF); the dataset's cases are volumes" in answer["error"]


@pytest.mark.slow
def test_a_slice_in_the_browser(browser, fig_run, tmp_path):
    """The page offers the slice slots for a slice model (not the volumes', not the dataset menu),
    explains an uploaded PNG and its mask, and shows the areas in pixels."""
    root, run = fig_run
    image, mask = tumor_slice((64, 64), (24, 30), 7, seed=4)
    image_path, mask_path = write_image_pair(tmp_path / "upload", "scan", np.clip(image // 4, 0, 255).astype(np.uint8),
                                             mask)
    with serve_process("--checkpoint", str(run), "--workdir", str(tmp_path / "work")) as url:
        browser.goto(url, "document.documentElement?.dataset.ready === 'true'")
        slots = browser.evaluate("[...document.querySelectorAll('#slots .slot')].map((s) => s.id)")
        assert slots == ["slot-slice", "slot-slice_mask"]
        assert browser.evaluate("document.getElementById('source-case').disabled") is True
        assert browser.evaluate("document.getElementById('file-many').closest('.many').hidden") is True
        assert "upload a .mat, PNG or TIFF file" in browser.evaluate("document.getElementById('input-message').textContent")
        shots = Path(os.environ.get("JAXSEG_SCREENSHOTS") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        browser.screenshot(shots / "slice-1-start.png")
        browser.page.set_input_files("#file-slice", image_path)
        browser.wait_for("document.getElementById('status-slice').textContent.startsWith('✓ scan.png · 64×64 pixels')", 60)
        browser.page.set_input_files("#file-slice_mask", mask_path)
        browser.wait_for("document.getElementById('status-slice_mask').classList.contains('ok')", 60)
        browser.page.fill("#mc-samples", "2")
        browser.page.click("#run")
        browser.wait_for("document.documentElement.dataset.job === 'done'", 300)
        table = browser.evaluate("document.getElementById('result-volumes').textContent")
        assert table.startswith("pixelsWT") and f"ground truth{int(mask.sum())}" in table
        downloads = browser.evaluate("[...document.querySelectorAll('#downloads a')].map((a) => a.textContent)")
        assert "Segmentation (PNG)" in downloads and "Grad-CAM (NumPy)" in downloads
        browser.screenshot(shots / "slice-2-result.png")
        assert browser.problems() == [], browser.problems()
