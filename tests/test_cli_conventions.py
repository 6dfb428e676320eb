"""The command line's conventions: `--version`, `--devices`, help pages that show switches as switches, one
exit-code convention (0 done, 2 user error, 130 interrupted), configs found by name from any
folder, config errors that name the file, the key and what is expected."""
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import jaxseg
from jaxseg import xla_flags
from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.errors import JaxsegError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def _commands(group, path=()):
    """Every (command path, click command) below the root, groups included."""
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, path + (name,))


COMMANDS = list(_commands(typer.main.get_command(cli.app)))


def test_version_is_the_package_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.startswith(f"jaxseg {jaxseg.__version__} (jax {metadata.version('jax')}, ")
    assert metadata.version("jaxseg") == jaxseg.__version__  # pyproject reads jaxseg.__version__


def test_devices_lists_what_jax_uses():
    import jax
    result = invoke("--devices")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"backend: {jax.default_backend()}; ") and f"{jax.device_count()} device(s)" in first
    assert all(str(d) in first for d in jax.devices())
    assert ("XLA's own" in result.output) == xla_flags.xla_cpu_convolutions()


@pytest.mark.parametrize("path,command", COMMANDS, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_help_page_shows_switches_as_switches(path, command):
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.output
    for placeholder in ("<bool>", "{"):
        assert placeholder not in text, f"jaxseg {' '.join(path)} --help shows {placeholder!r}"
    lines = text.splitlines()
    # A repeatable option takes one value at a time (--set KEY=VALUE), not a list; a variadic
    # argument shows the type of one value (<path>...).
    assert "<list[" not in text
    usage = next(line for line in lines if "Usage:" in line).strip()
    ctx = command.make_context(" ".join(("jaxseg",) + path), ["--help"], resilient_parsing=True)
    for param in command.get_params(ctx):
        if param.param_type_name == "argument":
            name = param.name.upper() + ("..." if param.nargs != 1 else "")
            assert (name if param.required else f"[{name}]") in usage.split(), usage
        elif getattr(param, "is_flag", False):
            # The row of a switch: its names, then straight to the help text, no value type.
            row = next(line for line in lines if param.opts[0] in line.split())
            after = row.split(param.opts[0], 1)[1].split()
            words = [w for w in after if w not in ("│",) and not w.startswith("-")]
            assert not words or not words[0].startswith("<"), row


def test_unknown_config_name_lists_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: names resolve inside the installed package
    result = invoke("train", "--config", "no_such_config", "--workdir", tmp_path / "run")
    assert result.exit_code == 2
    assert result.output.startswith("error: no_such_config: ") and result.output.count("\n") == 1
    assert all(name in result.output for name in SHIPPED)
    assert not (tmp_path / "run").exists()


def test_configs_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert list(config_lib.shipped_configs()) == SHIPPED
    for name in ("demo", "demo.toml", "configs/demo"):
        assert config_lib.resolve_path(name).read_text() == (ROOT / "configs" / "demo.toml").read_text()
    own = tmp_path / "mine.toml"
    own.write_text('name = "mine"\n[train]\nepochs = 2\n')
    assert config_lib.resolve_path("mine") == Path("mine.toml")  # a file here wins over the search
    assert config_lib.load("mine.toml").train.epochs == 2
    (tmp_path / "demo.toml").write_text("[train]\nepochs = 7\n")
    assert config_lib.load("demo").train.epochs == 7  # a path given is a path taken


@pytest.mark.parametrize("body,expected", [
    ("[train]\nepoch = 3\n", "unknown setting 'train.epoch' (did you mean 'train.epochs'? known here: "),
    ("[trian]\nepochs = 3\n", "unknown setting 'trian' (did you mean 'train'? "),
    ('[train]\nepochs = "three"\n', "train.epochs: must be a whole number, got 'three'"),
    ("[train]\nlearning_rate = true\n", "train.learning_rate: must be a number, got True"),
    ('[data]\nmodalities = "flair"\nimage_size = 1.5\n', "data.image_size: must be a whole number, got 1.5"),
    ("[data.augment]\nflip = 1\n", "data.augment.flip: must be true or false, got 1"),
    ("train = 3\n", "[train] must be a table"),
])
def test_config_file_errors_name_the_file_the_key_and_what_is_expected(body, expected, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(JaxsegError) as err:
        config_lib.load(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)
    result = invoke("train", "--config", path, "--workdir", tmp_path / "run")
    assert result.exit_code == 2 and result.output == f"error: {err.value}\n"


def test_exit_codes(tmp_path, monkeypatch):
    """0 done; 2 for every user error (a bad option, a bad file, a dataset with problems); 130 for
    an interrupt."""
    assert invoke("phantom", "--out", tmp_path / "p", "--cases", 1, "--shape", 16, 16, 16).exit_code == 0
    assert invoke("data", "inspect", tmp_path / "p").exit_code == 0
    assert invoke("phantom", "--no-such-option").exit_code == 2  # click's usage errors
    assert invoke("phantom", "--out", tmp_path / "q", "--cases", 0).exit_code == 2
    assert invoke("data", "inspect", tmp_path / "missing").exit_code == 2
    case = next((tmp_path / "p").iterdir())
    next(case.glob("*_t1.nii.gz")).write_bytes(b"\x1f\x8b truncated")
    broken = invoke("data", "inspect", tmp_path / "p")
    assert broken.exit_code == 2 and "Traceback" not in broken.output

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("jaxseg.data.phantom.write_phantoms", interrupted)
    result = invoke("phantom", "--out", tmp_path / "r", "--cases", 1)
    assert result.exit_code == 130 and "interrupted" in result.output


def test_ctrl_c_exits_130_without_a_traceback(tmp_path):
    """A real SIGINT to a real `jaxseg` process, sent once it has written its first phantom."""
    out = tmp_path / "p"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXSEG_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "jaxseg.cli", "phantom", "--out", str(out), "--cases", "500",
                             "--shape", "64", "64", "48"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            # A shell ignores SIGINT in its background jobs and children inherit that
                            # (pytest run with `&`, nohup): give this one the default, as in a terminal.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120  # a bound on waiting for the first case, not a speed check
    while not (out.is_dir() and any(out.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stderr + stdout
    assert 0 < len(list(out.iterdir())) < 500


def test_compilation_cache_lives_in_the_per_user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAXSEG_NO_COMPILATION_CACHE", raising=False)
    cli._compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "home" / "cache" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    cli._compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "mine")  # the user's choice wins
