"""`jaxseg explain` end to end: maps in the input's geometry, the JSON summary, the report."""
import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.data import phantom
from jaxseg.errors import JaxsegError
from jaxseg.explain.run import ExplainSettings, explain
from jaxseg.train import loop

QUICK = ExplainSettings(mc_samples=4, faithfulness_slices=2, faithfulness_steps=5)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain_data")
    phantom.write_phantoms(root, 1, seed=21, shape=(32, 32, 20))
    return root / "Phantom_21_000"


def test_explain_writes_every_map_in_the_input_geometry(smoke_run, case, tmp_path):
    result = explain(case, smoke_run, tmp_path / "out", QUICK)
    flair = nib.load(case / "Phantom_21_000_flair.nii.gz")
    expected = {"segmentation", "probabilities", "gradcam", "mc_mean", "mc_variance", "mc_entropy",
                "mc_mutual_information", "summary", "ig_flair", "ig_t1", "ig_t1ce", "ig_t2"}
    assert set(result.files) == expected
    for name, path in result.files.items():
        if name == "summary":
            continue
        img = nib.load(path)
        assert img.shape[:3] == flair.shape and np.array_equal(img.affine, flair.affine), name
    cam = np.asarray(nib.load(result.files["gradcam"]).dataobj)
    assert 0 <= cam.min() and cam.max() <= 1 and cam.max() > 0
    variance = np.asarray(nib.load(result.files["mc_variance"]).dataobj)
    assert variance.max() > 0  # the smoke model has dropout 0.1
    summary = json.loads(result.files["summary"].read_text())
    assert len(summary["slice_captions"]) == flair.shape[2]
    assert summary["caption"] and summary["settings"]["layer"] == "dec0"
    assert set(summary["volumes_ml"]) == {"predicted", "ground_truth"}
    html = result.report.read_text()
    assert "Grad-CAM x GT" in html
    assert "Phantom_21_000" in html and "http://" not in html and "https://" not in html


def test_explain_to_a_single_report_file(smoke_run, case, tmp_path):
    result = explain(case, smoke_run, tmp_path / "r.html", QUICK)
    assert result.report == tmp_path / "r.html" and result.files == {}
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_without_checkpoint_uses_the_bundled_model_or_says_what_to_do(smoke_run, case, tmp_path, monkeypatch):
    from jaxseg import home, model_export, model_store
    monkeypatch.setenv("JAXSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(model_store, "BUNDLED_DIR", tmp_path / "bundled")
    with pytest.raises(JaxsegError, match="no model is bundled with this installation.*--checkpoint demo"):
        explain(case, None, tmp_path / "r.html", QUICK)
    with pytest.raises(JaxsegError, match="--checkpoint demo: no demo model .*run `jaxseg demo` first"):
        explain(case, "demo", tmp_path / "r.html", QUICK)
    assert not (tmp_path / "r.html").exists()
    model_export.export_model(smoke_run, tmp_path / "bundled" / model_store.DEFAULT_MODEL,
                             name=model_store.DEFAULT_MODEL, dtype="float32")
    said = []
    result = explain(case, None, tmp_path / "r.html", QUICK, say=said.append)
    assert any(f"using the bundled model {model_store.DEFAULT_MODEL}" in line for line in said)
    assert result.summary["checkpoint"] == str(tmp_path / "bundled" / model_store.DEFAULT_MODEL)
    model_export.export_model(smoke_run, home.demo_model_dir(), name="demo", dtype="float32")
    monkeypatch.chdir(tmp_path / "bundled")  # any folder
    result = explain(case, "demo", tmp_path / "d.html", QUICK)
    assert result.summary["checkpoint"] == str(tmp_path / "home" / "models" / "demo")


def test_single_modality_whole_tumor_model_on_2023_naming_without_ground_truth(real_data, tmp_path):
    cfg = config_lib.load("demo", [*config_lib.SMOKE_OVERRIDES, 'data.modalities=["t2f"]', "data.target=wt"])
    run = loop.train(cfg, tmp_path / "run", quiet=True).workdir
    case = real_data / "brats2023-example" / "BraTS-GLI-00001-000"
    # What this test checks is the naming and the geometry: no attribution, no extra layers.
    result = explain(case, run, tmp_path / "out", dataclasses.replace(QUICK, attribution_steps=0, compare_layers=()))
    seg = nib.load(result.files["segmentation"])
    assert seg.shape == (240, 240, 155)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
    assert set(result.summary["volumes_ml"]) == {"predicted"}
    assert nib.load(result.files["probabilities"]).shape == (240, 240, 155, 1)


def test_cli_explain_reports_bad_input_in_one_line(smoke_run, tmp_path):
    phantom.write_phantoms(tmp_path, 1, seed=3, shape=(32, 32, 20))
    broken = tmp_path / "Phantom_3_000"
    data = (broken / "Phantom_3_000_t1ce.nii.gz").read_bytes()
    (broken / "Phantom_3_000_t1ce.nii.gz").write_bytes(data[: len(data) // 2])  # a cut-off download
    result = CliRunner().invoke(cli.app, ["explain", str(broken), "--checkpoint", str(smoke_run),
                                          "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "Phantom_3_000_t1ce.nii.gz" in result.output and "truncated" in result.output
    assert not (tmp_path / "r.html").exists()


def test_explained_report_opens_in_chromium(smoke_run, case, tmp_path, browser):
    result = explain(case, smoke_run, tmp_path / "out", QUICK)
    browser.open(result.report)
    assert browser.problems() == []
    caption = browser.evaluate("document.getElementById('caption').textContent")
    assert caption.startswith("Slice") or "Slice" in caption
    shot = browser.screenshot(tmp_path / "explain.png")
    print(f"\nscreenshot of an explain report: {shot}")
    assert shot.stat().st_size > 20_000


def test_target_strings(smoke_run, case, tmp_path):
    from jaxseg.explain.gradcam import Target, parse_target
    assert parse_target("ET") == Target("mean", "ET") and parse_target("predicted:tc") == Target("predicted", "TC")
    with pytest.raises(JaxsegError, match="--target 'tumour'"):
        explain(case, smoke_run, tmp_path / "r.html", ExplainSettings(target="tumour"))
    assert not (tmp_path / "r.html").exists()


def test_unknown_layer_is_one_clear_error(smoke_run, case, tmp_path):
    with pytest.raises(JaxsegError, match="--layer 'dec9': this model has no such layer .*enc0, enc1, dec0"):
        explain(case, smoke_run, tmp_path / "r.html", ExplainSettings(layer="dec9"))
