"""The report in a real browser: headless Chromium driven by Playwright (tests/browser.py).

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` package (no
``playwright install``: it launches that chromium); the tests skip, saying which is missing, without them. Each test loads the page fresh, fails on
any console error, uncaught exception or network request, and some save screenshots (the paths
are printed: ``pytest -s`` shows them).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxseg.report.html import ReportData, write_report
from tests.report.test_html import synthetic_data

from tests.browser import Browser


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return write_report(synthetic_data(), tmp_path_factory.mktemp("report") / "report.html")


def test_report_opens_without_errors_and_screenshot(browser: Browser, report: Path) -> None:
    browser.open(report)
    assert browser.problems() == []
    assert browser.evaluate("document.documentElement.dataset.ready") == "true"
    assert browser.evaluate("document.querySelectorAll('#plot-deletion svg path').length") == 3
    assert "Prediction" in browser.evaluate("document.getElementById('readout').textContent")
    shot = browser.screenshot(report.with_name("report.png"))
    print(f"\nscreenshot of the synthetic report: {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_geometric_fractions_get_a_log_axis_and_even_ones_a_linear_one(browser: Browser, tmp_path: Path) -> None:
    from jaxseg.explain.faithfulness import curve_fractions
    data = synthetic_data()
    geometric = curve_fractions(11, "geometric").astype(np.float64)
    data.curves["deletion"] = {"fractions": geometric, "saliency": np.exp(-60 * geometric), "random": 1 - geometric}

    def axis(kind: str) -> dict:
        return browser.evaluate(
            f"(() => {{ const svg = document.querySelector('#plot-{kind} svg');"
            " const labels = [...svg.querySelectorAll('text')].map(t => t.textContent);"
            " const xs = svg.querySelectorAll('path')[2].getAttribute('d').slice(1).split('L')"
            "   .map(p => Number(p.split(',')[0]));"
            " return {labels, xs}; })()")

    browser.open(write_report(data, tmp_path / "geometric.html"))
    assert browser.problems() == []
    deletion, insertion = axis("deletion"), axis("insertion")
    assert [t for t in deletion["labels"] if t.endswith("%")] == ["0.1%", "1%", "10%", "100%"]
    assert any(t.endswith("(log scale)") for t in deletion["labels"])
    xs = np.array(deletion["xs"])  # 0 at the left end, then equal steps: a constant ratio on a log axis
    assert xs[0] == 50 and np.all(np.diff(xs) > 0)
    np.testing.assert_allclose(np.diff(xs[1:]), np.diff(xs[1:]).mean(), atol=0.15)
    # The synthetic insertion curve's fractions are even: a linear axis labelled 0.00 .. 1.00.
    assert "0.50" in insertion["labels"] and not any(t.endswith("(log scale)") for t in insertion["labels"])
    np.testing.assert_allclose(np.diff(insertion["xs"]), np.diff(insertion["xs"]).mean(), atol=0.15)


def test_views_are_radiological_and_labelled(browser: Browser, tmp_path: Path) -> None:
    """Channel c is bright on the patient's Right / Anterior / Superior half of axis c; the views
    must show the patient's right on the viewer's left (axial, coronal), anterior on the left
    (sagittal) and anterior / superior at the top."""
    shape = (24, 28, 20)
    index = np.indices(shape)
    image = np.stack([10.0 + 90.0 * (index[axis] >= shape[axis] // 2) for axis in range(3)], axis=-1)
    data = ReportData(case_id="orientation", image=image.astype(np.float32), channel_names=["R", "A", "S"],
                      spacing=(1.0, 1.0, 1.0), segmentation=np.zeros(shape, np.uint8), meshes={})
    browser.open(write_report(data, tmp_path / "orientation.html"))
    browser.page.click("#overlay-prediction")  # only the image, no colours

    def brighter(view: str, channel: int) -> dict[str, bool]:
        browser.evaluate(f"(() => {{ const s = document.getElementById('modality'); s.value = '{channel}';"
                         " s.dispatchEvent(new Event('change')); })()")
        halves = browser.evaluate(
            "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => {"
            f" const c = document.getElementById('view-{view}'), w = c.width, h = c.height;"
            " const d = c.getContext('2d').getImageData(0, 0, w, h).data, s = [0, 0, 0, 0];"
            " for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) { const g = d[4 * (y * w + x)];"
            "   s[x < w / 2 ? 0 : 1] += g; s[y < h / 2 ? 2 : 3] += g; }"
            " r(s); })))")
        left, right, top, bottom = halves
        return {"left": left > 1.5 * right, "right": right > 1.5 * left, "top": top > 1.5 * bottom, "bottom": bottom > 1.5 * top}

    assert brighter("axial", 0)["left"] and brighter("coronal", 0)["left"]  # patient Right
    assert brighter("axial", 1)["top"] and brighter("sagittal", 1)["left"]  # Anterior
    assert brighter("coronal", 2)["top"] and brighter("sagittal", 2)["top"]  # Superior
    assert browser.problems() == []


def test_axial_slider_moves_the_caption(browser: Browser, report: Path) -> None:
    data = synthetic_data()
    browser.open(report)
    first = browser.evaluate("document.getElementById('caption').textContent")
    assert first in data.slice_captions
    browser.evaluate("(() => { const s = document.getElementById('slider-axial'); s.value = '2';"
                     " s.dispatchEvent(new Event('input', {bubbles: true})); })()")
    offset_z = browser.evaluate("JSON.parse(document.getElementById('report-data').textContent).offset[2]")
    expected = data.slice_captions[offset_z + 2]
    assert browser.wait_for(f"document.getElementById('caption').textContent === {json.dumps(expected)}", 10)
    assert expected != first
    assert browser.problems() == []


def test_click_on_a_view_moves_the_crosshair(browser: Browser, report: Path) -> None:
    browser.open(report)
    before = browser.evaluate("document.getElementById('slider-coronal').value")
    view = browser.page.locator("#view-axial")
    box = view.bounding_box()
    view.click(position={"x": box["width"] / 2, "y": box["height"] / 2 - 100})
    # the axial view's vertical screen axis is anterior (top) -> posterior: clicking above the
    # centre moves the coronal plane forward, to a higher index 1
    after = browser.wait_for(f"document.getElementById('slider-coronal').value !== '{before}'"
                             " && document.getElementById('slider-coronal').value", 10)
    assert int(after) > int(before)
    assert browser.problems() == []


def test_overlay_toggles_change_the_view(browser: Browser, report: Path) -> None:
    browser.open(report)
    with_prediction = browser.canvas_digest("view-axial")
    browser.page.click("#overlay-prediction")
    assert browser.evaluate("document.getElementById('overlay-prediction').checked") is False
    without = browser.canvas_digest("view-axial")
    browser.page.click("#overlay-grad-cam")
    with_cam = browser.canvas_digest("view-axial")
    browser.page.click("#overlay-grad-cam")
    browser.page.click("#overlay-prediction")
    assert len({with_prediction, without, with_cam}) == 3
    assert browser.canvas_digest("view-axial") == with_prediction  # toggling back restores the view
    assert browser.problems() == []


def test_3d_view_rotates_and_hides_surfaces(browser: Browser, report: Path) -> None:
    browser.open(report)
    browser.evaluate("document.getElementById('view3d').scrollIntoView({block: 'center'})")
    start = browser.canvas_digest("view3d")
    box = browser.page.locator("#view3d").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    browser.page.mouse.move(x, y)
    browser.page.mouse.down()
    browser.page.mouse.move(x + 80, y + 30, steps=8)
    browser.page.mouse.up()
    rotated = browser.canvas_digest("view3d")
    browser.page.click("#mesh-brain")
    hidden = browser.canvas_digest("view3d")
    assert len({start, rotated, hidden}) == 3
    browser.page.click("#reset3d")
    browser.page.click("#mesh-brain")
    assert browser.canvas_digest("view3d") == start
    assert browser.problems() == []


@pytest.mark.real_data
@pytest.mark.slow
def test_real_case_opens_in_the_browser(browser: Browser, real_data: Path, tmp_path: Path) -> None:
    """A full BraTS case (ground truth as prediction, a blurred mask as Grad-CAM): size and errors."""
    from scipy import ndimage

    from jaxseg.data.brats import case_from_path, load_case

    image, classes, props = load_case(case_from_path(real_data / "brats2018" / "Brats18_2013_11_1"))
    cam = ndimage.gaussian_filter((classes > 0).astype(np.float32), 6)
    data = ReportData(case_id="Brats18_2013_11_1", image=image, channel_names=["flair", "t1", "t1ce", "t2"],
                      spacing=props.spacing, segmentation=classes, ground_truth=classes,
                      maps={"Grad-CAM": cam / cam.max()},
                      slice_captions=[f"slice {k}" for k in range(image.shape[2])])
    path = write_report(data, tmp_path / "real.html")
    size = path.stat().st_size
    print(f"\nreport of a 240x240x155 case: {size / 1e6:.1f} MB")
    assert size < 30_000_000
    browser.open(path)
    assert browser.problems() == []
    print(f"screenshot: {browser.screenshot(tmp_path / 'real.png')}")
