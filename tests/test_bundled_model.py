"""The models bundled in jaxseg/bundled/: each loads and segments a phantom.

Skips while the package bundles no model (the real-data Dice check of the shipped BraTS model
is added beside these tests together with the model).
"""
import json

import jax
import numpy as np
import pytest

from jaxseg import config as config_lib
from jaxseg import model_store
from jaxseg.data import brats, phantom
from jaxseg.infer.predict import Predictor
from jaxseg.target import target_for

BUNDLED = model_store.bundled_names()
pytestmark = pytest.mark.skipif(not BUNDLED, reason=f"no model is bundled in {model_store.BUNDLED_DIR}")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return phantom.write_phantoms(tmp_path_factory.mktemp("bundled_case"), 1, seed=31, shape=(96, 96, 64))[0]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_loads_and_segments_a_phantom(name, case):
    folder = model_store.resolve_checkpoint(name)
    assert folder == model_store.BUNDLED_DIR / name and model_store.is_model_folder(folder)
    predictor = Predictor(folder)
    for leaf in jax.tree_util.tree_leaves((predictor.params, predictor.batch_stats)):
        assert leaf.dtype == np.float32 and np.isfinite(np.asarray(leaf)).all()
    image, _, props = brats.load_case(brats.case_from_path(case), predictor.modalities)
    probs, classes = predictor.predict_image(image)
    assert probs.shape == (*props.shape, predictor.cfg.out_channels) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    assert classes.shape == props.shape


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_card_matches_its_config(name):
    folder = model_store.BUNDLED_DIR / name
    card = json.loads((folder / model_store.CARD_FILE).read_text())
    cfg = config_lib.load(folder / model_store.CONFIG_FILE)
    assert card["inputs"]["modalities"] == list(config_lib.canonical_modalities(cfg))
    assert card["target"] == cfg.data.target and card["regions"] == list(target_for(cfg).region_names)
    assert card["architecture"]["name"] == cfg.model.name
    storage = card["storage"]
    assert storage["dtype"] in model_store.STORAGE_DTYPES
    if storage["dtype"] == "float16":
        assert 0 <= storage["max_probability_difference"] <= model_store.FLOAT16_TOLERANCE
    assert card["provenance"]["trained_on"] and card["description"]


@pytest.mark.real_data
def test_default_model_gives_its_documented_dice_on_a_real_case(real_data, tmp_path):
    """The shipped BraTS model, chosen without --checkpoint, on one of the held-out BraTS 2018
    cases its card reports: whole-volume Dice within 0.01 of the card's, per region."""
    from jaxseg.eval.run import evaluate_folders
    from jaxseg.infer.predict import predict
    if model_store.DEFAULT_MODEL not in BUNDLED:
        pytest.skip(f"{model_store.DEFAULT_MODEL} is not bundled")
    card = model_store.read_card(model_store.BUNDLED_DIR / model_store.DEFAULT_MODEL)
    documented = card["provenance"]["validation"]["per_case"]
    case_id = "Brats18_CBICA_AQN_1"
    assert case_id in documented
    case_dir = real_data / "brats2018" / case_id
    [prediction] = predict([case_dir], None, tmp_path / "pred")
    summary = evaluate_folders(tmp_path / "pred", case_dir, tmp_path / "evaluation", figures=False)
    for row in summary.per_case:
        assert row["dice"] == pytest.approx(documented[case_id][row["region"]]["dice"], abs=0.01), row["region"]
    assert prediction.volumes_ml["WT"] > 1.0  # a real tumor was found, not an empty map
