"""Train on 12 real BraTS 2018 cases, validate on the other 4, print WT/TC/ET Dice and HD95.

    python benchmarks/real_brats.py [--workdir runs/real_brats2018] [--set train.epochs=4 ...]

Uses ``configs/real_brats2018.toml`` (a fixed split: the 4 validation cases are named there) and
the data in ``../shared/data/brats2018``, which users do not have: the script says so and exits.
Training resumes if the workdir already holds a run (a finished run is only re-predicted and
re-scored, e.g. with ``--min-component-ml 0.5`` to drop small false-positive blobs). After training, the best checkpoint predicts
the 4 whole validation volumes in their own geometry and ``jaxseg evaluate``'s code scores them
on whole volumes (Dice, HD95 by the BraTS/medpy convention, lesion-wise Dice).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "brats2018"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "real_brats2018")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--min-component-ml", type=float, default=0.0,
                        help="predict's small-component removal (mL); 0 = off")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"real data not found at {args.data}; this benchmark needs ../shared/data/brats2018")
        return 0

    import jax
    from jaxseg import config as config_lib
    from jaxseg.data import split
    from jaxseg.evaluate import evaluate_folders
    from jaxseg.infer.predict import predict
    from jaxseg.train.loop import train

    cfg = config_lib.load("real_brats2018", [f'data.root="{args.data}"', *args.overrides])
    print(f"devices: {jax.devices()}  config: {cfg.name}  workdir: {args.workdir}")
    started = time.perf_counter()
    result = train(cfg, args.workdir)
    train_seconds = time.perf_counter() - started

    val_cases = split.load_manifest(args.workdir / "splits.json")["val"]
    suffix = f"_min{args.min_component_ml:g}ml" if args.min_component_ml else ""
    predictions = args.workdir / f"val_predictions{suffix}"
    started = time.perf_counter()
    predict([args.data / case_id for case_id in val_cases], args.workdir, predictions,
            min_component_ml=args.min_component_ml)
    predict_seconds = time.perf_counter() - started
    summary = evaluate_folders(predictions, args.data, args.workdir / f"val_evaluation{suffix}")

    from rich.console import Console
    Console().print(summary.render())
    means = {f"{region}_{metric}": round(summary.stat(region, metric), 4)
             for region in ("WT", "TC", "ET") for metric in ("dice", "hd95", "lesion_dice")}
    report = {"train_cases": 12, "val_cases": val_cases, "steps": result.steps,
              "train_minutes": round(train_seconds / 60, 1), "predict_seconds": round(predict_seconds, 1),
              "best_slice_dice": round(result.best_dice, 4), "min_component_ml": args.min_component_ml,
              "volume_metrics": means}
    print(json.dumps(report, indent=2))
    (args.workdir / f"benchmark{suffix}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
