"""`jaxseg demo`: the whole product on built-in synthetic data, no download.

Phantoms -> a short training run -> predictions for the held-out test cases -> evaluation
against their ground truth -> an explain report of one held-out case; prints where every
result is. Everything goes to ``out``; the model is also saved as a model folder in the per-user
folder (:func:`jaxseg.home.demo_model_dir`), which ``--checkpoint demo`` selects from anywhere.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from jaxseg import config as config_lib
from jaxseg.data import split


DEMO_CARD = {
    "description": "the model of `jaxseg demo`: learned synthetic phantoms, meaningless on real MRI",
    "limits": ["trained on synthetic phantoms only; for trying the commands, not for real scans"],
    "license": "Apache-2.0 (jaxseg's own; no external data)",
}


def run_demo(out: str | Path, *, smoke: bool = False, say: Callable[[str], None] = print) -> dict[str, Path]:
    """Run the demo into ``out``; returns the paths of what it made. ``smoke`` shrinks every size
    so the plumbing is checked in seconds (the numbers then mean nothing)."""
    from jaxseg.eval.run import evaluate_folders
    from jaxseg.explain.run import ExplainSettings, explain
    from jaxseg.infer.predict import predict
    from jaxseg.train.loop import train

    out = Path(out).absolute()
    cfg = config_lib.load("demo", config_lib.smoke_overrides() if smoke else ())
    run = out / "run"
    say(f"[1/4] training `{cfg.name}` on {cfg.data.phantom_cases} synthetic cases in {run}")
    started = time.perf_counter()
    result = train(cfg, run)
    say(f"      {result.steps} steps in {time.perf_counter() - started:.0f} s; "
        f"best validation Dice {result.best_dice:.3f}")

    splits = split.load_manifest(run / "splits.json")
    held_out = splits["test"] or splits["val"]
    predictions = out / "predictions"
    say(f"[2/4] predicting {len(held_out)} held-out case{'s' if len(held_out) != 1 else ''} into {predictions}")
    predict([run / "phantoms" / case_id for case_id in held_out], run, predictions)

    evaluation = out / "evaluation"
    say(f"[3/4] evaluating against the phantoms' ground truth into {evaluation}")
    summary = evaluate_folders(predictions, run / "phantoms", evaluation)
    from rich.console import Console
    Console(stderr=True).print(summary.render())

    report = out / "report.html"
    say(f"[4/4] explaining {held_out[0]}: Grad-CAM, MC dropout, faithfulness, captions")
    explain(run / "phantoms" / held_out[0], run, report,
            ExplainSettings(mc_samples=4) if smoke else ExplainSettings())

    # Saved where `--checkpoint demo` finds it from any folder (float32: it is small anyway).
    from jaxseg import home
    from jaxseg.model_export import export_model
    model = export_model(run, home.demo_model_dir(), name="demo", dtype="float32", card=DEMO_CARD)
    say(f"      saved the model as `--checkpoint demo` in {model}")

    made = {"run": run, "metrics": run / "metrics.csv", "curves": run / "training_curves.png",
            "predictions": predictions, "evaluation": evaluation / "summary.csv",
            "gallery": evaluation / "gallery.png", "report": report, "model": model}
    say("done. Results:")
    for name, path in made.items():
        say(f"  {name:12s} {path}")
    return made
