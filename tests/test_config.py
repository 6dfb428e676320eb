from pathlib import Path

import pytest

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = config_lib.load(path)
    assert cfg.name == path.stem
    written = tmp_path / f"{path.stem}.toml"
    written.write_text(config_lib.dumps(cfg))
    assert config_lib.load(written) == cfg


def test_config_by_bare_name_and_overrides():
    cfg = config_lib.load("demo", ["train.epochs=3", "train.optimizer=adamw", 'data.modalities=["t2f"]',
                                   "model.features=[4, 8]"])
    assert cfg.train.epochs == 3
    assert cfg.train.optimizer == "adamw"
    assert cfg.data.modalities == ("t2f",)
    assert config_lib.canonical_modalities(cfg) == ("flair",)
    assert cfg.model.features == (4, 8)
    assert cfg.in_channels == 1 and cfg.out_channels == 3


@pytest.mark.parametrize("override, expected", [
    ("train.epochz=3", "unknown setting 'train.epochz'"),
    ("train.epochs=three", "train.epochs must be a whole number"),
    ("train.epochs=0", "train.epochs must be at least 1"),
    ("train.optimizer=sgd", "train.optimizer must be one of adam, adamw"),
    ("data.target=tumour", "data.target must be one of"),
    ('data.modalities=["dwi"]', "unknown modality 'dwi'"),
    ('data.modalities=["t2f", "flair"]', "names a modality twice"),
    ("data.image_size=30", "data.image_size must be at least 16 and divisible by 8"),
    ("data.split=[0.5, 0.5, 0.5]", "data.split must be three"),
    ("train.learning_rate=-1", "train.learning_rate must be positive"),
    ("train.loss=ce_dice", "ce_dice (softmax) needs data.target"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("train", "expected key=value"),
])
def test_bad_values_name_the_file_and_the_setting(override, expected):
    with pytest.raises(JaxsegError) as err:
        config_lib.load("demo", [override])
    assert expected in str(err.value)
    if "key=value" not in expected:
        assert "demo.toml" in str(err.value)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(JaxsegError, match="no such config file"):
        config_lib.load(tmp_path / "missing")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nepochs = 1")
    with pytest.raises(JaxsegError, match="broken.toml: not valid TOML"):
        config_lib.load(broken)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_has_a_valid_smoke_size(path):
    cfg = config_lib.smoke(config_lib.load(path))
    assert cfg.data.image_size == 32 and max(cfg.model.features) <= 16  # every model's toy widths
    assert cfg.data.modalities == config_lib.load(path).data.modalities
