"""The command line as a user meets it: one clear line and exit 2 for bad input, no traceback."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jaxseg import cli
from tests.data.test_bad_inputs import BAD_INPUTS

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda b: b.name)
def test_data_inspect_reports_each_bad_input_in_one_line(bad, tmp_path):
    given, culprit = bad.make(tmp_path)
    root = given if given.is_dir() or not bad.in_dataset else tmp_path
    result = invoke("data", "inspect", root)
    assert result.exit_code == 2, result.output  # a dataset with problems is a user error, like any other
    assert "Traceback" not in result.output
    assert culprit.name in result.output.replace("\n", "")
    if not bad.in_dataset:  # nothing to tabulate: one error line
        assert result.exit_code == 2
        assert result.output.startswith("error: ") and result.output.count("\n") == 1


@pytest.mark.parametrize("bad", [b for b in BAD_INPUTS if b.in_dataset], ids=lambda b: b.name)
def test_predict_rejects_each_bad_case_in_one_line(bad, tmp_path, smoke_run):
    given, culprit = bad.make(tmp_path / "data")
    out = tmp_path / "out" / "seg.nii.gz"
    result = invoke("predict", given, "--checkpoint", smoke_run, "--out", out)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if not line.startswith("predicting ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert culprit.name in lines[0]
    assert not out.exists() and not list(out.parent.glob("*")) if out.parent.exists() else True


def test_bad_config_value_is_one_line(tmp_path):
    result = invoke("train", "--config", "demo", "--set", "train.epochs=0", "--workdir", tmp_path)
    assert result.exit_code == 2
    assert result.output == f"error: {ROOT / 'configs' / 'demo.toml'}: train.epochs: must be at least 1; got 0\n" \
        or "train.epochs: must be at least 1" in result.output and result.output.count("\n") == 1


def test_predict_without_a_run_folder(tmp_path):
    result = invoke("predict", tmp_path, "--checkpoint", tmp_path / "nothing", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "no such file or folder" not in result.output
    assert "not a jaxseg run folder" in result.output or "no BraTS cases" in result.output


def test_phantom_then_inspect(tmp_path):
    result = invoke("phantom", "--out", tmp_path / "p", "--cases", 2, "--seed", 3, "--shape", 32, 32, 20)
    assert result.exit_code == 0, result.output
    result = invoke("data", "inspect", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert "Phantom_3_000" in result.output and "Phantom_3_001" in result.output


def test_inspect_real_brats2018(real_data):
    result = invoke("data", "inspect", real_data / "brats2018")
    assert result.exit_code == 0, result.output
    assert result.output.count("Brats18_") >= 16
    result = invoke("data", "inspect", real_data / "brats2023-example")
    assert result.exit_code == 0 and "2023" in result.output


def test_console_script_prints_no_traceback():
    """The installed `jaxseg` entry point, in a real process."""
    exe = shutil.which("jaxseg", path=str(Path(sys.executable).parent)) or shutil.which("jaxseg")
    if exe is None:
        pytest.skip("the jaxseg console script is not installed")
    # A short folder: the table's problem column wraps long paths (pytest-xdist's tmp_path is
    # longer), and the file name must be found whole.
    with tempfile.TemporaryDirectory(prefix="jx") as short:
        bad = Path(short) / "Broken_1"
        bad.mkdir()
        (bad / "Broken_1_flair.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
        proc = subprocess.run([exe, "data", "inspect", short], capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Broken_1_flair.nii.gz" in proc.stdout + proc.stderr, proc.stdout


def test_an_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("phantom", "--out", blocker / "sub", "--cases", 1, "--shape", 16, 16, 16)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output


def test_evaluate_writes_figures_unless_told_not_to(tmp_path):
    from tests.test_evaluate import labels_2021, write
    write(tmp_path / "ref" / "Case_A" / "Case_A_seg.nii.gz", labels_2021(0))
    write(tmp_path / "pred" / "Case_A.nii.gz", labels_2021(1))
    plain = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "plain",
                   "--no-figures")
    assert plain.exit_code == 0, plain.output
    assert not (tmp_path / "plain" / "gallery.png").exists() and (tmp_path / "plain" / "summary.csv").is_file()
    drawn = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "drawn")
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "drawn" / "gallery.png").is_file() and (tmp_path / "drawn" / "panels" / "Case_A.png").is_file()
