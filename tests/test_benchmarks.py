"""The speed benchmarks (benchmarks/): their ``--quick`` modes run end to end, so the scripts
cannot rot, and the harness's "against the fastest torch variant" summary is the arithmetic it
claims. Speed itself is shown by the full benchmarks (docs/speed.md), never by a test."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402

# (script and arguments, the variants its table must hold). torch.compile runs in one of them
# only, 2D inference (tens of seconds of compiling a tiny model; the train step's takes minutes
# on 2 cores).
QUICK_RUNS = {
    # bf16 is exercised in inference_2d (and by tests/train/test_precision.py), xla-conv here.
    "train_step_2d": (["train_step.py", "--only", "jax xla-conv,jax,torch eager,torch eager CL"],
                      ["jax xla-conv", "jax", "torch eager", "torch eager CL"]),
    "train_step_3d": (["train_step.py", "--3d"], ["jax", "torch eager", "torch eager CL"]),
    "inference_2d": (["inference.py", "--only-2d", "--bf16", "--only",
                      "jax,jax bf16,torch eager,torch eager CL,torch.compile"],
                     ["jax", "jax bf16", "torch eager", "torch eager CL", "torch.compile"]),
    "inference_3d": (["inference.py", "--only-3d"], ["jax", "torch eager", "torch eager CL"]),
}
# A row: name, median, min, max, then the speed against the reference ("-" when it was not run).
ROW = re.compile(r"^(?P<name>\S.*?)\s+(?P<median>\d+\.\d{3})\s+\d+\.\d{3}\s+\d+\.\d{3}\s+(\d+\.\d+x|-)\s")
SUMMARY = re.compile(r"^  (?P<name>\S.*?)\s+(?P<ratio>\d+\.\d{2})x faster")


def _parse(stdout: str) -> tuple[dict[str, float], dict[str, float]]:
    """The table's medians and the summary's ratios, by variant name."""
    medians, ratios = {}, {}
    for line in stdout.splitlines():
        if (m := ROW.match(line)):
            medians[m["name"]] = float(m["median"])
        elif (m := SUMMARY.match(line)):
            ratios[m["name"]] = float(m["ratio"])
    return medians, ratios


@pytest.mark.slow
@pytest.mark.parametrize("run", list(QUICK_RUNS))
def test_quick_mode_runs_every_variant(run):
    pytest.importorskip("torch")
    args, variants = QUICK_RUNS[run]
    # The benchmark runs as a user runs it: not with the test suite's emulated devices.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    compile = [] if "torch.compile" in variants else ["--no-compile"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:], "--quick",
                           "--reps", "1", *compile], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not measured" not in done.stdout, done.stdout[-3000:]
    medians, ratios = _parse(done.stdout)
    assert sorted(medians) == sorted(variants), done.stdout[-3000:]
    assert all(t > 0 for t in medians.values())
    # The summary: the fastest torch median over each jax median, to the rounding of the table
    # (medians to 0.0005 s, each a relative error of 0.0005 / median) and of the ratio (0.005).
    best = min(t for name, t in medians.items() if name.startswith("torch"))
    jax_names = [name for name in variants if not name.startswith("torch")]
    assert sorted(ratios) == sorted(jax_names)
    for name in jax_names:
        ratio = best / medians[name]
        rounding = ratio * (0.0005 / best + 0.0005 / medians[name]) + 0.005
        assert abs(ratios[name] - ratio) <= rounding * 1.01


def test_summary_is_against_the_fastest_torch_variant(capsys):
    """Ratios against the smallest torch median, memory against torch eager's growth."""
    def result(name, times, peak, base):
        return harness.Result(name, times=list(times), info={"peak_mb": peak, "base_mb": base})
    results = [result("jax", [2.0, 4.0, 3.0], 900.0, 300.0),
               result("torch eager", [5.0, 6.0, 7.0], 700.0, 200.0),
               result("torch eager CL", [1.5, 1.0, 2.0], 600.0, 200.0),
               harness.Result("torch.compile", error="setup did not finish within 1 s")]
    assert harness.fastest(results).name == "torch eager CL"
    harness.print_against_fastest(results)
    out = capsys.readouterr().out
    assert "torch eager CL (1.500 s" in out
    _, ratios = _parse(out)
    assert ratios == {"jax": pytest.approx(1.5 / 3.0, abs=0.005)}
    assert f"({600 / 500:.2f}x torch eager's)" in out


def test_no_summary_without_a_measured_torch_variant(capsys):
    results = [harness.Result("jax", times=[1.0]), harness.Result("torch eager", error="failed")]
    assert harness.fastest(results) is None
    harness.print_against_fastest(results)
    assert capsys.readouterr().out == ""
