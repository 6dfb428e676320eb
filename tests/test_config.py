from pathlib import Path

import pytest

from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError
from jaxseg.target import target_kind

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
    full = config_lib.load(path)
    cfg = config_lib.smoke(full)
    assert cfg.data.image_size == 32 and cfg.train.epochs == 1
    assert max(cfg.model.features) <= 16
    assert cfg.model.name == full.model.name and cfg.data.modalities == full.data.modalities


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_runs_one_train_step_at_smoke_size(path):
    """The model, target, loss and optimizer of every shipped config at smoke size: one step on
    random inputs of the right shape moves every parameter and gives a finite loss."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxseg.models.registry import spatial_dims
    from jaxseg.train.state import create_state, graphdef_of, make_optimizer
    from jaxseg.train.step import make_train_step

    cfg = config_lib.smoke(config_lib.load(path))
    size = cfg.data.patch_size if spatial_dims(cfg) == 3 else cfg.data.image_size
    shape = (cfg.train.batch_size,) + (size,) * spatial_dims(cfg)
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, shape).astype(np.uint8)
    batch = {"image": rng.normal(size=shape + (cfg.in_channels,)).astype(np.float32),
             "target": target_kind(cfg.data.target).encode(classes), "classes": classes}
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    tx = make_optimizer(cfg, 1)
    state = create_state(cfg, tx, mesh)
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(graphdef_of(cfg), tx, cfg.train.loss, cfg.data.target)
    state, sums = step(state, {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()})
    assert np.isfinite(float(sums["loss_sum"])) and int(state.step) == 1
    moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
    assert all(jax.tree.leaves(moved)), cfg.model.name
