"""Inference-time steps on held-out real cases: flip test-time augmentation and post-processing.

    python benchmarks/postprocess.py --model runs/real_brats2018 [--cases A,B] [--out DIR]

One trained model, the 4 validation cases of ``configs/real_brats2018.toml`` (or ``--cases``):
probabilities with and without ``infer.tta_flips`` (each computed once), then every combination
of the post-processing steps ``jaxseg predict`` offers (small tumor components removed,
``--min-component-ml``; small total enhancing tumor relabelled necrosis, ``--min-et-ml``),
scored on whole volumes with ``jaxseg evaluate``'s code. Prints a Markdown table (mean over the
cases) and writes it with the per-case rows to ``<out>/postprocess.json``. Needs the real data
(``../shared/data/brats2018``); says so and exits 0 without it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "brats2018"
COMPONENT_ML = (0.0, 0.5)
ET_ML = (0.0, 0.25, 0.5, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a run folder, a model folder or a bundled model's name")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cases", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "postprocess")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"real data not found at {args.data}; this benchmark needs ../shared/data/brats2018")
        return 0

    from jaxseg import xla_flags
    xla_flags.apply()  # the flags the jaxseg command runs with, before jax starts
    import numpy as np
    from jaxseg import config as config_lib
    from jaxseg.data import brats
    from jaxseg.eval.volumes import score_classes
    from jaxseg.infer.predict import Predictor, relabel_small_enhancing, remove_small_components
    from jaxseg.model_store import resolve_checkpoint

    model = resolve_checkpoint(args.model)
    cases = [c for c in args.cases.split(",") if c] or list(config_lib.load("real_brats2018").data.val_cases)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tta_model = Path(tmp) / "tta"
        shutil.copytree(model, tta_model)
        text = (tta_model / "config.toml").read_text()
        (tta_model / "config.toml").write_text(text.replace("tta_flips = false", "tta_flips = true"))
        predictors = {False: Predictor(model), True: Predictor(tta_model)}
        for case_id in cases:
            image, truth, props = brats.load_case(brats.case_from_path(args.data / case_id),
                                                  predictors[False].modalities)
            for tta, predictor in predictors.items():
                started = time.perf_counter()
                _, classes = predictor.predict_image(image)
                seconds = time.perf_counter() - started
                for component_ml, et_ml in itertools.product(COMPONENT_ML, ET_ML):
                    processed = relabel_small_enhancing(
                        remove_small_components(classes, props.spacing, component_ml), props.spacing, et_ml)
                    for row in score_classes(processed, truth, props.spacing, case_id):
                        rows.append({**row, "tta": tta, "min_component_ml": component_ml, "min_et_ml": et_ml,
                                     "seconds": seconds})
                print(f"{case_id}: tta={tta} {seconds:.1f} s", flush=True)

    lines = ["| TTA | min component mL | min ET mL | WT Dice | TC Dice | ET Dice | WT HD95 | TC HD95 | ET HD95 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for tta, component_ml, et_ml in itertools.product((False, True), COMPONENT_ML, ET_ML):
        def mean(region, metric):
            return float(np.mean([r[metric] for r in rows if r["region"] == region and r["tta"] == tta
                                  and r["min_component_ml"] == component_ml and r["min_et_ml"] == et_ml]))
        lines.append(f"| {'yes' if tta else 'no'} | {component_ml:g} | {et_ml:g} | "
                     + " | ".join(f"{mean(g, 'dice'):.3f}" for g in ("WT", "TC", "ET")) + " | "
                     + " | ".join(f"{mean(g, 'hd95'):.1f}" for g in ("WT", "TC", "ET")) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "postprocess.json").write_text(json.dumps({"model": str(model), "cases": cases, "rows": rows,
                                                           "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
