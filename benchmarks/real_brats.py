"""Train on 12 real BraTS 2018 cases, validate on the other 4, print WT/TC/ET Dice and HD95.

    python benchmarks/real_brats.py [--workdir runs/real_brats2018] [--set train.epochs=4 ...]
    python benchmarks/real_brats.py --models unet,resunet34,transunet,unet3d --set train.epochs=8

``--models`` compares architectures on the same split and budget, as the BraTS-Africa table did
(U-Net vs ResNet34-UNet vs TransUNet, with the 3D U-Net as a fourth row): each model trains in
``<workdir>/<model>`` with the settings of :data:`MODEL_SETUPS` on top of the config, and a table
of whole-volume metrics closes the run. Finished rows are only re-scored, so an interrupted
comparison resumes where it stopped.

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

# Each architecture's settings on top of configs/real_brats2018.toml (2D models share its data
# settings; the 3D U-Net trains on patches of the same cases).
MODEL_SETUPS = {
    "unet": (),
    "attention_unet": ("model.name=attention_unet",),
    "resunet34": ("model.name=resunet34", "model.features=[64, 64, 128, 256, 512]",
                  "model.encoder_depths=[3, 4, 6, 3]", "model.decoder_features=[256, 128, 64, 32, 16]"),
    "transunet": ("model.name=transunet", "model.transformer_layers=4", "model.transformer_heads=8",
                  "model.transformer_dim=256", "model.transformer_mlp_dim=1024"),
    # 64^3 patches, 8 per case per epoch: with train.budget_minutes=45 the NOTES.md row (576 steps
    # of 4.1 s on 2 cores); 96^3 patches left too few steps for the budget. Measured without the
    # config's deep supervision.
    "unet3d": ("model.name=unet3d", "model.features=[16, 32, 64, 128]", "model.dropout=0.1",
               "data.patch_size=64", "data.patch_mode=tumor", "data.samples_per_case=8",
               "train.batch_size=4", "train.loss=dice_focal", "model.deep_supervision=0"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "real_brats2018")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--models", default="",
                        help=f"comma-separated architectures to compare ({', '.join(MODEL_SETUPS)}); "
                             "each trains in <workdir>/<model>")
    parser.add_argument("--min-component-ml", type=float, default=0.0,
                        help="predict's small-component removal (mL); 0 = off")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"real data not found at {args.data}; this benchmark needs ../shared/data/brats2018")
        return 0
    from jaxseg import xla_flags
    xla_flags.apply()  # the flags the jaxseg command runs with, before jax starts
    if not args.models:
        run_one(args.workdir, args.data, list(args.overrides), args.min_component_ml)
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODEL_SETUPS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODEL_SETUPS)}")
    reports = {m: run_one(args.workdir / m, args.data, [*MODEL_SETUPS[m], *args.overrides],
                          args.min_component_ml) for m in models}
    print_comparison(reports, args.workdir / "comparison.md")
    return 0


def run_one(workdir: Path, data: Path, overrides: list[str], min_component_ml: float) -> dict:
    """Train (or resume) one configuration, predict the 4 validation volumes, score them."""
    import jax
    from jaxseg import config as config_lib
    from jaxseg.data import split
    from jaxseg.eval.run import evaluate_folders
    from jaxseg.infer.predict import predict
    from jaxseg.models.registry import build_model, count_params
    from jaxseg.train.loop import train
    from flax import nnx

    cfg = config_lib.load("real_brats2018", [f'data.root="{data}"', *overrides])
    print(f"devices: {jax.devices()}  config: {cfg.name} ({cfg.model.name})  workdir: {workdir}")
    started = time.perf_counter()
    result = train(cfg, workdir)
    train_seconds = time.perf_counter() - started
    params = count_params(nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0))))

    val_cases = split.load_manifest(workdir / "splits.json")["val"]
    suffix = f"_min{min_component_ml:g}ml" if min_component_ml else ""
    predictions = workdir / f"val_predictions{suffix}"
    started = time.perf_counter()
    predict([data / case_id for case_id in val_cases], workdir, predictions, min_component_ml=min_component_ml)
    predict_seconds = time.perf_counter() - started
    summary = evaluate_folders(predictions, data, workdir / f"val_evaluation{suffix}")

    from rich.console import Console
    Console().print(summary.render())
    means = {f"{region}_{metric}": round(summary.stat(region, metric), 4)
             for region in ("WT", "TC", "ET") for metric in ("dice", "hd95", "lesion_dice")}
    report = {"model": cfg.model.name, "parameters": params, "overrides": overrides, "train_cases": 12,
              "val_cases": val_cases, "steps": result.steps, "epochs": cfg.train.epochs,
              "train_minutes": round(train_seconds / 60, 1), "predict_seconds": round(predict_seconds, 1),
              "best_slice_dice": round(result.best_dice, 4), "min_component_ml": min_component_ml,
              "volume_metrics": means}
    print(json.dumps(report, indent=2))
    (workdir / f"benchmark{suffix}.json").write_text(json.dumps(report, indent=2))
    return report


def print_comparison(reports: dict[str, dict], out: Path) -> None:
    """A Markdown table of the rows, printed and written to ``out``."""
    lines = ["| model | parameters | steps | train min | WT Dice | TC Dice | ET Dice | WT HD95 | TC HD95 | ET HD95 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in reports.items():
        v = r["volume_metrics"]
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | {r['steps']} | {r['train_minutes']} | "
                     + " | ".join(f"{v[f'{g}_dice']:.3f}" for g in ("WT", "TC", "ET")) + " | "
                     + " | ".join(f"{v[f'{g}_hd95']:.1f}" for g in ("WT", "TC", "ET")) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    out.write_text(table)


if __name__ == "__main__":
    sys.exit(main())
