"""Modality attribution and ablation: equal to closed forms / hand computations on pixel-wise
models, shares summing to 1, zero for a channel the model ignores, any number of channels."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg.explain import modality as MA

RNG = np.random.default_rng(3)


class LinearPixelModel(nnx.Module):
    """logits = x @ weights + bias per pixel: every quantity has a closed form."""

    def __init__(self, weights, bias):
        weights = np.asarray(weights, np.float32)  # (C, K)
        self.head = nnx.Conv(weights.shape[0], weights.shape[1], (1, 1), rngs=nnx.Rngs(0))
        self.head.kernel[...] = jnp.asarray(weights).reshape(1, 1, *weights.shape)
        self.head.bias[...] = jnp.asarray(bias, jnp.float32)

    def __call__(self, x, *, train=False, dropout_key=None, perturb=None):
        return self.head(x), {}

    @property
    def weights(self):
        return np.asarray(self.head.kernel[...], np.float64)[0, 0]

    @property
    def bias(self):
        return np.asarray(self.head.bias[...], np.float64)

    def logits_np(self, x):
        return np.asarray(x, np.float64) @ self.weights + self.bias


def split(model):
    return nnx.split(model, nnx.Param, nnx.BatchStat)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def images_with_background(b, size, channels):
    x = RNG.uniform(0.1, 1.0, size=(b, size, size, channels)).astype(np.float32)
    x[:, :2] = 0.0  # background rows: outside the brain
    return x


def ig_mass_closed_form(model, images, region, steps):
    """|IG| of 'predicted:region' summed over the predicted pixels, written out: on the path
    alpha * x the logit is alpha * (x @ w) + b, and the score is the mean sigmoid over P."""
    x = images.astype(np.float64)
    z = model.logits_np(x)[..., region]
    pixels = z > 0
    w = model.weights[:, region]
    alphas = np.linspace(0, 1, steps)
    weights = np.full(steps, 1 / (steps - 1))
    weights[[0, -1]] /= 2
    path = sum(wt * sigmoid(a * (z - model.bias[region]) + model.bias[region])
               * (1 - sigmoid(a * (z - model.bias[region]) + model.bias[region]))
               for a, wt in zip(alphas, weights))
    mass = np.zeros(x.shape[-1])
    for b in range(len(x)):
        if not pixels[b].any():
            continue
        grad = path[b][pixels[b]] / pixels[b].sum()  # d mean / d logit along the path
        mass += np.abs(x[b][pixels[b]] * w[None, :] * grad[:, None]).sum(axis=0)
    return mass


def test_attribution_mass_equals_the_closed_form_and_shares_sum_to_one():
    model = LinearPixelModel([[6.0, 1.0, 0.0], [2.0, -3.0, 0.0], [0.0, 4.0, 5.0]], [-4.0, -1.0, -2.0])
    images = images_with_background(3, 8, 3)
    mass = MA.attribution_mass(*split(model), images, steps=9, target_kind="regions", batch_size=2)
    for r in range(3):
        np.testing.assert_allclose(mass[r], ig_mass_closed_form(model, images, r, 9), rtol=1e-4)
    shares = MA.modality_attribution(*split(model), images, modalities=["t1", "t1ce", "flair"], steps=9,
                                     target_kind="regions")
    assert set(shares) == {"WT", "TC", "ET"}
    for region, row in zip(("WT", "TC", "ET"), mass):
        assert sum(shares[region].values()) == pytest.approx(1.0, abs=1e-9)
        assert shares[region]["t1"] == pytest.approx(row[0] / row.sum(), rel=1e-5)
    # WT ignores flair, ET ignores t1: exactly zero share.
    assert shares["WT"]["flair"] == 0.0 and shares["ET"]["t1"] == 0.0


def test_one_channel_has_the_whole_share_and_an_unpredicted_region_has_none():
    model = LinearPixelModel([[6.0]], [-3.0])
    images = images_with_background(2, 8, 1)
    assert MA.modality_attribution(*split(model), images, modalities=["flair"], target_kind="wt") == {
        "WT": {"flair": 1.0}}
    never = LinearPixelModel([[1.0]], [-50.0])
    assert MA.modality_attribution(*split(never), images, target_kind="wt") == {"WT": None}


def test_positive_sign_drops_evidence_against():
    model = LinearPixelModel([[6.0], [-2.0]], [-1.0])  # channel 1 only argues against tumor
    images = images_with_background(2, 8, 2)
    absolute = MA.modality_attribution(*split(model), images, target_kind="wt", steps=9)["WT"]
    positive = MA.modality_attribution(*split(model), images, target_kind="wt", steps=9, sign="positive")["WT"]
    assert absolute["channel1"] > 0.05
    assert positive == {"channel0": 1.0, "channel1": 0.0}


def ablation_by_hand(model, images, brain, region):
    x = images.astype(np.float64)
    reference = model.logits_np(x)[..., region] > 0
    score = sigmoid(model.logits_np(x)[..., region])[reference].mean()
    out = {"score": score}
    for c in range(x.shape[-1]):
        ablated = x.copy()
        ablated[..., c][brain] = x[..., c][brain].mean()
        z = model.logits_np(ablated)[..., region]
        pred = z > 0
        dice = 2 * (pred & reference).sum() / (pred.sum() + reference.sum())
        out[c] = (score - sigmoid(z)[reference].mean(), 1 - dice)
    return out


def test_ablation_equals_a_hand_computation():
    model = LinearPixelModel([[6.0, 3.0], [2.0, 0.0], [0.0, 4.0]], [-4.5, -3.0])
    images = images_with_background(3, 8, 3)
    brain = np.any(images != 0, axis=-1)
    result = MA.modality_ablation(*split(model), images, modalities=["a", "b", "c"], regions=[0, 1],
                                  target_kind="regions", batch_size=2)
    for r in (0, 1):
        expected = ablation_by_hand(model, images, brain, r)
        entry = result[str(r)]
        assert entry["score"] == pytest.approx(expected["score"], abs=1e-5)
        for c, name in enumerate("abc"):
            score_drop, dice_drop = expected[c]
            assert entry[name]["score_drop"] == pytest.approx(score_drop, abs=1e-5)
            assert entry[name]["dice_drop"] == pytest.approx(dice_drop, abs=1e-6)
    # Region 1 ignores channel b: ablating it changes nothing.
    assert result["1"]["b"]["score_drop"] == pytest.approx(0.0, abs=1e-6)
    assert result["1"]["b"]["dice"] == 1.0


def test_attribution_and_ablation_rank_the_channels_alike():
    model = LinearPixelModel([[8.0], [2.0], [0.0]], [-5.0])
    images = images_with_background(2, 16, 3)
    shares = MA.modality_attribution(*split(model), images, target_kind="wt")["WT"]
    ablation = MA.modality_ablation(*split(model), images, target_kind="wt")["WT"]
    by_share = sorted(shares, key=shares.get)
    by_drop = sorted(shares, key=lambda m: ablation[m]["score_drop"])
    assert by_share == by_drop == ["channel2", "channel1", "channel0"]


def test_modality_maps_are_the_absolute_integrated_gradients():
    from jaxseg.explain.attribution import integrated_gradients
    model = LinearPixelModel([[6.0, 1.0, 0.0], [2.0, -3.0, 0.0], [0.0, 4.0, 5.0]], [-4.0, -1.0, -2.0])
    images = images_with_background(3, 8, 3)
    maps = MA.modality_maps(*split(model), images, regions=["TC"], steps=9, target_kind="regions", batch_size=2)
    direct = np.asarray(integrated_gradients(*split(model), images, "predicted:TC", steps=9, target_kind="regions"))
    assert list(maps) == ["TC"] and maps["TC"].shape == images.shape
    np.testing.assert_allclose(maps["TC"], np.abs(direct), atol=1e-7)
    predicted = model.logits_np(images)[..., 1] > 0
    np.testing.assert_allclose((maps["TC"] * predicted[..., None]).sum(axis=(0, 1, 2)),
                               ig_mass_closed_form(model, images, 1, 9), rtol=1e-4)


def test_a_region_is_attributed_only_on_the_samples_that_predict_it(monkeypatch):
    """Samples that predict no region add exactly 0 to every mass: they are skipped (one IG call
    per sample that predicts some region here, all regions at once) and the masses are still the
    closed form, also for a region that only some attributed samples predict."""
    model = LinearPixelModel([[6.0, 1.0, 0.0], [2.0, -3.0, 0.0], [0.0, 4.0, 5.0]], [-4.0, -1.0, -2.0])
    images = images_with_background(4, 8, 3)
    images[1:, ..., 2] *= 0.3  # ET's logit 5 * flair - 2 < 0: ET on the first sample only
    images[3] *= 0.05  # every logit below 0: nothing predicted on the last sample
    predicted = model.logits_np(images) > 0  # (B, H, W, 3)
    per_sample = predicted.reshape(4, -1, 3).any(axis=1)  # (B, R)
    assert per_sample[:, 2].sum() == 1 and per_sample[:3, 0].all() and not per_sample[3].any()
    calls = []
    real = MA.integrated_gradients_regions
    monkeypatch.setattr(MA, "integrated_gradients_regions", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    shares, first = MA.modality_attribution_maps(*split(model), images, steps=9, target_kind="regions", batch_size=1)
    assert calls == [1, 1, 1]  # the three samples that predict something, one at a time
    masses = [ig_mass_closed_form(model, images, r, 9) for r in range(3)]
    for region, mass in zip(("WT", "TC", "ET"), masses):
        for c, m in enumerate(("channel0", "channel1", "channel2")):
            assert shares[region][m] == pytest.approx(mass[c] / mass.sum(), rel=1e-4)
    # The first region's (WT's) map: the absolute IG on its samples (all three here).
    from jaxseg.explain.attribution import integrated_gradients
    direct = np.asarray(integrated_gradients(*split(model), images, "predicted:WT", steps=9, target_kind="regions"))
    np.testing.assert_allclose(first[:3], np.abs(direct[:3]), atol=1e-7)
    assert not first[3].any()  # not attributed: WT is not predicted there
