"""Explanation speed, jaxseg against PyTorch + Captum on the same machine (issue 6).

    python benchmarks/explain.py             # 155 slices of 128 px (jaxseg's default slice size)
    python benchmarks/explain.py --quick     # small sizes, checks the script in seconds

Two tasks on the slices of one volume (155 slices, 4 modalities, the default 2D U-Net with
dropout 0.2 so Monte-Carlo dropout has something to sample), 16 slices per pass as ``jaxseg
explain`` does:

- **Grad-CAM of every slice** at layer ``dec0`` (explain's default), score = mean WT
  probability: jaxseg's ``gradcam_volume`` (one jitted ``jax.grad`` per chunk) against Captum's
  ``LayerGradCam`` on the last decoder block, upsampled bilinearly with
  ``LayerAttribution.interpolate`` and divided by each map's maximum as jaxseg does.
- **20 MC-dropout passes of the volume**: jaxseg's ``mc_dropout`` (5 passes at a time as
  ``jaxseg explain`` runs them, or ``--mc-chunk K``; 0 = all 20 in one vmap) against a torch loop of 20 passes with the dropout modules in train
  mode (batch norm in eval mode); both return mean, variance, entropy and mutual information.
  A third column, ``jax shared encoder``, is ``jaxseg.explain.mc_shared.mc_dropout_shared``:
  everything before the first dropout site (the encoder and the bottleneck's first
  convolution) once per slice batch, only the rest per pass (same keys, same statistics).

Each variant runs in its own process (benchmarks/harness.py). Captum 0.9 installs beside torch
2.13 without replacing it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import Variant, add_variant_option, env_variants, print_table, proc_status_mb, run_side_by_side  # noqa: E402


def _slices(n, size, cin, seed=0):
    import numpy as np
    return np.random.default_rng(seed).standard_normal((n, size, size, cin), dtype=np.float32)


def _chunk(mc_chunk: int):
    """``--mc-chunk`` as ``mc_dropout``'s ``chunk``: -1 = jaxseg explain's default, 0 = all."""
    if mc_chunk < 0:
        from jaxseg.explain.slices import MC_SLICE_CHUNK
        return MC_SLICE_CHUNK
    return mc_chunk or None


def jax_setup(task: str, n: int, size: int, cin: int, features: tuple, batch: int, samples: int,
              dropout: float, mc_chunk: int, shared: bool = False):
    import jax
    import numpy as np
    from flax import nnx
    from jaxseg.explain.gradcam import gradcam_volume
    from jaxseg.explain.mc_shared import mc_dropout_shared
    from jaxseg.explain.uncertainty import mc_dropout
    from jaxseg.models import conv
    from jaxseg.models.unet import UNet
    mc = mc_dropout_shared if shared else mc_dropout
    base = proc_status_mb("VmRSS")
    # The variant's JAXSEG_CONV, given to every layer as build_model does.
    model = conv.set_mode(UNet(cin, 1, features, dropout, rngs=nnx.Rngs(0)), conv.default_mode())
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    slices = _slices(n, size, cin)
    if task == "gradcam":
        def run():
            return gradcam_volume(graphdef, params, stats, slices, "dec0", "mean", target_kind="wt",
                                  batch_size=batch)
    else:
        key = jax.random.key(0)

        def run():
            out = []
            for i, start in enumerate(range(0, n, batch)):
                chunk = slices[start:start + batch]
                if len(chunk) < batch:  # one compiled program, as jaxseg explain pads
                    chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)])
                stats_ = mc(graphdef, params, stats, chunk, jax.random.fold_in(key, i), samples, "wt",
                            chunk=_chunk(mc_chunk))
                out.append({k: np.asarray(v) for k, v in stats_.items()})
            return out
    return run, {"_base_rss_mb": base}


def torch_setup(task: str, n: int, size: int, cin: int, features: tuple, batch: int, samples: int,
                dropout: float, mc_chunk: int):
    import torch
    from torch_unet import UNet
    torch.set_num_threads(os.cpu_count())
    base = proc_status_mb("VmRSS")
    torch.manual_seed(0)
    model = UNet(cin, 1, features, dropout).eval()
    slices = torch.from_numpy(_slices(n, size, cin)).permute(0, 3, 1, 2).contiguous()
    if task == "gradcam":
        from captum.attr import LayerAttribution, LayerGradCam

        def score(x):
            return torch.sigmoid(model(x)[0]).mean(dim=(1, 2, 3))

        cam = LayerGradCam(score, model.decoders[0])

        def run():
            out = []
            for start in range(0, n, batch):
                a = cam.attribute(slices[start:start + batch], relu_attributions=True)
                a = LayerAttribution.interpolate(a, (size, size), interpolate_mode="bilinear")[:, 0]
                peak = a.amax(dim=(1, 2), keepdim=True)
                out.append(torch.where(peak > 0, a / peak.clamp_min(1e-30), 0.0).detach().numpy())
            return out
    else:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.train()

        def entropy(p):
            eps = 1e-7
            p = p.clamp(eps, 1 - eps)
            return -(p * p.log() + (1 - p) * (1 - p).log())

        def run():
            out = []
            with torch.inference_mode():
                for start in range(0, n, batch):
                    x = slices[start:start + batch]
                    probs = torch.stack([torch.sigmoid(model(x)[0]) for _ in range(samples)])
                    mean = probs.mean(0)
                    out.append({"mean": mean.numpy(), "variance": probs.var(0, unbiased=False).numpy(),
                                "entropy": entropy(mean).numpy(),
                                "mutual_information": (entropy(mean) - entropy(probs).mean(0)).numpy()})
            return out
    return run, {"_base_rss_mb": base, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--slices", type=int, default=155)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--mc-chunk", type=int, default=-1,
                    help="jaxseg: MC passes at once (0 = all in one vmap; default -1 = what "
                         "`jaxseg explain` uses, jaxseg.explain.slices.MC_SLICE_CHUNK)")
    ap.add_argument("--in-channels", type=int, default=4)
    ap.add_argument("--features", default="32,64,128,256,512")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="gradcam or mc")
    add_variant_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.slices, args.size, args.features, args.samples, args.reps = 20, 32, "4,8,16", 4, 2
    features = tuple(int(f) for f in args.features.split(","))
    for task in ("gradcam", "mc"):
        if args.only and args.only != task:
            continue
        common = dict(task=task, n=args.slices, size=args.size, cin=args.in_channels, features=features,
                      batch=args.batch, samples=args.samples, dropout=args.dropout, mc_chunk=args.mc_chunk)
        torch_name = "torch+captum" if task == "gradcam" else "torch eager"
        variants = [Variant("jax", jax_setup, common, env={"JAXSEG_CONV": "auto"}),
                    Variant(torch_name, torch_setup, common)] + env_variants(args.jax_variant, jax_setup, common)
        if task == "mc":
            variants.insert(1, Variant("jax shared encoder", jax_setup, {**common, "shared": True},
                                       env={"JAXSEG_CONV": "auto"}))
        what = (f"Grad-CAM (dec0, mean WT) of {args.slices} slices" if task == "gradcam"
                else f"{args.samples} MC-dropout passes of {args.slices} slices")
        what += f", {args.size} px, U-Net {features}, {args.batch} slices per pass"
        print(f"\nexplain: {what}", flush=True)
        t0 = time.time()
        results = run_side_by_side(variants, args.reps, warmup=1)
        print_table(f"Explain: {what} ({time.time() - t0:.0f} s wall)", results, reference=torch_name)


if __name__ == "__main__":
    main()
