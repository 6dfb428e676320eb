"""ExplainMaps: what is written and shown, independent of the model's space."""
import dataclasses

import numpy as np

from jaxseg.explain.maps import ExplainMaps, SummarySection, Uncertainty
from jaxseg.target import target_kind

SHAPE = (4, 5, 3)


def maps_of(kind: str, with_mc: bool = True) -> ExplainMaps:
    rng = np.random.default_rng(0)
    target = target_kind(kind)
    probs = rng.dirichlet(np.ones(target.channels), SHAPE).astype(np.float32) if kind == "classes" \
        else rng.uniform(size=(*SHAPE, target.channels)).astype(np.float32)
    field = lambda *k: rng.uniform(size=SHAPE + k).astype(np.float32)  # noqa: E731
    entropy = field() if kind == "classes" else field(target.channels)
    mc = Uncertainty(field(target.channels), field(target.channels), entropy, entropy * 0.5, 3) if with_mc else None
    return ExplainMaps(target=target, probabilities=probs, classes=target.classes_from_output(probs),
                       brain=np.ones(SHAPE, bool), layer="dec0", gradcam_target="mean", gradcam=field(),
                       model_maps={"att0": field()}, uncertainty=mc, curves=None)


def test_overlays_follow_the_target_kind():
    maps = maps_of("classes")
    truth = (maps.classes > 0).astype(np.uint8)
    shown = maps.overlays(truth)
    assert list(shown) == ["Grad-CAM", "Grad-CAM x GT", "Attention gate 0", "MC variance", "Entropy",
                           "P(WT)", "P(TC)", "P(ET)"]
    p = maps.probabilities
    np.testing.assert_allclose(shown["P(WT)"], 1 - p[..., 0], rtol=1e-6)
    np.testing.assert_allclose(shown["P(TC)"], p[..., 1] + p[..., 3], rtol=1e-6)
    np.testing.assert_array_equal(shown["Grad-CAM x GT"], maps.gradcam * (truth > 0))
    np.testing.assert_array_equal(shown["Entropy"], maps.uncertainty.entropy)  # softmax: over all classes
    regions = maps_of("regions", with_mc=False)
    shown = regions.overlays(None)
    assert list(shown) == ["Grad-CAM", "Attention gate 0", "P(WT)", "P(TC)", "P(ET)"]
    np.testing.assert_array_equal(shown["P(ET)"], regions.probabilities[..., 2])


def test_nifti_volumes_name_every_written_map():
    maps = maps_of("regions")
    assert list(maps.nifti_volumes()) == ["probabilities", "gradcam", "mc_mean", "mc_variance", "mc_entropy",
                                          "mc_mutual_information", "att0"]
    assert maps.uncertainty.whole_tumor_entropy.shape == SHAPE
    assert list(maps_of("wt", with_mc=False).nifti_volumes()) == ["probabilities", "gradcam", "att0"]


@dataclasses.dataclass(frozen=True)
class Probe:
    share: float
    template: str = "probe"

    def report_context(self):
        return {"share": self.share}

    def summary(self):
        return {"probe_share": self.share}


def test_a_field_holding_a_summary_section_is_found():
    @dataclasses.dataclass(frozen=True)
    class WithProbe(ExplainMaps):
        probe: Probe | None = None

    plain = maps_of("regions")
    assert plain.sections() == []
    extended = WithProbe(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)}, probe=Probe(0.25))
    assert extended.sections() == [Probe(0.25)] and isinstance(Probe(0.25), SummarySection)
    assert WithProbe(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)}).sections() == []
