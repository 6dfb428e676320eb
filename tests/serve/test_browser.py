"""The web app in a real browser: `jaxseg serve` started as a process, headless Chromium driven by
Playwright (tests/browser.py).

The user's path: open the page, choose the phantom's files, run, watch the progress, read the
result in the embedded report, move its axial slider (the caption follows), download the
segmentation; and a bad file gives a message while the app keeps serving. Every step saves a
screenshot in one folder (printed; `pytest -s` shows it, JAXSEG_SCREENSHOTS=DIR keeps them there).
Skips, saying why, without chromium or playwright (the `browser` fixture).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.browser import Browser
from tests.serve.conftest import SHAPE, serve_process

SLOTS = ("flair", "t1", "t1ce", "t2", "seg")
REPORT = "document.getElementById('report').contentDocument"


@pytest.fixture(scope="module")
def app_url(smoke_run, phantom_root, tmp_path_factory):
    with serve_process("--checkpoint", str(smoke_run), "--data", str(phantom_root),
                       "--workdir", str(tmp_path_factory.mktemp("serve_browser_work"))) as url:
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("JAXSEG_SCREENSHOTS") or tmp_path_factory.mktemp("serve_screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the web app: {folder}")
    return folder


def text(browser: Browser, element_id: str, document: str = "document") -> str:
    return browser.evaluate(f"{document}.getElementById({json.dumps(element_id)}).textContent")


@pytest.mark.slow
def test_upload_run_browse_download(browser: Browser, app_url: str, phantom_case: Path, shots: Path, tmp_path: Path):
    browser.goto(app_url, "document.documentElement?.dataset.ready === 'true'")
    assert "missing: FLAIR, T1, T1ce (contrast), T2" in text(browser, "input-message")
    assert browser.evaluate("document.getElementById('run').disabled") is True
    browser.screenshot(shots / "1-start.png")

    # All five files at once, as a user picks a case folder's files; each goes to its slot by name.
    browser.page.set_input_files("#file-many", [phantom_case / f"{phantom_case.name}_{slot}.nii.gz" for slot in SLOTS])
    for slot in SLOTS:
        browser.wait_for(f"document.getElementById('status-{slot}')?.classList.contains('ok')", 60)
    assert text(browser, "status-seg").startswith(f"✓ {phantom_case.name}_seg.nii.gz · 48×48×32 voxels")
    assert text(browser, "input-message") == "Ready."
    browser.screenshot(shots / "2-uploaded.png")

    browser.page.fill("#mc-samples", "2")
    browser.page.click("#run")
    browser.wait_for("document.querySelectorAll('#job-steps li').length >= 2", 300)
    assert browser.evaluate("document.getElementById('progress').value") > 0
    assert browser.evaluate("document.getElementById('run').disabled") is True  # one job at a time
    browser.screenshot(shots / "3-progress.png")

    browser.wait_for(f"document.documentElement.dataset.job === 'done' && {REPORT}?.documentElement?.dataset.ready"
                     " === 'true'", 600)
    assert text(browser, "job-percent") == "100 %" and text(browser, "result-caption")
    assert text(browser, "job-error") == ""
    browser.screenshot(shots / "4-result.png")

    # The report's axial slider moves the caption to the caption of the new slice.
    job_id = browser.evaluate("document.documentElement.dataset.result")
    summary = browser.evaluate(f"fetch('/api/jobs/{job_id}/files/summary').then(r => r.json())")
    first = text(browser, "caption", REPORT)
    assert first in summary["slice_captions"]
    offset_z = browser.evaluate(f"JSON.parse({REPORT}.getElementById('report-data').textContent).offset[2]")
    stride = browser.evaluate(f"JSON.parse({REPORT}.getElementById('report-data').textContent).stride")
    current = int(browser.evaluate(f"{REPORT}.getElementById('slider-axial').value"))
    moved = next(k for k in range(current + 3, current - 20, -1)  # a few slices up, or down from there
                 if summary["slice_captions"][offset_z + k * stride] != first)
    browser.evaluate(f"(() => {{ const s = {REPORT}.getElementById('slider-axial'); s.value = '{moved}';"
                     " s.dispatchEvent(new Event('input', {bubbles: true})); })()")
    expected = summary["slice_captions"][offset_z + moved * stride]
    browser.wait_for(f"{REPORT}.getElementById('caption').textContent === {json.dumps(expected)}", 10)
    assert moved != current and expected != first
    browser.screenshot(shots / "5-slider-moved.png")

    with browser.page.expect_download() as download:
        browser.page.click("#download-segmentation")
    assert download.value.suggested_filename == "upload_seg.nii.gz"
    download.value.save_as(saved := tmp_path / download.value.suggested_filename)
    labels = nib.load(saved)
    flair = nib.load(phantom_case / f"{phantom_case.name}_flair.nii.gz")
    assert labels.shape == SHAPE and np.array_equal(labels.affine, flair.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 4}
    assert browser.problems() == []


def test_a_bad_file_gets_a_message_and_the_app_keeps_serving(browser: Browser, app_url: str, phantom_case: Path,
                                                            tmp_path: Path, shots: Path):
    browser.goto(app_url, "document.documentElement?.dataset.ready === 'true'")
    notes = tmp_path / "notes.nii.gz"
    notes.write_text("not an image\n")
    browser.page.set_input_files("#file-t1", [notes])
    message = browser.wait_for("document.getElementById('status-t1').classList.contains('error')"
                               " && document.getElementById('status-t1').textContent", 30)
    assert message == ("notes.nii.gz: not a NIfTI file (neither a .nii volume nor a gzip-compressed .nii.gz)"
                       f" (the earlier {phantom_case.name}_t1.nii.gz is kept)")
    # The session's earlier uploads and finished job are still there: the server kept serving.
    assert browser.evaluate("fetch('/api/info').then(r => r.json()).then(i => Object.keys(i.uploads).length)") == 5
    assert browser.wait_for("document.documentElement.dataset.job === 'done'", 10)
    browser.screenshot(shots / "6-bad-file.png")
    # The only complaint is the browser's own log line for the 400 answer to the upload.
    assert [p for p in browser.problems() if "status of 400" not in p] == []


def test_a_case_from_the_dataset_menu(browser: Browser, app_url: str, shots: Path):
    browser.goto(app_url, "document.documentElement?.dataset.ready === 'true'")
    browser.page.click("#source-case")
    options = browser.evaluate("[...document.getElementById('case').options].map(o => o.textContent)")
    assert options == ["Phantom_5_000 (flair, t1, t1ce, t2, seg)", "Phantom_5_001 (flair, t1, t1ce, t2, seg)"]
    assert text(browser, "input-message") == "Ready."
    browser.screenshot(shots / "7-dataset-menu.png")
    assert browser.problems() == []
