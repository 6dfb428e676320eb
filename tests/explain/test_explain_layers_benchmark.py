"""benchmarks/explain_layers.py --quick runs on a phantom and prints one row per layer."""
import importlib.util
from pathlib import Path

from flax import nnx

from jaxseg import config as config_lib
from jaxseg.models.registry import build_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "explain_layers.py"


def test_quick_mode_prints_every_layer(capsys):
    spec = importlib.util.spec_from_file_location("explain_layers", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| layer")}
    cfg = config_lib.load("demo", list(config_lib.SMOKE_OVERRIDES))
    names = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0))).activation_names
    assert list(rows) == list(names)
    for cells in rows.values():
        assert len(cells) == len(script.COLUMNS)
        for cell in cells[:2]:  # mass shares
            assert cell.strip() == "n/a" or 0.0 <= float(cell) <= 1.0
