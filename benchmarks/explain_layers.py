"""Which Grad-CAM layer explains? The measures of jaxseg.explain.layer_quality, per layer.

    python benchmarks/explain_layers.py                        # the demo model on 3 phantoms
    python benchmarks/explain_layers.py --checkpoint RUN       # any slice model, on phantoms
    python benchmarks/explain_layers.py --data ../shared/data/brats2018
                                   # the bundled brats2018_unet on its 4 validation cases
    python benchmarks/explain_layers.py --quick                # an untrained toy U-Net on one
                                                               # small phantom: checks the script

For every layer of the model (``activation_names``), on each case's brain slices: the share of the
volume-normalised Grad-CAM's mass inside the predicted region (and with per-slice normalisation),
the deletion / insertion AUCs of the tumor score over every tumor slice beside a random
ranking's, and the fraction of tumor slices on which the map beats the random ranking. Means over
the cases, one table. A layer that keeps ~100 % of its mass inside the prediction restates the
segmentation; the useful default beats random on most slices with some mass outside.

The real data is never needed (``--data`` only); this script is slow on real cases (every layer's
Grad-CAM of every slice plus the curves of every tumor slice), so it is run by hand, not in CI.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("mass_inside", "mass_inside_slice_normalised", "deletion_auc", "random_deletion_auc",
           "insertion_auc", "random_insertion_auc", "deletion_beats_random", "insertion_beats_random")
HEADERS = ("mass in pred", "(per-slice norm)", "deletion AUC", "(random)", "insertion AUC", "(random)",
           "del. beats rnd", "ins. beats rnd")


def _phantom_images(cases: int, shape: tuple[int, ...], modalities: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    from jaxseg.data import phantom
    out = []
    for seed in range(cases):
        images, _ = phantom.make_phantom(1000 + seed, shape)
        out.append((f"phantom{1000 + seed}", np.stack([images[m] for m in modalities], axis=-1)))
    return out


def _real_images(data: Path, cases: list[str], modalities: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    from jaxseg.data import brats
    found = {case.case_id: case for case in brats.find_cases(data)}
    missing = [c for c in cases if c not in found]
    if missing:
        raise SystemExit(f"{data}: no case {', '.join(missing)}")
    return [(c, brats.load_case(found[c], modalities)[0]) for c in cases]


def _model(args):
    """``(graphdef, params, batch_stats, data config, modalities, target kind)``."""
    from flax import nnx
    from jaxseg import config as config_lib
    if args.quick:
        from jaxseg.models.registry import build_model
        cfg = config_lib.load("demo", list(config_lib.SMOKE_OVERRIDES))
        model = build_model(cfg, nnx.Rngs(0))
        return (*nnx.split(model, nnx.Param, nnx.BatchStat), cfg.data, config_lib.canonical_modalities(cfg),
                cfg.data.target)
    from jaxseg.infer.predict import Predictor
    from jaxseg.model_store import resolve_checkpoint
    checkpoint = args.checkpoint or ("brats2018_unet" if args.data else "demo")
    predictor = Predictor(resolve_checkpoint(checkpoint), args.batch)
    if predictor.volumetric:
        raise SystemExit(f"{checkpoint}: a 3D model; this benchmark measures slice models")
    return (predictor.graphdef, predictor.params, predictor.batch_stats, predictor.cfg.data,
            predictor.modalities, predictor.cfg.data.target)


def _print_table(title: str, rows: dict[str, dict[str, float | None]]) -> None:
    print(f"\n{title}")
    widths = [max(8, len(h)) for h in HEADERS]
    print("| layer | " + " | ".join(h.rjust(w) for h, w in zip(HEADERS, widths)) + " |")
    print("|---|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for layer, row in rows.items():
        cells = ["n/a" if row[c] is None else f"{row[c]:.3f}" for c in COLUMNS]
        print(f"| {layer} | " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="an untrained toy U-Net on one small phantom")
    ap.add_argument("--checkpoint", default=None, help="run or model folder, 'demo' or a bundled name")
    ap.add_argument("--data", type=Path, default=None,
                    help="a BraTS 2018 folder: measure on its validation cases (configs/real_brats2018.toml)")
    ap.add_argument("--cases", default="", help="comma-separated case ids with --data (default: the config's val_cases)")
    ap.add_argument("--phantoms", type=int, default=3)
    ap.add_argument("--target", default="mean", help="the Grad-CAM score (mean, predicted, predicted:TC, ...)")
    ap.add_argument("--steps", type=int, default=11, help="deletion/insertion fractions")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from jaxseg import xla_flags
    xla_flags.apply()  # the flags the jaxseg command runs with, before jax starts
    import jax
    from jaxseg import config as config_lib
    from jaxseg.data import preprocess
    from jaxseg.explain.layer_quality import layer_quality
    graphdef, params, batch_stats, data_cfg, modalities, kind = _model(args)
    if args.data:
        cases = args.cases.split(",") if args.cases else list(config_lib.load("real_brats2018").data.val_cases)
        images = _real_images(args.data, cases, modalities)
    else:
        shape = (32, 32, 20) if args.quick else (96, 96, 64)
        images = _phantom_images(1 if args.quick else args.phantoms, shape, modalities)
    steps = 3 if args.quick else args.steps

    per_case = []
    t0 = time.time()
    for name, image in images:
        prepared = preprocess.prepare_volume(image, None, data_cfg)
        slices = prepared.slices[np.flatnonzero(prepared.brain_slices)]
        started = time.time()
        per_case.append(layer_quality(graphdef, params, batch_stats, slices, jax.random.key(args.seed),
                                      target=args.target, steps=steps, target_kind=kind, batch_size=args.batch))
        print(f"{name}: {len(slices)} slices, {time.time() - started:.0f} s", flush=True)

    rows = {}
    for layer in per_case[0]:
        values = [case[layer] for case in per_case]
        rows[layer] = {c: (float(np.mean([v[c] for v in values if v[c] is not None]))
                           if any(v[c] is not None for v in values) else None) for c in COLUMNS}
    source = "untrained toy U-Net, 1 small phantom" if args.quick else (
        f"{len(images)} real validation cases" if args.data else f"{len(images)} phantoms")
    _print_table(f"Grad-CAM layers ({args.target}; {source}; means over cases; {time.time() - t0:.0f} s)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
