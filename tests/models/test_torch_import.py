"""PyTorch weights in the ResNet-34 U-Net give PyTorch's numbers.

The reference is a torch twin of smp's ``Unet('resnet34')`` (tests/models/torch_twin.py) with
random weights and random batch-norm statistics in eval mode, saved as ``.pth`` and as
``.safetensors``; our import must reproduce its logits on sizes that are not multiples of 32.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
import safetensors.torch  # noqa: E402

from jaxseg import config as config_lib  # noqa: E402
from jaxseg.errors import JaxsegError  # noqa: E402
from jaxseg.models import torch_import  # noqa: E402
from jaxseg.models.resunet import ResUNet  # noqa: E402
from jaxseg.train.checkpoint import load_model_state  # noqa: E402
from jaxseg.train.pretrained import apply_pretrained, import_weights  # noqa: E402
from jaxseg.train.state import abstract_state, create_state, graphdef_of, make_optimizer  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from tests.models.torch_twin import ResNetEncoder, Unet, randomize  # noqa: E402

SMALL = dict(widths=(4, 6, 8, 8, 12), depths=(1, 2, 1, 1), decoder_channels=(8, 8, 6, 4, 4))
SMALL_OVERRIDES = ("model.name=resunet34", "model.features=[4, 6, 8, 8, 12]", "model.encoder_depths=[1, 2, 1, 1]",
                   "model.decoder_features=[8, 8, 6, 4, 4]", 'data.modalities=["flair", "t1", "t1ce"]',
                   "data.target=regions", "data.image_size=32")


def ours(in_channels=3, classes=3, input_mode="channels", widths=SMALL["widths"], depths=SMALL["depths"],
         decoder=SMALL["decoder_channels"]) -> ResUNet:
    """Our model with the given sizes; abstract (no initialisation cost) unless a test fills it."""
    return nnx.eval_shape(lambda: ResUNet(in_channels, classes, widths, depths, decoder, input_mode,
                                          rngs=nnx.Rngs(0)))


def filled(model: ResUNet, seed: int = 0) -> ResUNet:
    """An abstract model with numpy random values in every variable (no JAX initialisation)."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda s: (rng.normal(0, 0.1, s.shape) if len(s.shape) == 4 else
                                    rng.uniform(0.5, 1.5, s.shape)).astype(s.dtype), state)
    return nnx.merge(graphdef, state)


@nnx.jit
def forward(model, x):
    return model(x)


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    """(B, H, W, C) numpy in, (B, H, W, K) numpy out, through the torch twin."""
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)


def assert_close(ours_out, reference, rtol=1e-4):
    """Max deviation within ``rtol`` of the reference's magnitude (values cross zero, so a
    per-element relative error is meaningless near 0)."""
    ours_out, reference = np.asarray(ours_out), np.asarray(reference)
    assert ours_out.shape == reference.shape
    scale = np.abs(reference).max()
    assert scale > 0
    assert np.abs(ours_out - reference).max() <= rtol * scale, np.abs(ours_out - reference).max() / scale


@pytest.fixture(scope="module")
def twin():
    torch.manual_seed(0)
    return randomize(Unet(3, 3, **SMALL), seed=1)


@pytest.fixture(scope="module")
def files(twin, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.save(twin.state_dict(), folder / "unet.pth")
    safetensors.torch.save_file(twin.state_dict(), folder / "unet.safetensors")
    return folder


def image(shape=(1, 70, 90, 3), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("name", ["unet.pth", "unet.safetensors"])
def test_imported_smp_unet_gives_torch_logits_on_a_size_not_divisible_by_32(twin, files, name):
    model = ours()
    assert torch_import.load_into(model, torch_import.read_state_dict(files / name), name) == "smp"
    x = image()
    logits, acts = forward(model, jnp.asarray(x))
    assert_close(logits, torch_logits(twin, x))
    assert acts["dec0"].shape[1:3] == (70, 90) and acts["enc4"].shape[1:3] == (3, 3)


def test_true_resnet34_sizes_match_torch_and_count_smps_parameters():
    twin = randomize(Unet(3, 1), seed=2)
    torch_count = sum(p.numel() for p in twin.parameters())
    model = ours(classes=1, widths=(64, 64, 128, 256, 512), depths=(3, 4, 6, 3), decoder=(256, 128, 64, 32, 16))
    from jaxseg.models.registry import count_params
    assert count_params(model) == torch_count == 24_436_369
    torch_import.load_into(model, {k: v.numpy() for k, v in twin.state_dict().items()}, "twin")
    x = image((1, 40, 50, 3), seed=3)
    assert_close(forward(model, jnp.asarray(x))[0], torch_logits(twin, x))


def test_torchvision_resnet_fills_the_encoder_only():
    encoder = randomize(ResNetEncoder(3, SMALL["widths"], SMALL["depths"], with_fc=True), seed=4)
    model = filled(ours())
    decoder_before = jax.tree.map(np.asarray, nnx.state(model.decoder))
    tensors = {k: v.numpy() for k, v in encoder.state_dict().items()}
    assert "fc.weight" in tensors
    assert torch_import.load_into(model, tensors, "resnet34.pth") == "torchvision"
    x = image((2, 45, 37, 3), seed=5)
    _, acts = forward(model, jnp.asarray(x))
    with torch.no_grad():
        features = encoder(torch.from_numpy(x.transpose(0, 3, 1, 2)))[1:]
    for i, feature in enumerate(features):
        assert_close(acts[f"enc{i}"], feature.numpy().transpose(0, 2, 3, 1))
    decoder_after = jax.tree.map(np.asarray, nnx.state(model.decoder))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, decoder_before, decoder_after)))


def test_pseudo_rgb_copies_one_channel_into_rgb_weights(twin, files):
    model = ours(in_channels=1, input_mode="pseudo_rgb")
    torch_import.load_into(model, torch_import.read_state_dict(files / "unet.safetensors"), "unet")
    gray = image((1, 33, 47, 1), seed=6)
    assert_close(forward(model, jnp.asarray(gray))[0], torch_logits(twin, np.repeat(gray, 3, axis=-1)))


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory):
    """``jaxseg import-weights unet.pth --config small.toml --out imported``: (run folder, config file)."""
    from typer.testing import CliRunner

    from jaxseg import cli
    folder = tmp_path_factory.mktemp("imported")
    config = folder / "small.toml"
    config.write_text(config_lib.dumps(config_lib.load_from_dict({}, SMALL_OVERRIDES)))
    done = CliRunner().invoke(cli.app, ["import-weights", str(files / "unet.pth"), "--out", str(folder / "run"),
                                        "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert "imported the whole model" in done.output
    return folder / "run", config


def test_the_imported_run_folder_restores_and_training_starts_from_it(twin, files, imported):
    run, config = imported
    assert (run / "config.toml").is_file()
    cfg = config_lib.load(run / "config.toml")
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    tx = make_optimizer(cfg, 1)
    params, batch_stats, meta = load_model_state(run, abstract_state(cfg, tx, mesh))
    assert meta["layout"] == "smp"
    x = image((1, 32, 32, 3), seed=7)
    logits, _ = forward(nnx.merge(graphdef_of(cfg), params, batch_stats), jnp.asarray(x))
    assert_close(logits, torch_logits(twin, x))
    # Training from it: a fresh state takes the imported parameters, from the folder or the file.
    fresh = create_state(cfg, tx, mesh)
    for source in (run, files / "unet.safetensors"):
        start = config_lib.load_from_dict(config_lib.to_dict(cfg), [f"model.pretrained={source}"])
        state = apply_pretrained(start, fresh, tx, mesh)
        same = jax.tree.map(lambda a, b: np.allclose(np.asarray(a), np.asarray(b)), state.params, params)
        assert all(jax.tree.leaves(same))
    with pytest.raises(JaxsegError, match="not empty"):
        import_weights(files / "unet.pth", run, config=str(config))


def test_predict_uses_the_imported_folder_and_the_command_reports_a_misfit(files, imported, tmp_path):
    from typer.testing import CliRunner

    from jaxseg import cli
    from jaxseg.data import phantom
    run, config = imported
    runner = CliRunner()
    phantom.write_phantoms(tmp_path / "data", 1, seed=3, shape=(32, 32, 20))
    out = tmp_path / "seg.nii.gz"
    predicted = runner.invoke(cli.app, ["predict", str(tmp_path / "data" / "Phantom_3_000"), "--checkpoint", str(run),
                                        "--out", str(out)])
    assert predicted.exit_code == 0, predicted.output
    assert out.is_file()
    bad = runner.invoke(cli.app, ["import-weights", str(files / "unet.pth"), "--out", str(tmp_path / "bad"),
                                  "--config", str(config), "--set", 'data.modalities=["flair"]'])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and bad.output.count("\n") == 1
    assert "unet.pth: encoder.conv1.weight" in bad.output and "pseudo_rgb" in bad.output


def test_import_without_config_reads_channels_and_classes_off_the_file(files, tmp_path):
    result = import_weights(files / "unet.safetensors", tmp_path / "run", overrides=[
        "model.features=[4, 6, 8, 8, 12]", "model.encoder_depths=[1, 2, 1, 1]", "model.decoder_features=[8, 8, 6, 4, 4]"])
    # A 3-channel stem is RGB: one modality as pseudo-RGB; 3 head channels are the BraTS regions.
    assert result.cfg.in_channels == 1 and result.cfg.model.input_mode == "pseudo_rgb"
    assert result.cfg.data.target == "regions"


def mutated(files, tmp_path, change) -> str:
    tensors = {k: torch.from_numpy(v.copy()) for k, v in torch_import.read_state_dict(files / "unet.pth").items()}
    change(tensors)
    path = tmp_path / "changed.pth"
    torch.save(tensors, path)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("decoder.blocks.2.conv1.1.running_var"), r"1 missing keys \(decoder.blocks.2.conv1.1.running_var\)"),
    (lambda t: t.update({"decoder.extra.weight": torch.zeros(1)}), r"1 unexpected keys \(decoder.extra.weight\)"),
    (lambda t: t.update({"decoder.blocks.4.conv2.0.weight": torch.zeros(4, 4, 1, 1)}),
     r"decoder.blocks.4.conv2.0.weight has shape \(4, 4, 1, 1\), the configured model needs \(4, 4, 3, 3\)"),
    (lambda t: t.update({"encoder.conv1.weight": torch.zeros(4, 4, 7, 7)}), r"reads 4 input channels.*pseudo_rgb"),
    (lambda t: t.update({"segmentation_head.0.weight": torch.zeros(1, 4, 3, 3)}), r"predicts 1 channels"),
])
def test_a_file_that_does_not_fit_names_the_file_and_the_key(files, tmp_path, change, message):
    path = mutated(files, tmp_path, change)
    model = ours()
    with pytest.raises(JaxsegError, match=message) as error:
        torch_import.load_into(model, torch_import.read_state_dict(path), str(path))
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_bfloat16_safetensors_read_as_torch_widens_them(twin, tmp_path):
    """PyTorch checkpoints are often bfloat16: read as float32 equal to torch's own widening."""
    halved = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in twin.state_dict().items()}
    safetensors.torch.save_file(halved, tmp_path / "bf16.safetensors")
    tensors = torch_import.read_state_dict(tmp_path / "bf16.safetensors")
    assert set(tensors) == set(halved)
    for key, value in halved.items():
        expected = (value.float() if value.is_floating_point() else value).numpy()
        assert tensors[key].dtype == expected.dtype and np.array_equal(tensors[key], expected), key


def test_unreadable_files_are_one_line_errors(files, tmp_path, monkeypatch):
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((files / "unet.safetensors").read_bytes()[:-100])
    with pytest.raises(JaxsegError, match=r"cut.safetensors: not a readable safetensors file \(.*not fully covered"):
        torch_import.read_state_dict(truncated)
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("hello")
    with pytest.raises(JaxsegError, match="cannot read as a PyTorch state dict"):
        torch_import.read_state_dict(not_weights)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(JaxsegError, match="nor a torchvision ResNet"):
        torch_import.load_into(ours(), torch_import.read_state_dict(other), str(other))
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(JaxsegError, match="pip install torch"):
        torch_import.read_state_dict(files / "unet.pth")
    assert torch_import.read_state_dict(files / "unet.safetensors")  # needs no torch

