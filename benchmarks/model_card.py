"""The numbers of a model card, measured on held-out real cases; optionally bundles the model.

    python benchmarks/model_card.py --model runs/real_brats2018 [--cases A,B,...] [--out DIR]
    python benchmarks/model_card.py --model brats2018_unet          # a bundled model, by name
    python benchmarks/model_card.py --model runs/real_brats2018 --bundle jaxseg/bundled/brats2018_unet

For each held-out case (default: the 4 validation cases named in ``configs/real_brats2018.toml``)
it runs ``jaxseg predict`` and ``jaxseg explain`` (the product path: segmentation, Grad-CAM, 20
MC-dropout passes, faithfulness, captions, report), timing each, then scores

- the predicted label maps with ``jaxseg evaluate``'s code (Dice, HD95, lesion-wise Dice), per
  case and as the mean over the cases;
- the calibration of the probabilities of each region, explain's MC-dropout mean (``_mc_mean``)
  and its deterministic map (``_prob``): the binned expected calibration error
  (jaxseg.explain.calibration, 15 bins), pooled over the cases, over all brain voxels and over
  the voxels that matter (probability > 0.01 or inside the reference region).

Prints a Markdown table and writes ``<out>/model_card.json``. With ``--bundle DIR`` the model
is first exported (float16, checked on the first case) to ``DIR``, the measurements run on that
exported folder, exactly as users load it, and land in its ``card.json``. Needs the real data
(``../shared/data/brats2018``); says so and exits 0 without it.
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
REGIONS = ("WT", "TC", "ET")
MODALITIES = ("flair", "t1", "t1ce", "t2")

# What a card says beyond the measurements (docs/model_card.md is the long form).
CARD_FIELDS = {
    "description": "2D U-Net (16..256 features, dropout 0.2 in the decoder, trained with deep supervision on "
                   "two decoder levels) on axial slices of the four BraTS sequences, predicting the overlapping "
                   "BraTS regions WT, TC and ET",
    "license": "weights: Apache-2.0 like jaxseg; trained on BraTS 2018 data, which is for research use only",
    "citation": "Menze et al., IEEE TMI 2015 (doi:10.1109/TMI.2014.2377694); Bakas et al., Scientific Data "
                "2017 (doi:10.1038/sdata.2017.117); Bakas et al., arXiv:1811.02629",
    "limits": ["research use only, not a medical device", "adult glioma (BraTS 2018); 12 training cases",
               "expects co-registered, skull-stripped, 1 mm isotropic MRI as BraTS distributes it",
               "validated on 4 cases only: the scores are a sanity check, not a benchmark"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a run folder, a model folder or a bundled model's name")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: the config's val_cases)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "model_card")
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="export the model here first (a model folder) and write the card into it")
    parser.add_argument("--name", default="brats2018_unet", help="the bundled model's name (with --bundle)")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"real data not found at {args.data}; this benchmark needs ../shared/data/brats2018")
        return 0

    from jaxseg import xla_flags
    xla_flags.apply()  # the flags the jaxseg command runs with, before jax starts
    from jaxseg import config as config_lib
    from jaxseg.model_export import export_model
    from jaxseg.model_store import CARD_FILE, resolve_checkpoint
    from jaxseg.files import write_text

    cases = [c for c in args.cases.split(",") if c] or list(config_lib.load("real_brats2018").data.val_cases)
    model = resolve_checkpoint(args.model)
    if args.bundle is not None:
        run_config = config_lib.load(model / "config.toml")
        splits = json.loads((model / "splits.json").read_text())
        card = {**CARD_FIELDS, "provenance": {
            "trained_on": f"BraTS 2018 training data: {len(splits['train'])} cases for training, "
                          f"{len(splits['val'])} held out for validation ({', '.join(splits['val'])})",
            "exported_from": f"a run of `jaxseg train --config {run_config.name}` (benchmarks/real_brats.py)"}}
        model = export_model(model, args.bundle, name=args.name, dtype="float16", card=card,
                             check_input=args.data / cases[0], say=print)
        # A shipped config names no folder of this machine (inference never reads data.root).
        shipped = config_lib.to_dict(config_lib.load(model / "config.toml"))
        shipped["data"]["root"] = ""
        write_text(model / "config.toml", config_lib.dumps(config_lib.load_from_dict(shipped)))
    measured = measure(model, args.data, cases, args.out, args.mc_samples)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_card.json").write_text(json.dumps(measured, indent=2))
    print(json.dumps(measured, indent=2))
    print_table(measured)
    if args.bundle is not None:
        card = json.loads((model / CARD_FILE).read_text())
        scores = measured["scores"]
        card["provenance"]["summary"] = (
            f"BraTS 2018, {card['provenance']['cases'].get('train')} training cases; whole-volume Dice on "
            f"{len(cases)} held-out cases WT {scores['WT_dice']:.3f}, TC {scores['TC_dice']:.3f}, "
            f"ET {scores['ET_dice']:.3f}")
        card["provenance"]["validation"] = {
            "how": f"whole volumes of {len(cases)} held-out cases in their own geometry, scored with "
                   "`jaxseg evaluate`'s code (benchmarks/model_card.py)",
            "dice": {r: scores[f"{r}_dice"] for r in REGIONS}, "hd95_mm": {r: scores[f"{r}_hd95"] for r in REGIONS},
            **measured}
        write_text(model / CARD_FILE, json.dumps(card, indent=2) + "\n")
        print(f"bundled {model}")
    return 0


def measure(model: Path, data: Path, cases: list[str], out: Path, mc_samples: int) -> dict:
    import nibabel as nib
    import numpy as np
    from jaxseg.data import brats
    from jaxseg.eval.run import evaluate_folders
    from jaxseg.explain import calibration
    from jaxseg.explain.run import ExplainSettings, explain
    from jaxseg.infer.predict import Predictor, predict

    explained, predicted = out / "explain", out / "predict"
    predictor = Predictor(model)  # restored and compiled once, as the web app does
    explain_seconds, predict_seconds = {}, {}
    for case_id in cases:
        started = time.perf_counter()
        predict([data / case_id], model, predicted)
        predict_seconds[case_id] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        explain(data / case_id, model, explained, ExplainSettings(mc_samples=mc_samples), predictor=predictor)
        explain_seconds[case_id] = round(time.perf_counter() - started, 1)
        print(f"{case_id}: predict {predict_seconds[case_id]} s, explain {explain_seconds[case_id]} s", flush=True)

    summary = evaluate_folders(predicted, data, out / "evaluation", figures=False)
    scores = {f"{region}_{metric}": round(summary.stat(region, metric), 4)
              for region in REGIONS for metric in ("dice", "hd95", "lesion_dice")}
    per_case = {case_id: {row["region"]: {"dice": round(row["dice"], 4), "hd95": round(row["hd95"], 2)}
                          for row in summary.per_case if row["case"] == case_id} for case_id in cases}

    # Calibration pooled over the cases: reliability bins summed, the ECE from the sums.
    pooled: dict[str, list] = {}
    for case_id in cases:
        case = brats.case_from_path(data / case_id)
        # The maps are written in the input's own voxel order: read the reference in that order too.
        masks = brats.region_masks(brats.to_internal(np.asarray(nib.load(case.seg).dataobj), case.naming, case.seg))
        brain = np.asarray(nib.load(case.images["flair"]).dataobj) != 0
        for source in ("mc_mean", "prob"):
            probs = np.asarray(nib.load(explained / f"{case_id}_{source}.nii.gz").dataobj, np.float32)
            for k, region in enumerate(REGIONS):
                p, y = probs[..., k], masks[..., k]
                pooled.setdefault(f"{source}:{region}:brain", []).append(calibration.reliability_bins(p, y, brain))
                relevant = calibration.relevant_mask(p, y, within=brain)
                pooled.setdefault(f"{source}:{region}:relevant", []).append(
                    calibration.reliability_bins(p, y, relevant))
    ece = {}
    for key, parts in pooled.items():
        count = sum(b["count"] for b in parts)
        confidence = sum(np.nan_to_num(b["confidence"]) * b["count"] for b in parts)
        accuracy = sum(np.nan_to_num(b["accuracy"]) * b["count"] for b in parts)
        full = count > 0
        ece[key] = round(float(np.abs(accuracy[full] - confidence[full]).sum() / count.sum()), 4)
    return {"cases": cases, "mc_samples": mc_samples, "scores": scores, "per_case": per_case, "ece": ece,
            "explain_seconds": explain_seconds, "predict_seconds": predict_seconds,
            "explain_seconds_median": float(np.median(list(explain_seconds.values()))),
            "predict_seconds_median": float(np.median(list(predict_seconds.values())))}


def print_table(measured: dict) -> None:
    scores, ece = measured["scores"], measured["ece"]
    print("\n| | WT | TC | ET |\n|---|---:|---:|---:|")
    for metric, label in (("dice", "Dice"), ("hd95", "HD95 (mm)"), ("lesion_dice", "lesion-wise Dice")):
        print(f"| {label} | " + " | ".join(f"{scores[f'{r}_{metric}']:.3f}" for r in REGIONS) + " |")
    for source, label in (("mc_mean", "MC-dropout mean"), ("prob", "deterministic")):
        for where in ("brain", "relevant"):
            print(f"| ECE, {label}, {where} voxels | " + " | ".join(
                f"{ece[f'{source}:{r}:{where}']:.3f}" for r in REGIONS) + " |")


if __name__ == "__main__":
    sys.exit(main())
