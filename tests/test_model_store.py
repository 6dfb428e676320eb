"""Model folders: export (float32 and float16), loading, atomicity, --checkpoint resolution,
`jaxseg models`, and predict/explain without --checkpoint on a bundled model."""
import dataclasses
import json
import shutil

import jax
import nibabel as nib
import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from jaxseg import cli, home, model_export, model_store
from jaxseg import config as config_lib
from jaxseg.data import brats, phantom
from jaxseg.errors import JaxsegError
from jaxseg.infer.predict import Predictor
from jaxseg.model_export import CHECK_PHANTOM_SEED, CHECK_PHANTOM_SHAPE
from jaxseg.model_store import find_run
from jaxseg.target import target_kind

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(smoke_run, tmp_path_factory):
    """The smoke run as a float32 and a float16 model folder."""
    root = tmp_path_factory.mktemp("exported")
    return {dtype: model_export.export_model(smoke_run, root / dtype, name=f"smoke_{dtype}", dtype=dtype)
            for dtype in ("float32", "float16")}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A phantom the export's own check did not see (another seed and shape)."""
    root = tmp_path_factory.mktemp("store_case")
    return phantom.write_phantoms(root, 1, seed=77, shape=(40, 36, 24))[0]


@pytest.fixture
def store(exported, tmp_path, monkeypatch):
    """An empty per-user folder and a bundled folder holding the float16 smoke model as the
    default model."""
    monkeypatch.setenv("JAXSEG_HOME", str(tmp_path / "home"))
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    shutil.copytree(exported["float16"], bundled / model_store.DEFAULT_MODEL)
    monkeypatch.setattr(model_store, "BUNDLED_DIR", bundled)
    return bundled


def _probabilities(checkpoint, case_dir):
    predictor = Predictor(checkpoint)
    image, _, _ = brats.load_case(brats.case_from_path(case_dir), predictor.modalities)
    return predictor.predict_image(image)[0]


def _run_tensors(run):
    """The run's best parameters and statistics, restored by orbax, by pytree path name."""
    predictor = Predictor(run)
    return model_store.flatten_model(predictor.params, predictor.batch_stats)


def test_float32_folder_holds_the_runs_tensors_and_gives_its_probabilities(smoke_run, exported, case):
    stored = load_file(str(exported["float32"] / model_store.WEIGHTS_FILE))
    original = _run_tensors(smoke_run)
    assert set(stored) == set(original) and any(k.startswith("batch_stats/") for k in stored)
    for name, value in original.items():
        assert stored[name].dtype == np.float32 and np.array_equal(stored[name], value), name
    np.testing.assert_allclose(_probabilities(exported["float32"], case), _probabilities(smoke_run, case),
                               rtol=0, atol=1e-6)


def test_float16_folder_is_within_the_tolerance_and_its_card_records_the_difference(smoke_run, exported, case):
    folder = exported["float16"]
    stored = load_file(str(folder / model_store.WEIGHTS_FILE))
    kernels = 0
    for name, value in _run_tensors(smoke_run).items():
        kept = np.float16 if value.ndim >= 2 else np.float32  # kernels halved, vectors kept
        kernels += value.ndim >= 2
        assert stored[name].dtype == kept and np.array_equal(stored[name], value.astype(kept)), name
    assert kernels >= 4
    assert (folder / model_store.WEIGHTS_FILE).stat().st_size < (exported["float32"] / model_store.WEIGHTS_FILE).stat().st_size
    difference = np.abs(_probabilities(folder, case) - _probabilities(smoke_run, case)).max()
    assert 0 < difference <= model_store.FLOAT16_TOLERANCE
    card = json.loads((folder / model_store.CARD_FILE).read_text())
    storage = card["storage"]
    assert storage["dtype"] == "float16" and storage["float16_tolerance"] == model_store.FLOAT16_TOLERANCE
    # The recorded difference is the one on the documented check phantom, recomputed here.
    check = phantom.write_phantoms(folder.parent / "check", 1, CHECK_PHANTOM_SEED, CHECK_PHANTOM_SHAPE)[0]
    recomputed = np.abs(_probabilities(folder, check) - _probabilities(smoke_run, check)).max()
    assert storage["max_probability_difference"] == pytest.approx(float(recomputed), rel=1e-6, abs=1e-9)


def test_card_describes_the_model_from_its_run(smoke_run, exported):
    card = json.loads((exported["float32"] / model_store.CARD_FILE).read_text())
    predictor = Predictor(smoke_run)
    splits = json.loads((smoke_run / "splits.json").read_text())
    assert card["name"] == "smoke_float32"
    assert card["inputs"]["modalities"] == ["flair", "t1", "t1ce", "t2"] and card["regions"] == ["WT", "TC", "ET"]
    assert card["target"] == "regions" and card["architecture"]["name"] == predictor.cfg.model.name
    assert card["parameters"] == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(predictor.params))
    assert card["provenance"]["cases"] == {k: len(splits[k]) for k in ("train", "val", "test")}
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if "val_dice" in r), key=lambda r: r["val_dice"])
    assert card["provenance"]["validation"]["mean_dice"] == best["val_dice"]
    assert card["storage"]["max_probability_difference"] is None  # float32: nothing to measure
    # The weights are as readable as the other files (a bundled model is read by every user).
    modes = {p.name: p.stat().st_mode & 0o777 for p in exported["float32"].iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_loading_puts_float32_arrays_into_the_abstract_states_shardings(exported):
    predictor = Predictor(exported["float16"])
    for leaf in jax.tree_util.tree_leaves((predictor.params, predictor.batch_stats)):
        assert leaf.dtype == np.float32
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == jax.device_count()
    assert predictor.meta["card"]["name"] == "smoke_float16"


def test_a_refused_export_leaves_nothing_and_keeps_the_previous_folder(smoke_run, tmp_path, monkeypatch):
    out = tmp_path / "model"
    monkeypatch.setattr(model_export, "FLOAT16_TOLERANCE", 0.0)
    with pytest.raises(JaxsegError, match="float16 storage changes a probability by .* export with --dtype float32"):
        model_export.export_model(smoke_run, out, name="m")
    assert list(tmp_path.iterdir()) == []
    model_export.export_model(smoke_run, out, name="m", dtype="float32")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(JaxsegError):
        model_export.export_model(smoke_run, out, name="m")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_export_refuses_bad_settings_in_one_line(smoke_run, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for kwargs, message in (({"dtype": "bfloat16"}, "--dtype 'bfloat16'"), ({"name": "a b"}, "--name 'a b'"),
                            ({"name": "demo"}, "reserved")):
        with pytest.raises(JaxsegError, match=message):
            model_export.export_model(smoke_run, tmp_path / "m", **{"name": "m", **kwargs})
    with pytest.raises(JaxsegError, match="exists and is not a model folder"):
        model_export.export_model(smoke_run, tmp_path / "taken", name="m")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine" and not (tmp_path / "m").exists()


def test_broken_model_folders_are_clear_errors(exported, tmp_path):
    truncated = shutil.copytree(exported["float32"], tmp_path / "truncated")
    data = (truncated / model_store.WEIGHTS_FILE).read_bytes()
    (truncated / model_store.WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(JaxsegError, match="model.safetensors: not a readable safetensors file"):
        Predictor(truncated)
    wider = shutil.copytree(exported["float32"], tmp_path / "wider")
    cfg = config_lib.load(wider / "config.toml")
    assert cfg.model.features == (4, 8)
    (wider / "config.toml").write_text(config_lib.dumps(
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, features=(8, 16)))))
    with pytest.raises(JaxsegError, match="model.safetensors: tensor .* has shape"):
        Predictor(wider)


def test_resolution_rules(store, smoke_run, exported, tmp_path):
    default = store / model_store.DEFAULT_MODEL
    said = []
    assert model_store.resolve_checkpoint(None, modalities=["t2f", "t1n", "t1c", "t2w", "seg"], say=said.append) == default
    assert said and model_store.DEFAULT_MODEL in said[0]
    assert model_store.resolve_checkpoint(None) == default  # modalities not known
    with pytest.raises(JaxsegError) as err:
        model_store.resolve_checkpoint(None, modalities=["flair"], input_name="scan.nii.gz")
    message = str(err.value)
    assert message.startswith("scan.nii.gz: has flair;")
    assert f"{model_store.DEFAULT_MODEL} needs flair, t1, t1ce, t2" in message and "--checkpoint demo" in message
    assert model_store.resolve_checkpoint(model_store.DEFAULT_MODEL) == default
    with pytest.raises(JaxsegError, match="--checkpoint demo: no demo model in .*run `jaxseg demo` first"):
        model_store.resolve_checkpoint("demo")
    demo = model_export.export_model(smoke_run, home.demo_model_dir(), name="demo", dtype="float32")
    assert demo == tmp_path / "home" / "models" / "demo"
    assert model_store.resolve_checkpoint("demo") == demo
    with pytest.raises(JaxsegError) as err:
        model_store.resolve_checkpoint("brats2021")
    assert "--checkpoint brats2021: no such model or folder" in str(err.value)
    assert f"demo (the model of `jaxseg demo`), {model_store.DEFAULT_MODEL} (bundled)" in str(err.value)
    assert model_store.resolve_checkpoint(smoke_run / "best") == smoke_run
    assert model_store.resolve_checkpoint(exported["float32"]) == exported["float32"]
    with pytest.raises(JaxsegError, match="not a jaxseg run folder or model folder"):
        model_store.resolve_checkpoint(tmp_path)


def test_without_a_bundled_model_it_says_so(store, monkeypatch, tmp_path):
    monkeypatch.setattr(model_store, "BUNDLED_DIR", tmp_path / "nothing_here")
    with pytest.raises(JaxsegError, match="no model is bundled with this installation .*--checkpoint demo"):
        model_store.resolve_checkpoint(None, modalities=brats.MODALITIES)
    assert model_store.list_models() == []
    result = invoke("models")
    assert result.exit_code == 0 and "no models: none bundled" in result.output and "jaxseg demo" in result.output
    with pytest.raises(JaxsegError, match="no model is bundled"):
        model_store.resolve_checkpoint("brats2018_unet")


def test_list_models_and_the_models_command(store, smoke_run, exported):
    model_export.export_model(smoke_run, home.demo_model_dir(), name="demo", dtype="float32",
                             card={"description": "phantom demo"})
    entries = model_store.list_models([smoke_run, exported["float32"]])
    assert [(e.name, e.source) for e in entries] == [(model_store.DEFAULT_MODEL, "bundled"), ("demo", "demo"),
                                                    (smoke_run.name, "run"), ("float32", "run")]
    for e in entries:
        assert e.modalities == ("flair", "t1", "t1ce", "t2") and e.regions == ("WT", "TC", "ET")
        assert e.path == find_run(e.path) and "synthetic phantoms" in e.provenance
    assert entries[0].card["storage"]["dtype"] == "float16" and entries[2].card is None
    result = invoke("models", smoke_run)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for expected in (model_store.DEFAULT_MODEL, "bundled", "demo", smoke_run.name, "flair, t1, t1ce, t2",
                     "model card", "stored float16", "phantom demo", "validation Dice"):
        assert expected in text, expected
    bad = invoke("models", smoke_run / "phantoms")
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and bad.output.count("\n") == 1
    assert "not a jaxseg run folder or model folder" in bad.output


def test_predict_and_explain_without_checkpoint_use_the_bundled_model(store, case, tmp_path):
    result = invoke("predict", case, "--out", tmp_path / "seg.nii.gz")
    assert result.exit_code == 0, result.output
    assert f"using the bundled model {model_store.DEFAULT_MODEL}" in result.output
    expected = _probabilities(store / model_store.DEFAULT_MODEL, case)  # canonical (RAS) order
    seg = np.asarray(nib.as_closest_canonical(nib.load(tmp_path / "seg.nii.gz")).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(brats.to_internal(seg, "brats2021"), target_kind("regions").classes_from_output(expected))
    result = invoke("explain", case, "--out", tmp_path / "report", "--mc-samples", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / f"{case.name}_explain.json").read_text())
    assert summary["checkpoint"] == str(store / model_store.DEFAULT_MODEL)
    np.testing.assert_allclose(
        np.asarray(nib.as_closest_canonical(nib.load(tmp_path / "report" / f"{case.name}_prob.nii.gz")).dataobj),
        expected, atol=1e-6)
    assert (tmp_path / "report" / f"{case.name}_report.html").is_file()


def test_a_case_without_the_models_modalities_is_one_line_and_nothing_is_written(store, case, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(case, data / case.name)
    other = phantom.write_phantoms(data, 1, seed=5, shape=(32, 32, 20))[0]
    (other / f"{other.name}_t1ce.nii.gz").unlink()
    for args in ((), ("--checkpoint", model_store.DEFAULT_MODEL)):
        result = invoke("predict", data, "--out", tmp_path / "out", *args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert other.name in result.output and "t1ce" in result.output
        assert not (tmp_path / "out").exists()
    result = invoke("explain", other, "--out", tmp_path / "r.html")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"has flair, t1, t2; no --checkpoint given and {model_store.DEFAULT_MODEL} needs flair, t1, t1ce, t2" in result.output
    assert not (tmp_path / "r.html").exists()


def test_export_model_command(smoke_run, tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"license": "CC-BY-4.0", "provenance": {"note": "test"}}))
    case_dir = smoke_run / "phantoms" / "Phantom_0_000"
    result = invoke("export-model", smoke_run, "--out", tmp_path / "m", "--name", "mine", "--card", tmp_path / "card.json",
                    "--check-input", case_dir)
    assert result.exit_code == 0, result.output
    assert "max probability difference" in result.output
    card = json.loads((tmp_path / "m" / model_store.CARD_FILE).read_text())
    assert card["license"] == "CC-BY-4.0" and card["provenance"]["note"] == "test"
    assert card["provenance"]["cases"]  # merged, not replaced
    assert card["storage"]["measured_on"] == "case Phantom_0_000"
    recomputed = np.abs(_probabilities(tmp_path / "m", case_dir) - _probabilities(smoke_run, case_dir)).max()
    assert card["storage"]["max_probability_difference"] == pytest.approx(float(recomputed), rel=1e-6, abs=1e-9)
    result = invoke("predict", case_dir, "--checkpoint", tmp_path / "m", "--out", tmp_path / "seg.nii.gz")
    assert result.exit_code == 0 and (tmp_path / "seg.nii.gz").is_file(), result.output
    bad = invoke("export-model", smoke_run, "--out", tmp_path / "m2", "--name", "x", "--dtype", "int8")
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "--dtype 'int8'" in bad.output
    assert not (tmp_path / "m2").exists() and case_dir.is_dir()


def test_demo_saves_its_model_for_checkpoint_demo_from_any_folder(tmp_path, monkeypatch):
    from jaxseg.demo import run_demo
    monkeypatch.setenv("JAXSEG_HOME", str(tmp_path / "home"))
    said = []
    made = run_demo(tmp_path / "demo_output", smoke=True, say=said.append)
    assert made["model"] == tmp_path / "home" / "models" / "demo" and model_store.is_model_folder(made["model"])
    assert made["report"].is_file() and (tmp_path / "demo_output" / "run" / "best").is_dir()
    assert any("--checkpoint demo" in line for line in said)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert model_store.resolve_checkpoint("demo") == made["model"]
    entry = next(e for e in model_store.list_models() if e.source == "demo")
    assert entry.card["storage"]["dtype"] == "float32" and "phantoms" in entry.card["description"]
    case = tmp_path / "demo_output" / "run" / "phantoms" / "Phantom_0_000"
    np.testing.assert_allclose(_probabilities(made["model"], case), _probabilities(made["run"], case),
                               rtol=0, atol=1e-6)


def test_a_3d_run_exports_and_loads(smoke_run_3d, tmp_path):
    folder = model_export.export_model(smoke_run_3d, tmp_path / "m3d", name="smoke3d")
    card = json.loads((folder / model_store.CARD_FILE).read_text())
    assert card["architecture"]["name"] == "unet3d" and card["architecture"]["patch_size"]
    assert 0 <= card["storage"]["max_probability_difference"] <= model_store.FLOAT16_TOLERANCE
    predictor = Predictor(folder)
    assert predictor.volumetric and predictor.meta["card"]["name"] == "smoke3d"
