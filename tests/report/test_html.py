"""The HTML report as a string: self-contained, holds what it promises, refuses inconsistent data."""
from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from jaxseg.errors import JaxsegError
from jaxseg.report import html as report_html
from jaxseg.report.html import ReportData, render_report, write_report

SHAPE = (32, 32, 20)


def synthetic_data(*, with_truth: bool = True) -> ReportData:
    """A 32 x 32 x 20 two-channel 'brain' (a ball) with a tumor block: ED shell, NCR and ET inside."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    brain = (x - 16) ** 2 + (y - 16) ** 2 + ((z - 10) * 1.6) ** 2 < 14 ** 2
    rng = np.random.default_rng(0)
    image = np.stack([brain * (100 + 10 * rng.standard_normal(SHAPE)),
                      brain * (50 + 0.5 * x + 5 * rng.standard_normal(SHAPE))], axis=-1).astype(np.float32)
    seg = np.zeros(SHAPE, np.uint8)
    seg[14:24, 12:22, 6:14] = 2
    seg[16:22, 14:20, 8:12] = 3
    seg[18:20, 16:18, 9:11] = 1
    truth = np.roll(seg, 1, axis=0)
    cam = np.exp(-((x - 19) ** 2 + (y - 17) ** 2 + (z - 10) ** 2) / 30).astype(np.float32)
    fractions = np.linspace(0, 1, 11)
    return ReportData(
        case_id="Synthetic_001", image=image, channel_names=["flair", "t1ce"], spacing=(1.0, 1.2, 2.0),
        segmentation=seg, ground_truth=truth if with_truth else None,
        maps={"Grad-CAM": cam, "Entropy": (cam * 0.4).astype(np.float32), "P(WT)": (seg > 0).astype(np.float32)},
        slice_captions=[f"Slice {k}: tumor area {int((seg[:, :, k] > 0).sum())} voxels" for k in range(SHAPE[2])],
        volume_caption="A right-sided enhancing lesion with surrounding edema.",
        curves={"deletion": {"fractions": fractions, "saliency": np.exp(-6 * fractions), "random": 1 - 0.5 * fractions},
                "insertion": {"fractions": fractions, "saliency": 1 - np.exp(-6 * fractions), "random": 0.5 * fractions,
                              "auc_saliency": 0.8123, "auc_random": 0.2501},
                "score": "P(WT) in the predicted tumor"},
        settings={"checkpoint": "runs/r1/best", "model": "unet", "mc_samples": 8, "nested": {"seed": 3}},
    )


def _payload(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert match, "the data block is missing"
    return json.loads(match.group(1).replace("<\\/", "</"))


def _unpack(b64: str, dtype) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(b64)), dtype=dtype)


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(synthetic_data())


def test_page_loads_nothing_from_outside(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|iframe|img|audio|video|source|embed|object)\b", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert page.count("<script") == 2  # the data block and the inline viewer


def test_page_has_the_stable_ids(page: str) -> None:
    ids = ["slider-axial", "slider-coronal", "slider-sagittal", "view-axial", "view-coronal", "view-sagittal",
           "caption", "volume-caption", "modality", "view3d", "overlay-prediction", "overlay-ground-truth",
           "overlay-compare", "overlay-grad-cam", "overlay-entropy", "overlay-p-wt", "opacity-grad-cam",
           "colorbar-grad-cam", "plot-deletion", "plot-insertion", "volume-table", "settings", "mesh-brain",
           "mesh-ed", "mesh-et", "mesh-ncr", "readout"]
    for element_id in ids:
        assert f'id="{element_id}"' in page, element_id


def test_page_shows_captions_aucs_volumes_and_settings(page: str) -> None:
    data = synthetic_data()
    payload = _payload(page)
    assert payload["slice_captions"] == data.slice_captions
    assert data.volume_caption in page
    focus_z = payload["focus"][2] * payload["stride"] + payload["offset"][2]
    assert f'<div id="caption">{data.slice_captions[focus_z]}</div>' in page  # before any script runs
    assert "0.812" in page and "0.250" in page  # the given insertion AUCs
    deletion = payload["curves"]["deletion"]  # not given: trapezoid areas
    f = np.linspace(0, 1, 11)
    assert deletion["auc_random"] == pytest.approx(np.sum((1 - 0.5 * f)[1:] + (1 - 0.5 * f)[:-1]) * 0.05)
    assert f'{deletion["auc_saliency"]:.3f}' in page
    assert "runs/r1/best" in page and "nested.seed" in page
    voxel_ml = 1.0 * 1.2 * 2.0 / 1000
    assert f"{int((data.segmentation > 0).sum()) * voxel_ml:.1f}" in page  # WT volume in ml


def test_embedded_volumes_decode_to_the_inputs(page: str) -> None:
    data = synthetic_data()
    payload = _payload(page)
    lo = payload["offset"]
    shape = payload["shape"]
    crop = tuple(slice(a, a + n) for a, n in zip(lo, shape))
    seg = _unpack(payload["segmentation"], np.uint8).reshape(shape)
    np.testing.assert_array_equal(seg, data.segmentation[crop])
    assert (data.segmentation > 0).sum() == (seg > 0).sum()  # the crop keeps every labelled voxel
    cam = next(m for m in payload["maps"] if m["name"] == "Grad-CAM")
    quantised = _unpack(cam["data"], np.uint8).reshape(shape)
    restored = cam["lo"] + quantised / 255 * (cam["hi"] - cam["lo"])
    assert np.abs(restored - data.maps["Grad-CAM"][crop]).max() <= (cam["hi"] - cam["lo"]) / 255
    assert next(m for m in payload["maps"] if m["name"] == "P(WT)")["colormap"] == "magma"
    brain = payload["meshes"][0]
    vertices = _unpack(brain["vertices"], "<f4").reshape(-1, 3)
    assert brain["name"] == "Brain" and vertices.max(axis=0)[2] <= SHAPE[2] * 2.0  # mm, not voxels


def test_flat_faithfulness_result_is_accepted() -> None:
    """The dict of jaxseg.explain.faithfulness.faithfulness goes into ReportData.curves as it is."""
    f = np.linspace(0, 1, 5, dtype=np.float32)
    result = {"fractions": f}
    for prefix, level in (("", 1.0), ("random_", 0.5)):
        for kind in ("deletion", "insertion"):
            for metric in ("score", "dice"):
                result[f"{prefix}{kind}_{metric}"] = (level * f).astype(np.float32)
                result[f"{prefix}{kind}_{metric}_auc"] = {"score": 0.4321, "dice": 0.9876}[metric] * level
    data = synthetic_data()
    data.curves = result
    page = render_report(data)
    assert "0.432" in page and "0.216" in page and "0.988" not in page  # score AUCs, not Dice
    assert _payload(page)["score_label"] == "model score of the target region"
    data.curves = report_html.curves_from_faithfulness(result, metric="dice")
    assert "0.988" in render_report(data)
    with pytest.raises(JaxsegError, match="no 'random_deletion_score' entry"):
        report_html.curves_from_faithfulness({k: v for k, v in result.items() if k != "random_deletion_score"})


def test_page_without_ground_truth_or_meshes() -> None:
    data = synthetic_data(with_truth=False)
    data.meshes = {}
    data.curves = {}
    page = render_report(data)
    assert 'id="overlay-ground-truth"' not in page and 'id="overlay-compare"' not in page
    assert 'id="view3d"' not in page and "No surfaces" in page
    assert "No deletion / insertion curves" in page


def test_text_is_escaped() -> None:
    data = synthetic_data()
    data.volume_caption = "<b>bold</b> & </script>"
    data.slice_captions[3] = "</script><script>alert(1)</script>"
    page = render_report(data)
    assert "&lt;b&gt;bold&lt;/b&gt; &amp;" in page
    assert page.count("</script>") == 2  # the caption cannot close the data block
    assert _payload(page)["slice_captions"][3] == data.slice_captions[3]


def test_page_size_is_reasonable(page: str) -> None:
    assert 20_000 < len(page.encode()) < 400_000


def test_full_size_volume_is_cropped_and_small() -> None:
    """A 240 x 240 x 155 BraTS-sized volume: only the brain box is embedded, well under 30 MB."""
    shape = (240, 240, 155)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    brain = ((x - 120) / 70) ** 2 + ((y - 115) / 85) ** 2 + ((z - 75) / 65) ** 2 < 1
    rng = np.random.default_rng(1)
    image = (brain[..., None] * rng.uniform(50, 500, shape + (4,))).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    seg[90:130, 100:140, 60:90] = 2
    seg[100:120, 110:130, 70:80] = 3
    data = ReportData(case_id="big", image=image, channel_names=["flair", "t1", "t1ce", "t2"],
                      spacing=(1.0, 1.0, 1.0), segmentation=seg, ground_truth=seg,
                      maps={"Grad-CAM": rng.uniform(0, 1, shape).astype(np.float32)})
    page = render_report(data)
    payload = _payload(page)
    assert payload["stride"] == 1 and payload["shape"][0] <= 141 + 2 * report_html.CROP_MARGIN
    # noise does not compress: this is an upper bound for real MRI, which deflates 2-3x
    assert len(page.encode()) < 30_000_000


def test_large_volume_is_subsampled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_html, "MAX_EMBED_VOXELS", 3_000)  # the crop holds 32 * 32 * 20
    data = synthetic_data()
    payload = _payload(render_report(data))
    assert payload["stride"] == 2
    assert payload["spacing"] == [2.0, 2.4, 4.0]  # mm per embedded voxel
    lo, shape = payload["offset"], payload["shape"]
    seg = _unpack(payload["segmentation"], np.uint8).reshape(shape)
    np.testing.assert_array_equal(seg, data.segmentation[lo[0]::2, lo[1]::2, lo[2]::2][:shape[0], :shape[1], :shape[2]])
    assert all(0 <= f < n for f, n in zip(payload["focus"], shape))


def test_write_report_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "report.html"
    write_report(synthetic_data(), target)
    assert target.read_text().startswith("<!DOCTYPE html>")
    before = target.read_text()

    def broken(_data):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report_html, "render_report", broken)
    with pytest.raises(RuntimeError):
        write_report(synthetic_data(), target)
    assert target.read_text() == before  # the old report is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]  # no temporaries left


@pytest.mark.parametrize("change, message", [
    (lambda d: setattr(d, "segmentation", d.segmentation[:-1]), "segmentation has shape"),
    (lambda d: setattr(d, "channel_names", ["flair"]), "1 channel names for 2 channels"),
    (lambda d: setattr(d, "slice_captions", ["only one"]), "1 slice captions for 20 axial slices"),
    (lambda d: d.maps.update(bad=np.zeros((2, 2, 2), np.float32)), "map 'bad' has shape"),
    (lambda d: setattr(d, "map_colormaps", {"Grad-CAM": "rainbow"}), "unknown colour map 'rainbow'"),
    (lambda d: d.curves["deletion"].update(random=[1.0, 0.5]), "'random' must have as many values"),
    (lambda d: setattr(d, "ground_truth", np.full(SHAPE, 4, np.uint8)), "expected internal classes 0-3"),
    (lambda d: setattr(d, "spacing", (1.0, 0.0, 1.0)), "spacing must be 3 positive numbers"),
    (lambda d: setattr(d, "meshes", {"Brain": (np.zeros((3, 3)), np.array([[0, 1, 3]]))}), "faces index vertices"),
])
def test_inconsistent_data_is_refused_with_one_line(change, message: str) -> None:
    data = synthetic_data()
    change(data)
    with pytest.raises(JaxsegError, match=re.escape(message)) as error:
        render_report(data)
    assert str(error.value).startswith("report of Synthetic_001: ") and "\n" not in str(error.value)


@pytest.mark.parametrize("kind, saliency, random, expected", [
    ("deletion", 0.1, 0.5, "saliency beats random"),
    ("deletion", 0.5, 0.1, "saliency does not beat random"),
    ("insertion", 0.9, 0.5, "saliency beats random"),
    ("insertion", 0.5, 0.5, "saliency does not beat random"),  # a tie is not a win
    ("deletion", 0.5, 0.5, "saliency does not beat random"),
    ("insertion", float("nan"), 0.5, "no verdict (an AUC is missing)"),
    ("deletion", None, 0.5, "no verdict (an AUC is missing)"),
])
def test_faithfulness_verdict(kind, saliency, random, expected):
    from jaxseg.report.html import _verdict
    assert _verdict(kind, saliency, random) == expected


def test_an_extra_section_is_one_template_rendered_escaped_after_the_cards(monkeypatch) -> None:
    """``ReportData.sections`` names templates under templates/sections/; their values are escaped."""
    import jinja2
    templates = report_html._templates()
    probe = '<div class="card" id="probe-card"><h2>{{ section.context.title }}</h2></div>'
    monkeypatch.setattr(templates, "loader", jinja2.ChoiceLoader(
        [jinja2.DictLoader({"sections/probe.html.j2": probe}), templates.loader]))
    assert "probe" in report_html.section_names()
    data = synthetic_data()
    data.sections = [report_html.Section("probe", {"title": "<i>calibration</i>"})]
    page = render_report(data)
    assert '<div class="card" id="probe-card"><h2>&lt;i&gt;calibration&lt;/i&gt;</h2></div>' in page
    assert page.index('id="settings"') < page.index('id="probe-card"') < page.index("</section></main>")
    data.sections = [report_html.Section("nonesuch")]
    with pytest.raises(JaxsegError, match="no section template 'nonesuch'"):
        render_report(data)
