"""`jaxseg explain`'s issue-#17 sections: JSON values against the library functions called directly."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from jaxseg import cli
from jaxseg.data import brats, phantom
from jaxseg.errors import JaxsegError
from jaxseg.explain import captions
from jaxseg.explain.modality import modality_ablation, modality_attribution, region_slices
from jaxseg.explain.run import ExplainSettings, explain
from jaxseg.explain.slices import SliceSpace
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
            assert line in summary["caption"]
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
