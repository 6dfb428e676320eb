"""The model-zoo configs load, name their model, and run a train step at smoke size."""
import numpy as np
import pytest
from flax import nnx

from jaxseg import config as config_lib
from jaxseg.models.registry import build_model
from tests.models.tiny import train_losses


@pytest.mark.parametrize("name, model, cls", [
    ("brats2020_regions", "attention_unet", "AttentionUNet"),
    ("africa_unet", "unet", "UNet"),
    ("africa_transunet", "transunet", "TransUNet"),
])
def test_config_trains_one_step_at_smoke_size(name, model, cls):
    full = config_lib.load(name)
    assert full.model.name == model and full.data.target == "regions" and len(full.data.modalities) == 4
    assert type(nnx.eval_shape(lambda: build_model(full, nnx.Rngs(0)))).__name__ == cls
    cfg = config_lib.smoke(full)
    [loss] = train_losses(cfg, 1)
    assert np.isfinite(loss) and loss > 0


def test_the_africa_pair_shares_its_data_settings():
    unet, transunet = config_lib.load("africa_unet"), config_lib.load("africa_transunet")
    assert unet.data == transunet.data and unet.train == transunet.train
    assert unet.data.modalities == ("t2f", "t1n", "t1c", "t2w")
