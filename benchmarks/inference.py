"""Inference speed, jaxseg against PyTorch on the same machine (issues 6 and 16).

    python benchmarks/inference.py --only-2d   # 16 slices of 256 px (sized for ~4 min on 2 quiet cores)
    python benchmarks/inference.py --only-3d   # a brain box of 140x168x137 voxels (sized for ~6 min)
    python benchmarks/inference.py --quick     # small sizes, checks the script in seconds

- **2D**: one forward pass (sigmoid probabilities) of a batch of 16 slices through the default
  2D U-Net (32..512 features, 4 modalities), batch norm in inference mode. jaxseg runs
  ``jaxseg.infer.predict``'s jitted forward; torch runs the same U-Net under
  ``torch.inference_mode()``.
- **3D**: a whole four-modality volume through the 3D U-Net (16..256 features) by sliding 128^3
  windows, overlap 0.5, Gaussian blending, 2 windows per pass, i.e. jaxseg's ``[infer]``
  defaults. The default volume, 140 x 168 x 137, is the median brain box of the 16 BraTS 2018
  cases of the project's shared data (../shared/data): ``jaxseg predict`` slides its windows over the brain box
  (``data.crop = "brain_bbox"``), 8 windows here; ``--volume 240,240,155`` slides over the whole
  BraTS grid (18 windows, the earlier tables of benchmarks/NOTES.md). Both frameworks go
  through the same numpy sliding-window code (``jaxseg.infer.sliding_window``; its last window
  batch is padded, so every pass has one shape), so the difference is the network.

Variants: ``jax`` (default convolution path), ``jax xla-conv`` (``JAXSEG_CONV=xla``; 2D only by
default, ``--jax-variant "jax xla-conv:JAXSEG_CONV=xla"`` adds it in 3D), ``torch eager``
(reference), ``torch eager CL`` (channels_last / channels_last_3d) and ``torch.compile`` (the
eager model through ``torch.compile``, called under ``torch.inference_mode()``; skipped with
``--no-compile``, reported if it does not compile within ``--compile-timeout``). The table's
last lines give every jax variant against the fastest torch variant, the goal's measure
(docs/speed.md). ``--bf16`` adds ``jax bf16``: the default path computing in bfloat16 (as a
run with ``train.precision = "bfloat16"`` predicts; parameters float32, probabilities float32).
Forward passes have no weight gradient, so in 2D the two JAX paths differ only in the 2x2
upsampling (a matrix product on the fast path); in 3D also in the convolutions (3D as 2D on the
fast path). Both run with jaxseg's
default XLA flags (``jaxseg.xla_flags.CPU_XLA_FLAGS``); ``--jax-variant "jaxlib flags:JAXSEG_XLA_DEFAULTS=0"``
adds a column without them.
Each variant runs in its own process (benchmarks/harness.py).
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


def _image(shape, seed=0):
    import numpy as np
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def jax_setup(kind: str, batch: int, size: tuple, cin: int, features: tuple, window: int, overlap: float,
              window_batch: int, precision: str = "float32"):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jaxseg.infer import sliding_window
    from jaxseg.infer.predict import probabilities
    from jaxseg.models import conv
    from jaxseg.models.unet import UNet
    from jaxseg.models.unet3d import UNet3D
    base = proc_status_mb("VmRSS")
    # The variant's JAXSEG_CONV, given to every layer as build_model does.
    # The compute dtype as registry.build_model gives it for train.precision (parameters float32).
    model = conv.set_mode((UNet if kind == "2d" else UNet3D)(cin, 1, features, dtype=jnp.dtype(precision),
                                                             rngs=nnx.Rngs(0)),
                          conv.default_mode())
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    def forward(params, stats, x):
        return probabilities(params, stats, x, graphdef=graphdef, target_kind="wt")
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    if kind == "2d":
        x = jnp.asarray(_image((batch, *size, cin)))

        def run():
            jax.block_until_ready(forward(params, stats, x))
    else:
        volume = _image((*size, cin))

        def run():
            return sliding_window.sliding_window_probabilities(
                lambda w: forward(params, stats, w), volume, window, overlap=overlap,
                blend="gaussian", window_batch=window_batch)
    return run, {"params": n_params, "_base_rss_mb": base, "conv": conv.default_mode(), "precision": precision}


def torch_setup(kind: str, batch: int, size: tuple, cin: int, features: tuple, window: int, overlap: float,
                window_batch: int, channels_last: bool, compile: bool = False):
    import numpy as np
    import torch
    from torch_unet import UNet, n_params
    torch.set_num_threads(os.cpu_count())
    base = proc_status_mb("VmRSS")
    torch.manual_seed(0)
    nd = 2 if kind == "2d" else 3
    model = UNet(cin, 1, features, nd=nd).eval()
    fmt = (torch.channels_last if nd == 2 else torch.channels_last_3d) if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    # Compiled on the first call (inside the harness's setup timeout); every pass has one shape.
    network = torch.compile(model) if compile else model

    def forward(x_last: np.ndarray) -> np.ndarray:
        """channel-last numpy in, channel-last probabilities out (as the JAX forward)."""
        x = torch.from_numpy(x_last).movedim(-1, 1).contiguous(memory_format=fmt)
        with torch.inference_mode():
            return torch.sigmoid(network(x)[0]).movedim(1, -1).numpy()

    if kind == "2d":
        x = _image((batch, *size, cin))

        def run():
            forward(x)
    else:
        from jaxseg.infer import sliding_window
        volume = _image((*size, cin))

        def run():
            return sliding_window.sliding_window_probabilities(
                forward, volume, window, overlap=overlap, blend="gaussian", window_batch=window_batch)
    return run, {"params": n_params(model), "_base_rss_mb": base, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only-2d", action="store_true")
    ap.add_argument("--only-3d", action="store_true")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default 5 in 2D, 2 in 3D)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256, help="2D slice edge")
    ap.add_argument("--volume", default="140,168,137", help="3D volume (default: a median BraTS brain box)")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--window-batch", type=int, default=2)
    ap.add_argument("--in-channels", type=int, default=4)
    ap.add_argument("--features-2d", default="32,64,128,256,512")
    ap.add_argument("--features-3d", default="16,32,64,128,256")
    ap.add_argument("--bf16", action="store_true", help="also time jaxseg computing in bfloat16")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile-timeout", type=float, default=600.0,
                    help="seconds torch.compile (with the first call and warm-up) may take")
    ap.add_argument("--only", default="", help="comma-separated variant names to run (default all)")
    add_variant_option(ap)
    args = ap.parse_args()
    if args.quick:
        args.size, args.volume, args.window = 64, "48,48,40", 32
        args.features_2d, args.features_3d, args.reps = "8,16,32,64", "4,8,16", args.reps or 3
    vol = tuple(int(v) for v in args.volume.split(","))
    for kind in ("2d", "3d"):
        if (kind == "2d" and args.only_3d) or (kind == "3d" and args.only_2d):
            continue
        features = tuple(int(f) for f in (args.features_2d if kind == "2d" else args.features_3d).split(","))
        size = (args.size, args.size) if kind == "2d" else vol
        common = dict(kind=kind, batch=args.batch, size=size, cin=args.in_channels, features=features,
                      window=args.window, overlap=args.overlap, window_batch=args.window_batch)
        variants = [Variant("jax", jax_setup, common, env={"JAXSEG_CONV": "auto"})]
        # 3D: XLA's own 3D convolutions ran 1.5x slower than the default (benchmarks/NOTES.md) and
        # would take a quarter of the time budget; --jax-variant "jax xla-conv:JAXSEG_CONV=xla" adds them.
        if kind == "2d":
            variants.append(Variant("jax xla-conv", jax_setup, common, env={"JAXSEG_CONV": "xla"}))
        if args.bf16:
            variants.append(Variant("jax bf16", jax_setup, dict(common, precision="bfloat16"),
                                    env={"JAXSEG_CONV": "auto"}))
        variants += env_variants(args.jax_variant, jax_setup, common) + [
            Variant("torch eager", torch_setup, dict(common, channels_last=False)),
            Variant("torch eager CL", torch_setup, dict(common, channels_last=True)),
        ]
        if not args.no_compile:
            variants.append(Variant("torch.compile", torch_setup, dict(common, channels_last=False, compile=True),
                                    setup_timeout=args.compile_timeout))
        if args.only:
            keep = {s.strip() for s in args.only.split(",")}
            variants = [v for v in variants if v.name in keep]
        what = (f"2D U-Net {features}, batch {args.batch} x {args.size}^2 x {args.in_channels}" if kind == "2d" else
                f"3D U-Net {features}, volume {vol} x {args.in_channels}, windows {args.window}^3, "
                f"overlap {args.overlap}, {args.window_batch} per pass, gaussian blend")
        print(f"\ninference {kind}: {what}", flush=True)
        t0 = time.time()
        reps = args.reps or (5 if kind == "2d" else 2)
        results = run_side_by_side(variants, reps, warmup=2 if kind == "2d" else 1)
        print_table(f"Inference {kind}: {what} ({time.time() - t0:.0f} s wall)", results,
                    reference="torch eager", extra=("params",))


if __name__ == "__main__":
    main()
