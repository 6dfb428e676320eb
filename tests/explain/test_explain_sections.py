"""`jaxseg explain`'s issue-#17 sections: JSON values against the library functions called directly."""
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from jaxseg import cli
from jaxseg.data import brats, phantom
from jaxseg.errors import JaxsegError
from jaxseg.explain import captions
from jaxseg.explain.modality import modality_ablation, modality_attribution, region_slices
from jaxseg.explain.run import ExplainSettings, explain
from jaxseg.explain.slices import FAITHFULNESS_SLICE_BATCH, SliceSpace
from jaxseg.infer.predict import Predictor

QUICK = ExplainSettings(mc_samples=3, faithfulness_slices=2, faithfulness_steps=5, attribution_steps=4)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("sections_data")
    phantom.write_phantoms(root, 1, seed=21, shape=(32, 32, 20))
    return root / "Phantom_21_000"


@pytest.fixture(scope="module")
def explained(smoke_run, case, tmp_path_factory):
    out = tmp_path_factory.mktemp("sections_out")
    result = explain(case, smoke_run, out, QUICK)
    return result, json.loads(result.files["summary"].read_text())


@pytest.fixture(scope="module")
def space(smoke_run, case):
    predictor = Predictor(smoke_run, QUICK.batch_size)
    image, _, _ = brats.load_case(brats.case_from_path(case), predictor.modalities)
    return SliceSpace(predictor, image)


def test_modality_attribution_in_the_json_equals_the_library_on_every_slice(explained, space):
    _, summary = explained
    p = space.predictor
    model = (p.graphdef, p.params, p.batch_stats)
    regions = list(space.target.region_names)
    # Every brain slice, not only the tumor slices explain attributes: the same shares.
    direct = modality_attribution(*model, space.slices, modalities=p.modalities, regions=regions, steps=4,
                                  target_kind=space.target.name, batch_size=p.batch_size)
    shares = summary["modality_attribution"]
    assert set(shares) == set(regions)
    assert any(v is not None for v in shares.values()), "the smoke model predicts no tumor on the phantom"
    for region in regions:
        if direct[region] is None:
            assert shares[region] is None
            continue
        assert sum(shares[region].values()) == pytest.approx(1.0, abs=1e-9)
        assert list(shares[region]) == list(p.modalities)
        for m in p.modalities:
            assert shares[region][m] == pytest.approx(direct[region][m], rel=1e-4, abs=1e-6), (region, m)
    ablation = modality_ablation(*model, space.slices, modalities=p.modalities, regions=regions,
                                 target_kind=space.target.name, batch_size=p.batch_size)
    assert summary["modality_ablation"] == json.loads(json.dumps(ablation))


def test_the_per_modality_maps_are_the_attribution_behind_the_whole_tumor_shares(explained, space):
    """modality_attribution_maps: the shares of modality_attribution, and the first region's map,
    whose sum over that region's predicted pixels gives its shares; in the report and the files."""
    import nibabel as nib
    from jaxseg.explain.modality import modality_attribution_maps, modality_maps
    result, summary = explained
    p = space.predictor
    model = (p.graphdef, p.params, p.batch_stats)
    kind, regions = space.target.name, list(space.target.region_names)
    shares, first = modality_attribution_maps(*model, space.slices, modalities=p.modalities, regions=regions, steps=4,
                                              target_kind=kind, batch_size=p.batch_size)
    assert shares == modality_attribution(*model, space.slices, modalities=p.modalities, regions=regions, steps=4,
                                          target_kind=kind, batch_size=p.batch_size)
    predicted_wt = space.target.region_probabilities(space.probabilities())[..., 0] > 0.5
    # The first region's maps on the slices where it is predicted (every slice's: modality_maps), 0 elsewhere.
    every = modality_maps(*model, space.slices, regions=regions, steps=4, target_kind=kind,
                          batch_size=p.batch_size)[regions[0]]
    wt_slices = predicted_wt.reshape(len(predicted_wt), -1).any(axis=1)
    assert wt_slices.any()
    np.testing.assert_allclose(first[wt_slices], every[wt_slices], rtol=1e-5, atol=1e-7)
    assert not first[~wt_slices].any()
    mass = (first * predicted_wt[..., None]).reshape(-1, first.shape[-1]).sum(axis=0, dtype=np.float64)
    if shares["WT"] is not None:
        for c, m in enumerate(p.modalities):
            assert shares["WT"][m] == pytest.approx(mass[c] / mass.sum(), rel=1e-4, abs=1e-6)
    # In the explanation: one map per sequence on the canonical grid, all on one scale, clipped to [0, 1].
    maps = {m: np.asarray(nib.load(result.files[f"ig_{m}"]).dataobj) for m in p.modalities}
    assert max(float(v.max()) for v in maps.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(v.min() >= 0 for v in maps.values())
    page = result.report.read_text()
    for m in p.modalities:
        assert f"WT attribution: {captions.MODALITY_NAMES.get(m, m)}" in page


def test_tumor_slices_are_where_some_region_is_predicted(space):
    p = space.predictor
    probs = space.probabilities()
    predicted = space.target.region_probabilities(probs) > 0.5
    chosen = region_slices(p.graphdef, p.params, p.batch_stats, space.slices, regions=list(space.target.region_names),
                           target_kind=space.target.name, batch_size=p.batch_size)
    # Sigmoid regions: predicted = logit > 0 = probability > 0.5 (up to rounding at 0.5 exactly).
    expected = np.flatnonzero(predicted.reshape(len(probs), -1, predicted.shape[-1]).any(axis=(1, 2)))
    assert chosen.tolist() == expected.tolist()


def test_modality_captions_name_the_largest_share(explained):
    result, summary = explained
    for region, shares in summary["modality_attribution"].items():
        line = captions.modality_caption(region, shares)
        assert line in summary["modality_captions"]
        if shares:
            top = max(shares, key=shares.get)
            assert f"mainly {captions.MODALITY_NAMES.get(top, top)} ({round(100 * shares[top])}%)" in line
            assert line.lower() in summary["caption"].lower()  # the first one starts a sentence there
    assert captions.modality_caption("ET", {"flair": 0.2, "t1ce": 0.64, "t2": 0.16}) == \
        "enhancing tumor: mainly T1ce (64%)"
    assert captions.modality_caption("TC", None) == "tumor core: not predicted"
    html = result.report.read_text()
    assert 'id="modality-card"' in html
    for region in summary["modality_attribution"]:
        assert f'id="modality-{region}"' in html


def test_attribution_steps_zero_skips_the_section(smoke_run, case, tmp_path):
    result = explain(case, smoke_run, tmp_path / "out",
                     ExplainSettings(mc_samples=1, faithfulness_slices=1, faithfulness_steps=3, attribution_steps=0))
    assert "modality_attribution" not in result.summary
    assert 'id="modality-card"' not in result.report.read_text()


@pytest.mark.parametrize("samples", [0, -3])
def test_mc_samples_below_one_is_one_clear_line(smoke_run, case, tmp_path, samples):
    with pytest.raises(JaxsegError, match=f"--mc-samples {samples}: must be at least 1"):
        explain(case, smoke_run, tmp_path / "r.html", ExplainSettings(mc_samples=samples))
    res = CliRunner().invoke(cli.app, ["explain", str(case), "--checkpoint", str(smoke_run),
                                       "--mc-samples", str(samples), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "--mc-samples" in res.output


@pytest.mark.parametrize("option, value, problem", [("--faithfulness-steps", "1", "must be at least 2"),
                                                    ("--faithfulness-spacing", "log", "not a spacing")])
def test_bad_curve_fractions_are_one_clear_line(smoke_run, case, tmp_path, option, value, problem):
    res = CliRunner().invoke(cli.app, ["explain", str(case), "--checkpoint", str(smoke_run),
                                       option, value, "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0
    assert option in res.output and problem in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r.html").exists()


def test_gradcam_is_normalised_per_volume_by_default_and_per_slice_on_request(explained, space, smoke_run, case,
                                                                             tmp_path):
    import nibabel as nib
    from jaxseg.explain.gradcam import gradcam_volume
    result, summary = explained
    p = space.predictor
    raw = gradcam_volume(p.graphdef, p.params, p.batch_stats, space.slices, "dec0", "mean",
                         target_kind=space.target.name, batch_size=p.batch_size, normalise=False)
    assert raw.max() > 0
    # Per volume: one maximum (numpy, not layer_quality.normalise_map).
    expected = space.to_volume(raw / raw.max())
    written = np.asarray(nib.as_closest_canonical(nib.load(result.files["gradcam"])).dataobj)  # RAS, as jaxseg
    np.testing.assert_allclose(written, expected, atol=1e-5)
    per_slice = space.gradcam(space.probabilities(), "dec0", "mean", "slice").model_map
    peaks = raw.reshape(len(raw), -1).max(axis=1)
    want = np.where(peaks[:, None, None] > 0, raw / np.where(peaks > 0, peaks, 1)[:, None, None], 0)
    np.testing.assert_allclose(per_slice, want, atol=1e-6)
    assert summary["settings"]["normalise"] == "volume"
    # The report switches among the bottleneck, dec2 and the main layer dec0 (those the model has).
    depth = len(p.cfg.model.features) - 1
    names = p.model().activation_names
    expected_layers = [name for name in (f"enc{depth}", "dec2") if name in names]
    assert expected_layers and summary["settings"]["compare_layers"] == expected_layers
    html = result.report.read_text()
    assert all(f"Grad-CAM {name}" in html for name in expected_layers)


def test_bad_normalise_and_compare_layers_are_one_line(smoke_run, case, tmp_path):
    runner = CliRunner()
    for args, expected in ((["--normalise", "axial"], "--normalise 'axial': must be one of volume, slice"),
                           (["--compare-layers", "enc0,nope"], "--compare-layers nope: this model has no such layer")):
        res = runner.invoke(cli.app, ["explain", str(case), "--checkpoint", str(smoke_run), *args,
                                      "-o", str(tmp_path / "r.html")])
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and expected in errors[0], res.output
        assert "Traceback" not in res.output


def test_a_layer_whose_gradcam_is_identically_zero_is_one_clear_line():
    from jaxseg.explain.maps import Saliency, compute_maps
    from jaxseg.target import target_kind

    class ZeroSpace:  # a space whose Grad-CAM is zero everywhere: nothing else may be computed
        brain = np.ones((4, 4, 2), bool)

        def to_volume(self, m):
            return np.asarray(m, np.float32)

        def probabilities(self):
            return np.zeros((4, 4, 2, 3), np.float32)

        def gradcam(self, probabilities, layer, target, normalise="volume"):
            return Saliency(np.zeros((4, 4, 2), np.float32))

        def segmented_message(self):
            return "segmented"

    with pytest.raises(JaxsegError, match="--layer enc0: its Grad-CAM \\(mean\\) is identically zero"):
        compute_maps(ZeroSpace(), target_kind("regions"), layer="enc0", gradcam_target="mean",
                     key=__import__("jax").random.PRNGKey(0), mc_samples=2, with_dropout=True,
                     faithfulness_steps=3, faithfulness_slices=1)


def _canonical(path):
    import nibabel as nib
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, np.float64)


def _numpy_ece(p, y, n_bins=15):
    """Binned ECE written out with a loop over bins (the last bin closed at 1)."""
    p, y = p.ravel(), y.ravel().astype(float)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (p >= lo) & ((p < hi) if b < n_bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return total / p.size


def test_slices_to_review_and_calibration_equal_the_library_and_numpy(explained, case):
    from jaxseg.data import preprocess
    from jaxseg.explain.calibration import error_detection_auroc
    from jaxseg.explain.review import slices_to_review
    from jaxseg.target import target_kind
    result, summary = explained
    entropy = _canonical(result.files["mc_entropy"]).astype(np.float32)
    mean = _canonical(result.files["mc_mean"]).astype(np.float32)
    seg = _canonical(result.files["segmentation"])
    assert summary["slices_to_review"] == json.loads(json.dumps(
        slices_to_review(entropy[..., 0], seg > 0, margin=3, top=10, axis=2)))
    assert summary["slices_to_review"], "the phantom's tumor has uncertainty around it"
    html = result.report.read_text()
    for item in summary["slices_to_review"]:
        assert f'data-axial-slice="{item["slice"]}"' in html

    image, truth, _ = brats.load_case(brats.case_from_path(case), ("flair", "t1", "t1ce", "t2"))
    brain = preprocess.brain_mask(image)
    regions = target_kind("regions")
    truth_regions = regions.region_masks_from_classes(truth)
    predicted_regions = regions.region_masks_from_classes(_internal(seg))
    calibration = summary["calibration"]
    assert calibration["source"] == "mc_mean"
    for r, name in enumerate(regions.region_names):
        p, y = mean[..., r].astype(np.float64), truth_regions[..., r]
        assert calibration[name]["ece"] == pytest.approx(_numpy_ece(p[brain], y[brain]), abs=2e-6)
        relevant = ((p > 0.01) | y) & brain
        assert calibration[name]["ece_relevant"] == pytest.approx(_numpy_ece(p[relevant], y[relevant]), abs=2e-6)
        assert sum(calibration[name]["bins"]["count"]) == int(brain.sum())
        auroc = error_detection_auroc(entropy[..., r], predicted_regions[..., r] != y, brain)
        got = summary["uncertainty_error_auroc"][name]
        assert (got is None and not np.isfinite(auroc)) or got == pytest.approx(auroc, abs=1e-9)
    assert 'id="calibration-card"' in html and 'id="reliability-WT"' in html and 'id="review-card"' in html


def _internal(labels):
    """BraTS 2017-2021 labels (0, 1, 2, 4) -> internal classes (0, 1, 2, 3)."""
    out = labels.astype(np.uint8).copy()
    out[labels == 4] = 3
    return out


def test_a_slice_to_review_jumps_the_axial_view_there(explained, browser, tmp_path):
    result, summary = explained
    browser.open(result.report)
    assert browser.problems() == []
    for item in summary["slices_to_review"][:2]:
        browser.evaluate(f"document.querySelector('button[data-axial-slice=\"{item['slice']}\"]').click()")
        # The viewer redraws on the next animation frame; the caption bar names the slice shown.
        browser.wait_for(f"document.getElementById('caption-slice').textContent.trim() === '{item['slice']}'")
    shot = browser.screenshot(tmp_path / "sections.png")
    print(f"\nscreenshot of the report with the #17 sections: {shot}")


def test_faithfulness_over_every_tumor_slice_equals_the_library(smoke_run, case, space, tmp_path):
    import jax
    from jaxseg.explain.faithfulness_slices import faithfulness_slices
    settings = ExplainSettings(mc_samples=1, faithfulness_slices=0, faithfulness_steps=5, attribution_steps=0,
                               compare_layers=())
    result = explain(case, smoke_run, tmp_path / "out", settings)
    p = space.predictor
    cam = space.gradcam(space.probabilities(), "dec0", "mean", "volume").model_map
    # Every brain slice in: the library picks the tumor slices itself.
    direct = faithfulness_slices(p.graphdef, p.params, p.batch_stats, space.slices, cam,
                                 jax.random.fold_in(jax.random.PRNGKey(settings.seed), 2), steps=5,
                                 spacing=settings.faithfulness_spacing, channel="WT", target_kind=space.target.name, batch_size=FAITHFULNESS_SLICE_BATCH)
    got = result.summary["faithfulness_slices"]
    assert direct["n"] > 1 and got == {"deletion_beats_random": direct["deletion_beats_random"],
                                       "insertion_beats_random": direct["insertion_beats_random"], "n": direct["n"]}
    # The curves of the report are the mean curves over those slices.
    for name in ("deletion_score", "insertion_score"):
        assert result.summary["faithfulness_auc"][f"{name}_auc"] == pytest.approx(direct[f"{name}_auc"], abs=1e-4)
    assert 'id="faithfulness-slices-card"' in result.report.read_text()


def test_the_summary_says_what_each_step_cost(explained):
    result, summary = explained
    timings = summary["timings"]
    steps = timings["steps"]
    assert steps[0]["step"].startswith("read Phantom_21_000") and steps[-1]["step"].startswith("report written")
    # Never negative, not even -0.0 (a step that follows another at once).
    assert all(math.copysign(1.0, s["seconds"]) > 0 for s in steps)
    assert [s["at"] for s in steps] == sorted(s["at"] for s in steps)
    # Each step's seconds are the gap since the step before (rounded to ms).
    gaps = np.diff([0.0] + [s["at"] for s in steps])
    np.testing.assert_allclose([s["seconds"] for s in steps], gaps, atol=2e-3)
    assert timings["total_seconds"] == steps[-1]["at"]
