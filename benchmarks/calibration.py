"""Temperature scaling of a model, measured honestly: leave one case out, then fit on all.

    python benchmarks/calibration.py                      # the bundled brats2018_unet, its 4 val cases
    python benchmarks/calibration.py --model runs/real_brats2018 --mc-samples 20 --write

The model's passes (``--mc-samples`` MC-dropout passes, what ``jaxseg explain`` reports) run
once per case (:func:`jaxseg.explain.calibrate.case_logits`); every fit reuses those logits.
For each case: fit the per-region temperatures on the other cases, measure the ECE of the
pass-mean probabilities on the held-out one before and after (all brain voxels, the relevant
voxels of the issue (p > 0.01 or inside the region, by the probabilities scored) and the voxels
relevant before calibration). Then fit on all cases: that is the shipped calibration.json
(``--write`` puts it into the model folder, as ``jaxseg calibrate`` would). Prints a Markdown
table and writes ``--out`` (JSON). Needs the real data (``../shared/data/brats2018``); says so
and exits 0 without it.
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
KEYS = ("all_brain", "relevant", "relevant_uncalibrated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "jaxseg" / "bundled" / "brats2018_unet"))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write calibration.json into the model folder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "calibration_brats2018.json"))
    parser.add_argument("--keep-logits", help="also pickle the collected logits here (to refit without new passes)")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"no real data at {args.data}; nothing measured")
        return
    from jaxseg import xla_flags
    xla_flags.apply()
    import jax
    import numpy as np
    from jaxseg import target as target_lib
    from jaxseg.explain import calibrate
    from jaxseg.infer.predict import Predictor

    predictor = Predictor(args.model, calibrated=False)
    calibrate.check_calibratable(predictor)
    regions = target_lib.target_for(predictor.cfg).channel_names
    cases = calibrate.calibration_cases(predictor, args.data)
    key = jax.random.key(args.seed)
    collected, seconds = [], {}
    for i, case in enumerate(cases):
        start = time.perf_counter()
        collected.append(calibrate.case_logits(predictor, case, args.mc_samples, jax.random.fold_in(key, i)))
        seconds[case.case_id] = round(time.perf_counter() - start, 1)
        print(f"{case.case_id}: {args.mc_samples} passes in {seconds[case.case_id]} s", flush=True)

    if args.keep_logits:
        import pickle
        with open(args.keep_logits, "wb") as f:
            pickle.dump(collected, f)
    held_out = {}
    for i, case in enumerate(collected):
        others = collected[:i] + collected[i + 1:]
        temperature = calibrate.fit_temperatures(others)
        held_out[case.case_id] = {
            "temperature": dict(zip(regions, np.round(temperature, 4).tolist())),
            "before": calibrate.ece_table([case], regions),
            "after": calibrate.ece_table([case], regions, temperature)}
    mean = {when: {r: {k: _mean([held_out[c][when][r][k] for c in held_out]) for k in KEYS} for r in regions}
            for when in ("before", "after")}
    result = calibrate.calibration_result(collected, regions, args.mc_samples)
    if args.write:
        print(f"wrote {calibrate.write_calibration(predictor.run, result)}")
    report = {"model": str(args.model), "mc_samples": args.mc_samples, "seed": args.seed,
              "pass_seconds": seconds, "leave_one_out": held_out, "leave_one_out_mean": mean,
              "fitted_on_all": result,
              "command": f"python benchmarks/calibration.py --mc-samples {args.mc_samples}"
                         + (" --write" if args.write else "")}
    with open(args.out, "w") as f:  # a benchmark's own record, not a product file
        json.dump(report, f, indent=2)
    print(_table(held_out, mean, result, regions))


def _mean(values):
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 5) if values else None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(held_out: dict, mean: dict, result: dict, regions) -> str:
    lines = ["| held-out case | region | T (fit on the others) | ECE all brain before -> after | "
             "ECE relevant before -> after | ECE relevant-before-set before -> after |",
             "|---|---|---|---|---|---|"]
    for case, row in list(held_out.items()) + [("**mean**", None)]:
        for r in regions:
            b, a = (row["before"][r], row["after"][r]) if row else (mean["before"][r], mean["after"][r])
            t = f"{row['temperature'][r]:.3f}" if row else ""
            lines.append(f"| {case} | {r} | {t} | " + " | ".join(f"{_fmt(b[k])} -> {_fmt(a[k])}" for k in KEYS) + " |")
    lines.append("")
    lines.append("fitted on all cases (shipped): " + ", ".join(f"{r} T = {t:.3f}" for r, t in result["temperature"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
