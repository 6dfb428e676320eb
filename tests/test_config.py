import dataclasses
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
    ("train.epochs=three", "train.epochs: must be a whole number"),
    ("train.epochs=0", "train.epochs: must be at least 1"),
    ("train.optimizer=sgd", "train.optimizer: must be one of adam, adamw; got 'sgd'"),
    ("data.target=tumour", "data.target: must be one of wt, regions, classes"),
    ('data.modalities=["dwi"]', "unknown modality 'dwi'"),
    ('data.modalities=["t2f", "flair"]', "names a modality twice"),
    ("data.image_size=30", "data.image_size: must be at least 16 and divisible by 8"),
    ("data.split=[0.5, 0.5, 0.5]", "data.split: must be three"),
    ("train.learning_rate=-1", "train.learning_rate: must be positive"),
    ("train.loss=ce_dice", "ce_dice (softmax) needs data.target"),
    ("model.dropout=1.5", "model.dropout: must be in [0, 1)"),
    ("data.patch_mode=random", "data.patch_mode: must be one of center, tumor; got 'random'"),
    ("data.tumor_probability=1.5", "data.tumor_probability: must be in [0, 1]; got 1.5"),
    ("data.samples_per_case=0", "data.samples_per_case: must be at least 1; got 0"),
    ("train.seed=-1", "train.seed: must be in [0, 2**32)"),
    ("infer.overlap=1", "infer.overlap: must be in [0, 1); got 1.0"),
    ("train.weight_decay=-0.1", "train.weight_decay: must not be negative; got -0.1"),
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


# --- the [model] section: one class per model, chosen by model.name --------------------------------

@pytest.mark.parametrize("model, overrides, expected", [
    ("unet", ["data.image_size=36"], "data.image_size: must be at least 16 and divisible by 8 (the U-Net halves it 3"),
    ("unet", ["model.features=[8]"], "model.features: must list at least two positive channel counts; got [8]"),
    ("attention_unet", ["model.features=[4, 8, 16]", "data.image_size=34"],
     "data.image_size: must be at least 16 and divisible by 4"),
    ("transunet", ["model.transformer_heads=3"], "model.transformer_heads: must divide transformer_dim (16); got 3"),
    ("transunet", ["model.transformer_layers=0"], "model.transformer_layers: must be at least 1; got 0"),
    ("resunet34", ["model.encoder_depths=[3, 4, 6]"],
     "model.encoder_depths: must list four positive residual-block counts (stages 1-4); got [3, 4, 6]"),
    ("resunet34", ["model.features=[64, 64, 128, 256]"], "model.features: must list five positive widths"),
    ("resunet34", ["model.decoder_features=[256, 128, 64, 32, 0]"], "model.decoder_features: must list five positive"),
    ("resunet34", ["model.input_mode=rgb"], "model.input_mode: must be one of channels, pseudo_rgb; got 'rgb'"),
    ("resunet34", ["model.input_mode=pseudo_rgb"], "model.input_mode: pseudo_rgb copies one channel three times; "
                                                   "data.modalities has 4"),
    ("resunet34", ["data.image_size=16"], "data.image_size: must be at least 32 for resunet34"),
    ("unet3d", ["data.patch_size=20"], "data.patch_size: must be divisible by 8 (the 3D U-Net halves it 3 times)"),
    ("unet3d", ["data.format=image_folder", "data.target=wt"], "model.name: unet3d needs volumes"),
    ("unet", ["model.transformer_heads=4"], "model.transformer_heads: a setting of transunet, not of model.name = 'unet'"),
    ("transunet", ["model.input_mode=pseudo_rgb"], "model.input_mode: a setting of resunet34, not of model.name"),
    ("unet", ["model.featurs=[4, 8]"], "unknown setting 'model.featurs' (did you mean 'model.features'?"),
    ("vit", [], "model.name: must be one of unet, attention_unet, resunet34, transunet, unet3d; got 'vit'"),
])
def test_each_model_section_locates_its_errors(model, overrides, expected):
    """Every message is ``<file>: <section.key>: <problem>``, the key the one at fault."""
    with pytest.raises(JaxsegError) as err:
        config_lib.load("demo", [f"model.name={model}", *config_lib.SMOKE_MODEL_OVERRIDES.get(model, ()), *overrides])
    message = str(err.value)
    assert message.startswith(str(config_lib.resolve_path("demo")) + ": ") and expected in message, message
    assert "\n" not in message


def test_the_model_name_chooses_the_section_and_its_settings():
    for name, section in config_lib.MODEL_SECTIONS.items():
        cfg = config_lib.load("demo", [f"model.name={name}", *config_lib.smoke_overrides(name)])
        assert type(cfg.model) is section and cfg.model.name == name
        fields = {f.name for f in dataclasses.fields(section)}
        assert {"name", "features", "dropout", "pretrained"} <= fields  # what every consumer reads
    transunet = config_lib.load("demo", ["model.name=transunet", "model.transformer_heads=4"]).model
    assert transunet.transformer_heads == 4 and not hasattr(config_lib.load("demo").model, "transformer_heads")


def test_the_model_registry_builds_the_models_the_config_admits():
    from jaxseg.models import registry
    assert set(registry.BUILDERS) == set(config_lib.MODEL_SECTIONS)
    assert registry.VOLUME_MODELS == {n for n, s in config_lib.MODEL_SECTIONS.items() if s.spatial_dims == 3}


def test_a_file_listing_every_models_settings_at_their_defaults_still_loads(tmp_path):
    """Run folders written before the per-model sections list every model's settings in [model]."""
    legacy_model = {}
    for section in config_lib.MODEL_SECTIONS.values():
        legacy_model.update(config_lib.to_dict(section()))
    legacy_model.update(name="attention_unet", features=[8, 16, 32], dropout=0.3)
    cfg = config_lib.load_from_dict({"model": legacy_model})
    assert cfg.model == config_lib.AttentionUNetConfig(features=(8, 16, 32), dropout=0.3)
    bundled = Path(config_lib.__file__).parents[1] / "bundled" / "brats2018_unet" / "config.toml"
    assert config_lib.load(bundled).model.name == "unet"
    with pytest.raises(JaxsegError, match="model.input_mode: a setting of resunet34"):
        config_lib.load_from_dict({"model": {**legacy_model, "input_mode": "pseudo_rgb"}})


# --- values as written, and written back -----------------------------------------------------------

def _flat(table, prefix=()):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flat(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _get(obj, path):
    for part in path:
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_gives_the_values_its_file_says(path):
    """Each key of the file (read by tomllib) is the loaded value; every other key is its field's
    default; in/out channels follow the modalities and the target."""
    import tomllib
    written = dict(_flat(tomllib.loads(path.read_text())))
    cfg = config_lib.load(path)
    for key, value in written.items():
        assert _get(cfg, key) == (tuple(value) if isinstance(value, list) else value), key
    for key, value in _flat(config_lib.to_dict(cfg)):
        if key not in written and key != ("name",):
            section = _get(cfg, key[:-1])
            default = {f.name: f.default for f in dataclasses.fields(section)}[key[-1]]
            assert value == default, key
    assert cfg.in_channels == len(written[("data", "modalities")])
    assert cfg.out_channels == {"wt": 1, "regions": 3, "classes": 4}[cfg.data.target]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_dumps_is_toml_of_the_config_and_loads_back_equal(path, tmp_path):
    """The written text is the config's dict as TOML (tomllib reads it back key for key), also at
    smoke size and with a string that needs escaping."""
    import tomllib
    full = config_lib.load(path, ['data.root=C:\\data\\"brats" 2021', "train.learning_rate=3.5e-05"])
    for cfg in (full, config_lib.smoke(full)):
        text = config_lib.dumps(cfg)
        assert dict(_flat(tomllib.loads(text))) == {
            k: list(v) if isinstance(v, tuple) else v for k, v in _flat(config_lib.to_dict(cfg))}
        file = tmp_path / f"{cfg.name}.toml"
        file.write_text(text)
        assert config_lib.load(file) == cfg
    assert full.data.root == 'C:\\data\\"brats" 2021'


def test_sections_validate_when_built_in_code():
    """Sections built or replaced in code are checked as files are."""
    import pydantic
    assert config_lib.DataConfig(image_size=32).image_size == 32
    cfg = config_lib.load("demo")
    assert dataclasses.replace(cfg.train, epochs=3).epochs == 3
    with pytest.raises(pydantic.ValidationError):
        dataclasses.replace(cfg.train, epochs=0)
    with pytest.raises(pydantic.ValidationError):
        config_lib.TransUNetConfig(transformer_dim=10, transformer_heads=4)


def test_setting_another_model_keeps_the_shared_settings_only():
    """``--set model.name=unet`` on the resunet34 config: features and dropout stay, input_mode
    (resunet34's own) goes; a resunet34 setting given by --set as well is still an error."""
    file = config_lib.load("figshare_resunet34")
    cfg = config_lib.load("figshare_resunet34", ["model.name=unet"])
    assert cfg.model == config_lib.UNetConfig(features=file.model.features, dropout=file.model.dropout)
    assert cfg.data == file.data and cfg.train == file.train
    with pytest.raises(JaxsegError, match="model.encoder_depths: a setting of resunet34"):
        config_lib.load("figshare_resunet34", ["model.name=unet", "model.encoder_depths=[1, 1, 1, 1]"])


def test_the_format_registry_reads_the_formats_the_config_admits():
    import typing
    from jaxseg.data import formats
    choices = typing.get_args(typing.get_type_hints(config_lib.DataConfig)["format"])
    assert set(formats.FORMATS) == set(choices)
